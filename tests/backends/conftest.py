"""One fixture per backend; `backend` runs each conformance test on every backend available here."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from shared.backends.pgvector import PgVectorBackend

BACKENDS = ["pgvector"]


@pytest.fixture
def fresh_pg_url(pg_url: str) -> Iterator[str]:
    """A new, empty database on the session's PostgreSQL."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    yield pg_url.replace("/postgres?", f"/{name}?")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


@pytest.fixture
def pgvector_factory(fresh_pg_url: str) -> Iterator[Callable[[], PgVectorBackend]]:
    made: list[PgVectorBackend] = []

    def make() -> PgVectorBackend:
        made.append(PgVectorBackend(fresh_pg_url, ef_search=100))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


@pytest.fixture(params=BACKENDS)
def backend_factory(request) -> Callable:
    """Makes clients of one fresh, empty collection (several clients share it)."""
    return request.getfixturevalue(f"{request.param}_factory")


@pytest.fixture
def backend(backend_factory):
    return backend_factory()
