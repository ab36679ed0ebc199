"""Session-wide real services. Nothing here is mocked: Redis, PostgreSQL, Milvus, Celery and the model are real.

`client` is an API (in-process TestClient) wired to a real Celery worker process over pgvector.
`backend_client` is the same, parametrised over every backend available here, for the end-to-end tests.

Every test that needs one of these services (or a module that starts its own processes, marked `slow`)
is marked `slow` here, so `pytest -m "not slow"` runs the pure and in-process tests alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.devservices import (
    MANTICORE_HINT,
    Postgres,
    Worker,
    create_database,
    data_dir_sharing_models,
    free_port,
    searchd_from_environment,
    start_manticore,
    start_milvus_lite,
    start_milvus_server,
    start_redis,
    stop,
    stop_group,
    write_tiny_model,
)
from shared.config import Settings

# Each backend with the tiny test model, then pgvector once more with real pretrained weights (EfficientNet-Lite0,
# an image-only extractor), so every layer also runs a real network.
E2E_BACKENDS = ["pgvector", "milvus", "milvus_server", "manticore", "efficientnet_lite"]
# Fixtures that start (or stand for) real service processes: a test using any of them is `slow`.
SERVICE_FIXTURES = {"redis_url", "pg_url", "milvus_url", "milvus_server_url", "manticore_url", "manticore_searchd",
                    "worker", "client", "pg_client", "backend_client", "stack_env", "stack_settings", "fresh_pg_url",
                    "backend", "backend_factory", "efficientnet_env", "efficientnet_worker"}


_OWN_BASETEMP = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Each session gets a temporary root of its own (unless --basetemp is given). pytest's shared root,
    /tmp/pytest-of-<user>, is reset to mode 0700 by every new session; run as root, the embedded PostgreSQL
    runs as its own user and would lose access to a running session's data directory (a PANIC, then every
    test that uses it fails) the moment another pytest starts on the machine."""
    if config.option.basetemp is None and not os.environ.get("PYTEST_DEBUG_TEMPROOT"):
        config.option.basetemp = tempfile.mkdtemp(prefix="proxima-tests-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The session's own root is removed when everything passed, and kept (for its logs) otherwise."""
    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own and exitstatus == 0:
        shutil.rmtree(own, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pg = Postgres(tmp_path_factory.mktemp("pg"))
    yield pg.url
    pg.stop()


@pytest.fixture(scope="session")
def milvus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Milvus server when MILVUS_URI is an http(s) URL, else a Milvus Lite server process."""
    configured = os.environ.get("MILVUS_URI", "")
    if configured.startswith(("http://", "https://")):
        yield configured
        return
    proc, url = start_milvus_lite(tmp_path_factory.mktemp("milvus"))
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def milvus_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Milvus standalone server: MILVUS_SERVER_URI when set, else `milvus-server` (the `milvus`
    package, Milvus 2.3) started here for the session."""
    configured = os.environ.get("MILVUS_SERVER_URI", "")
    if configured:
        yield configured
        return
    proc, url = start_milvus_server(tmp_path_factory.mktemp("milvus-server"))
    yield url
    stop_group(proc, timeout=5)  # its graceful shutdown takes half a minute; the data is thrown away


@pytest.fixture(scope="session")
def manticore_searchd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The searchd binary from MANTICORE_SEARCHD, MANTICORE_TARBALL (unpacked here) or PATH; skips without one."""
    searchd = searchd_from_environment(tmp_path_factory.mktemp("manticore-server"))
    if searchd is None:
        pytest.skip(f"no Manticore server here: {MANTICORE_HINT}")
    return searchd


@pytest.fixture(scope="session")
def manticore_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Manticore: the server at MANTICORE_URL when set, else a searchd started here for the session."""
    configured = os.environ.get("MANTICORE_URL", "")
    if configured:
        yield configured
        return
    proc, url = start_manticore(request.getfixturevalue("manticore_searchd"), tmp_path_factory.mktemp("manticore"))
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_tiny_model(tmp_path_factory.mktemp("model"))


def models_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache (exports for OpenVINO) for every stack of the session."""
    return tmp_path_factory.getbasetemp() / "models-cache"


def _stack_env(tmp_path_factory, redis_url: str, tiny_model: tuple[Path, Path], db: int,
               **backend: str) -> dict[str, str]:
    """The settings of every process of one test stack (each stack has its own Redis database); processes
    get exactly these (`devservices.child_env`), whatever the environment pytest runs in."""
    config, checkpoint = tiny_model
    return {
        "DATA_DIR": str(data_dir_sharing_models(tmp_path_factory.mktemp("data"), models_cache(tmp_path_factory))),
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + f"/{db}",
        "MODEL_NAME": str(config),
        "MODEL_PRETRAINED": str(checkpoint),
        "DEVICE": "cpu",
        "EMBED_RUNTIME": "openvino",  # the default on a CPU (auto), named so a missing package fails loudly
        "BATCH_SIZE": "8",
        "DECODE_THREADS": "2",
        "METRICS_PORT": str(free_port()),  # the worker's /metrics (tests/test_metrics.py reads it)
        **{k.upper(): v for k, v in backend.items()},
    }


def _settings(env: dict[str, str]) -> Settings:
    return Settings.explicit(**{k.lower(): v for k, v in env.items()})


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory, redis_url: str, pg_url: str, tiny_model) -> dict[str, str]:
    return _stack_env(tmp_path_factory, redis_url, tiny_model, 0, vector_backend="pgvector", database_url=pg_url)


@pytest.fixture(scope="session")
def stack_settings(stack_env: dict[str, str]) -> Settings:
    return _settings(stack_env)


@pytest.fixture(scope="session")
def worker(stack_env: dict[str, str], tmp_path_factory) -> Iterator[Worker]:
    w = Worker(stack_env, tmp_path_factory.mktemp("logs") / "worker.log")
    yield w
    w.stop()


def _client(settings: Settings):
    from fastapi.testclient import TestClient

    from api.main import create_app

    return TestClient(create_app(settings))


@pytest.fixture(scope="session")
def pg_client(stack_settings: Settings, worker: Worker):
    with _client(stack_settings) as c:
        yield c


@pytest.fixture(scope="session")
def client(pg_client):
    return pg_client


@pytest.fixture(scope="session")
def efficientnet_env(tmp_path_factory, redis_url: str, pg_url: str, tiny_model) -> dict[str, str]:
    """A stack on the real ImageNet weights of EfficientNet-Lite0 (installed with Proxima; image search only):
    pgvector in a database of its own (another model identity), Redis database 4 (3 is test_openapi's)."""
    return _stack_env(tmp_path_factory, redis_url, tiny_model, 4, vector_backend="pgvector",
                      database_url=create_database(pg_url, "e2e_efficientnet"), extractor="efficientnet_lite",
                      model_name="", model_pretrained="")


@pytest.fixture(scope="session")
def efficientnet_worker(efficientnet_env: dict[str, str], tmp_path_factory) -> Iterator[Worker]:
    w = Worker(efficientnet_env, tmp_path_factory.mktemp("logs") / "worker-efficientnet.log")
    yield w
    w.stop()


@pytest.fixture(scope="session", params=E2E_BACKENDS)
def backend_client(request, tmp_path_factory, redis_url, tiny_model):
    """(client, settings) of a full stack on each backend: pgvector reuses `client`, the others start their own."""
    if request.param == "pgvector":
        yield request.getfixturevalue("pg_client"), request.getfixturevalue("stack_settings")
        return
    if request.param == "efficientnet_lite":
        request.getfixturevalue("efficientnet_worker")
        settings = _settings(request.getfixturevalue("efficientnet_env"))
        with _client(settings) as c:
            yield c, settings
        return
    if request.param == "milvus":
        backend = {"vector_backend": "milvus", "milvus_uri": request.getfixturevalue("milvus_url")}
        db = 1
    elif request.param == "milvus_server":
        backend = {"vector_backend": "milvus", "milvus_uri": request.getfixturevalue("milvus_server_url")}
        db = 5
    else:
        backend = {"vector_backend": "manticore", "manticore_url": request.getfixturevalue("manticore_url"),
                   "manticore_table": "e2e_" + uuid.uuid4().hex[:8]}
        db = 2
    env = _stack_env(tmp_path_factory, redis_url, tiny_model, db, **backend)
    w = Worker(env, tmp_path_factory.mktemp("logs") / f"worker-{request.param}.log")
    try:
        with _client(_settings(env)) as c:
            yield c, _settings(env)
    finally:
        w.stop()
