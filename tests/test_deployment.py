"""Docker Compose and the Dockerfiles, checked statically (no Docker engine runs on our machines)."""

from __future__ import annotations

import re

import pytest
import yaml

from scripts.devservices import REPO
from shared.config import Settings
from tests.test_config import example_vars

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
APP_SERVICES = ("api", "worker", "flower")


def test_every_compose_variable_is_documented():
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (REPO / "docker-compose.yml").read_text()))
    assert used - set(example_vars()) == set()


def test_every_setting_reaches_the_app_containers():
    fields = {name.upper() for name in Settings.model_fields}
    for service in APP_SERVICES:
        env = set(COMPOSE["services"][service]["environment"])
        make_up_only = {"MILVUS_LITE_PORT", "MANTICORE_SEARCHD", "MANTICORE_TARBALL", "MANTICORE_PORT"}
        missing = fields - env - {"API_HOST", "API_PORT", "FLOWER_PORT"} - make_up_only
        assert not missing, f"{service} lacks {sorted(missing)}"


def test_services_volumes_profiles_and_health():
    services = COMPOSE["services"]
    assert {"redis", "postgres", "milvus", "manticore", "api", "worker", "flower"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in COMPOSE["volumes"], f"{name}: volume {source} not declared"
        assert service.get("restart") == "unless-stopped", name
    for backend, profile in (("postgres", "pgvector"), ("milvus", "milvus"), ("manticore", "manticore")):
        assert services[backend]["profiles"] == [profile]
        assert "healthcheck" in services[backend]
        for app in ("api", "worker"):
            assert services[app]["depends_on"][backend] == {"condition": "service_healthy", "required": False}
    assert "appendonly" in " ".join(services["redis"]["command"])
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_dockerfiles_copy_what_exists_and_start_real_entry_points():
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        text = (REPO / name).read_text()
        for source in re.findall(r"^COPY (\S+) ", text, flags=re.M):
            assert (REPO / source).exists(), f"{name} copies missing {source}"
        assert re.search(r"^USER proxima$", text, flags=re.M), f"{name} must not run as root"
        assert "HEALTHCHECK" in text
        assert text.index("pip install") < text.index("COPY shared"), "dependencies before code"
    assert "--factory api.main:create_app" in (REPO / "Dockerfile.api").read_text()
    assert "workers.celery_app" in (REPO / "Dockerfile.worker").read_text()
    from api.main import create_app  # noqa: F401  the entry points exist
    from workers.celery_app import app  # noqa: F401


def test_no_github_actions():
    assert not (REPO / ".github").exists()


class _ComposeLoader(yaml.SafeLoader):
    """Reads Compose's merge tags (!reset, !override) as plain values."""


_ComposeLoader.add_multi_constructor("!", lambda loader, tag, node: (
    loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
    else loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else loader.construct_scalar(node)))


@pytest.mark.parametrize("name", ["docker-compose.cpu.yml", "docker-compose.gpus.yml"])
def test_override_files_extend_real_services(name):
    override = yaml.load((REPO / name).read_text(), Loader=_ComposeLoader)
    for service, spec in override["services"].items():
        base = spec.get("extends", {}).get("service", service)
        assert base in COMPOSE["services"], f"{name}: {service} extends unknown {base}"
        if "build" in spec:
            assert (REPO / spec["build"]["dockerfile"]).exists()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (REPO / name).read_text()))
    assert used - set(example_vars()) == set()
