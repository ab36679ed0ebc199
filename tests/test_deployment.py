"""Docker Compose and the Dockerfiles, checked statically (no Docker engine runs on our machines)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from scripts.devservices import REPO
from shared import metrics
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
            if source.startswith("./"):  # a file or folder of the repository (the monitoring configuration)
                assert (REPO / source).exists(), f"{name}: mounts missing {source}"
            else:
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


# --- the `monitoring` profile: Prometheus' scrape configuration and Grafana's provisioning -------------------

MONITORING = REPO / "monitoring"


def _mounts(service: str) -> dict[str, str]:
    """Container path → repository path of the service's bind mounts."""
    out = {}
    for volume in COMPOSE["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[target] = source[2:]
    return out


def _container_port(service: str) -> int:
    """The port the service's metrics are served on inside the Compose network."""
    env = COMPOSE["services"][service]["environment"]
    return int(env["API_PORT"] if "API_PORT" in env else env["METRICS_PORT"])


def test_the_monitoring_profile_runs_prometheus_and_grafana_on_repository_files():
    services = COMPOSE["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
        assert "healthcheck" in services[name], name
    assert _mounts("prometheus")["/etc/prometheus/prometheus.yml"] == "monitoring/prometheus.yml"
    assert "/etc/grafana/provisioning" in _mounts("grafana")
    # Prometheus has no authentication: published on the host's loopback only
    assert all(port.startswith("127.0.0.1:") for port in services["prometheus"]["ports"])
    assert int(COMPOSE["x-app-env"]["METRICS_PORT"]) > 0  # the workers serve their metrics in Compose


def test_prometheus_scrapes_the_api_and_every_worker_where_compose_serves_them():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                scraped[host] = int(port)
        for dns in job.get("dns_sd_configs", []):
            assert dns["type"] == "A"
            for host in dns["names"]:
                scraped[host] = int(dns["port"])
    assert set(scraped) == {"api", "worker"}
    for service, port in scraped.items():
        assert service in COMPOSE["services"], f"scrapes {service}, not a Compose service"
        assert port == _container_port(service), f"{service}: scraped on {port}, serves on {_container_port(service)}"


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard():
    provisioning = MONITORING / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert len(sources) == 1 and sources[0]["type"] == "prometheus"
    assert re.fullmatch(r"http://prometheus:9090", sources[0]["url"])
    provider = yaml.safe_load((provisioning / "dashboards" / "proxima.yml").read_text())["providers"][0]
    mounted = _mounts("grafana")[provider["options"]["path"]]
    assert (REPO / mounted / "proxima.json").is_file()
    dashboard = json.loads((REPO / mounted / "proxima.json").read_text())
    for panel in dashboard["panels"]:
        for thing in (panel, *panel["targets"]):
            assert thing["datasource"]["uid"] == sources[0]["uid"], panel["title"]


def _dashboard_queries() -> dict[str, list[str]]:
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "proxima.json").read_text())
    return {panel["title"]: [t["expr"] for t in panel["targets"]] for panel in dashboard["panels"]}


def test_every_dashboard_query_names_only_metrics_that_shared_metrics_defines():
    defined = metrics.sample_names()
    for title, queries in _dashboard_queries().items():
        assert queries, title
        for query in queries:
            named = set(re.findall(r"\b(proxima_[a-z0-9_]+)", query))
            assert named, f"{title}: {query} names no Proxima metric"
            assert named <= defined, f"{title}: {sorted(named - defined)} not defined in shared/metrics.py"


def test_the_dashboard_shows_ingest_stages_queue_search_latency_and_errors():
    everything = " ".join(q for queries in _dashboard_queries().values() for q in queries)
    for needed in ("rate(proxima_images_total", "proxima_stage_seconds_sum", "proxima_queue_batches",
                   "histogram_quantile(0.5, sum by (le) (rate(proxima_http_request_duration_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le) (rate(proxima_http_request_duration_seconds_bucket",
                   "proxima_search_stage_seconds_bucket", "proxima_backend_errors_total", "proxima_build_info"):
        assert needed in everything, needed
