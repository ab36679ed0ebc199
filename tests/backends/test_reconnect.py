"""A database restart surfaces as BackendUnavailable (quickly, no hang), and the client reconnects after."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from scripts.devservices import Postgres, free_port, start_manticore, start_milvus_lite, stop, wait_for
from shared.backends import BackendUnavailable, VectorBackend
from shared.types import ModelInfo
from tests.backends.data import clustered, records

pytestmark = pytest.mark.slow


class PgServer:
    def __init__(self, directory) -> None:
        self.directory = directory
        self.server: Postgres | None = None

    def start(self) -> str:
        if self.server is None:
            self.server = Postgres(self.directory)
            return self.server.url
        return self.server.start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.stop()

    def client(self, url: str) -> VectorBackend:
        from shared.backends.pgvector import PgVectorBackend

        return PgVectorBackend(url, connect_timeout=2)


class MilvusLiteServer:
    def __init__(self, directory) -> None:
        self.directory, self.port = directory, free_port()

    def start(self) -> str:
        self.proc, url = start_milvus_lite(self.directory, port=self.port)
        return url

    def stop(self) -> None:
        stop(self.proc)

    def client(self, url: str) -> VectorBackend:
        from shared.backends.milvus import MilvusBackend

        return MilvusBackend(url, timeout=5)


class ManticoreServer:
    def __init__(self, directory, searchd) -> None:
        self.directory, self.searchd, self.port = directory, searchd, free_port()

    def start(self) -> str:
        self.proc, url = start_manticore(self.searchd, self.directory, port=self.port)
        return url

    def stop(self) -> None:
        stop(self.proc)

    def client(self, url: str) -> VectorBackend:
        from shared.backends.manticore import ManticoreBackend

        return ManticoreBackend.from_url(url, connect_timeout=2, read_timeout=10)


SERVERS: dict[str, Callable] = {"pgvector": PgServer, "milvus": MilvusLiteServer, "manticore": ManticoreServer}


@pytest.mark.parametrize("name", SERVERS)
def test_reconnects_after_server_restart(name, tmp_path, request):
    extra = [request.getfixturevalue("manticore_searchd")] if name == "manticore" else []  # skips without one
    server = SERVERS[name](tmp_path / "db", *extra)
    backend = server.client(server.start())
    try:
        backend.ensure_schema(ModelInfo("m", "random", 16))
        vectors = clustered(50, 16)
        backend.upsert(records(50), vectors)
        server.stop()

        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            backend.search(vectors[0], 3)
        assert time.monotonic() - started < 15  # a clear error, not a hang

        server.start()
        wait_for(lambda: backend.search(vectors[0], 3), 30, "the client to reconnect", interval=0.5)
        hits = backend.search(vectors[0], 3)
        assert hits[0].id == records(1)[0].id
        assert backend.count() == 50
    finally:
        backend.close()
        server.stop()
