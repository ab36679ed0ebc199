"""One factory fixture per backend; `backend` runs each conformance test on every backend.

A factory makes clients of one fresh, empty collection (several clients may share it). Its `spec` is a
picklable recipe for the same collection, so another process can open it too. Backends whose server is
not available here are skipped with the reason.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from scripts.devservices import create_database
from shared.backends import VectorBackend

BACKENDS = ["pgvector", "pgvector_halfvec", "milvus", "milvus_server", "manticore"]

Spec = tuple[str, dict[str, Any]]


def build(spec: Spec) -> VectorBackend:
    name, kwargs = spec
    if name == "pgvector":
        from shared.backends.pgvector import PgVectorBackend

        return PgVectorBackend(**kwargs)
    if name == "milvus":
        from shared.backends.milvus import MilvusBackend

        return MilvusBackend(**kwargs)
    from shared.backends.manticore import ManticoreBackend

    return ManticoreBackend.from_url(**kwargs)


class Factory:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.made: list[VectorBackend] = []

    def __call__(self) -> VectorBackend:
        self.made.append(build(self.spec))
        return self.made[-1]

    def close(self) -> None:
        for backend in self.made:
            backend.close()


@pytest.fixture
def fresh_pg_url(pg_url: str) -> Iterator[str]:
    """A new, empty database on the session's PostgreSQL."""
    name = "t_" + uuid.uuid4().hex[:12]
    yield create_database(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


@pytest.fixture
def pgvector_factory(fresh_pg_url: str) -> Iterator[Factory]:
    factory = Factory(("pgvector", {"url": fresh_pg_url}))
    yield factory
    factory.close()


@pytest.fixture
def pgvector_halfvec_factory(fresh_pg_url: str) -> Iterator[Factory]:
    """pgvector with a half-precision index and exact re-ranking (PG_INDEX_TYPE=halfvec, PG_RERANK)."""
    factory = Factory(("pgvector", {"url": fresh_pg_url, "index_type": "halfvec", "rerank": 40}))
    yield factory
    factory.close()


def _milvus_collection(uri: str) -> Iterator[Factory]:
    """A fresh collection on the Milvus at `uri`, dropped afterwards with every collection named after it
    (the views' `<name>_<slug>`, the catalogue `<name>_catalog`, upgrade leftovers)."""
    name = "t_" + uuid.uuid4().hex[:12]
    factory = Factory(("milvus", {"uri": uri, "collection": name}))
    yield factory
    factory.close()
    from shared.backends.milvus import connect as milvus_connect

    client = milvus_connect(uri)
    for collection in client.list_collections():
        if collection.startswith(name):
            client.drop_collection(collection)
    client.close()


@pytest.fixture
def milvus_factory(milvus_url: str) -> Iterator[Factory]:
    """Milvus Lite (or the server MILVUS_URI names)."""
    yield from _milvus_collection(milvus_url)


@pytest.fixture
def milvus_server_factory(milvus_server_url: str) -> Iterator[Factory]:
    """A real Milvus standalone server (see `milvus_server_url`)."""
    yield from _milvus_collection(milvus_server_url)


@pytest.fixture
def manticore_factory(manticore_url: str) -> Iterator[Factory]:
    """Fresh, uniquely named tables on the session's Manticore server; dropped afterwards, with every table
    named after them (the views' `<table>_<slug>` and their meta tables, the catalogue `<table>_catalog`)."""
    prefix = "t_" + uuid.uuid4().hex[:12]
    factory = Factory(("manticore", {"url": manticore_url, "table": f"{prefix}_images",
                                     "meta_table": f"{prefix}_meta"}))
    yield factory
    factory.close()
    cleanup = build(factory.spec)
    cleanup.drop_tables()  # the catalogue's indexes, the catalogue, the tables
    cleanup.close()
    import pymysql

    from shared.backends.manticore import parse_url

    args = parse_url(manticore_url)
    conn = pymysql.connect(host=args["host"], port=args["port"], autocommit=True)
    with conn.cursor() as cur:  # views a test made and left (SHOW TABLES LIKE: `_` is a wildcard, compare exactly)
        cur.execute("SHOW TABLES LIKE %s", (prefix + "%",))
        for table in [str(row[0]) for row in cur.fetchall() if str(row[0]).startswith(prefix)]:
            assert re.fullmatch(r"t_[0-9a-f]{12}_\w+", table), table
            cur.execute(f"DROP TABLE IF EXISTS {table}")
    conn.close()


@pytest.fixture(params=BACKENDS)
def backend_factory(request) -> Callable[[], VectorBackend]:
    return request.getfixturevalue(f"{request.param}_factory")


@pytest.fixture
def backend(backend_factory) -> VectorBackend:
    return backend_factory()
