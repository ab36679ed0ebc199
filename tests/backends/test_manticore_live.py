"""What a real Manticore server does that the SQL tests (test_manticore_sql.py, a fake cursor) can only assume.

Each test names the assumption it checks on the live server: autocommit, statement size, document ids at
the ends of their range, the DDL that SHOW CREATE TABLE prints, and the error a client gets on restart.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterator

import numpy as np
import pymysql
import pytest

from shared.backends import BackendError, SchemaMismatch
from shared.backends.manticore import MAX_STATEMENT_BYTES, ManticoreBackend, doc_id, parse_url
from shared.filters import BoundingBox, SearchFilter
from shared.types import ModelInfo
from tests.backends.data import clustered, records

pytestmark = pytest.mark.slow
MODEL = ModelInfo("live-model", "random", 32)


def stmt(template: str, table: str) -> str:
    """A statement naming one of this module's generated tables (identifiers cannot be parameters)."""
    assert re.fullmatch(r"live_[0-9a-f]{12}(_\d+)?", table), table
    return template.replace("{table}", table)


@pytest.fixture
def table(manticore_url: str) -> Iterator[str]:
    name = "live_" + uuid.uuid4().hex[:12]
    yield name
    cleanup = ManticoreBackend.from_url(manticore_url, table=name)
    cleanup.drop_tables()
    cleanup.close()


@pytest.fixture
def sql(manticore_url: str) -> Iterator[pymysql.cursors.Cursor]:
    """A plain connection with the driver's own defaults (autocommit off), as another client would open."""
    args = parse_url(manticore_url)
    conn = pymysql.connect(host=args["host"], port=args["port"])
    with conn.cursor() as cur:
        yield cur
    conn.close()


def test_writes_are_visible_to_other_connections_at_once(manticore_url, table, sql):
    """pymysql opens connections with autocommit off; our writes must not sit in an open transaction."""
    backend = ManticoreBackend.from_url(manticore_url, table=table)
    backend.ensure_schema(MODEL)
    backend.upsert(records(3), clustered(3, 32))
    sql.execute(stmt("SELECT COUNT(*) FROM {table}", table))
    assert sql.fetchone()[0] == 3
    assert backend.delete([records(1)[0].id]) == 1
    sql.execute(stmt("SELECT COUNT(*) FROM {table}", table))
    assert sql.fetchone()[0] == 2
    backend.close()


def test_an_upsert_larger_than_the_servers_packet_limit_is_split(manticore_url, table):
    """searchd resets the connection on a statement over max_allowed_packet (128 MiB) instead of answering
    an error: the upsert must stay under it whatever the batch, dimension and `batch_rows` are."""
    dim, n = 4096, 1700  # ~146 MB of SQL in one statement if it were not split (a float is ~21 characters)
    backend = ManticoreBackend.from_url(manticore_url, table=table, batch_rows=n)
    backend.ensure_schema(ModelInfo("wide", "random", dim))
    assert n * dim * 20 > 128 * 1024 * 1024 > MAX_STATEMENT_BYTES
    vectors = np.random.default_rng(1).normal(size=(n, dim)).astype(np.float32)
    backend.upsert(records(n), vectors)
    assert backend.count() == n
    backend.close()


def _ids_with_doc_ids(predicate, count: int) -> list[str]:
    ids, i = [], 0
    while len(ids) < count:
        image_id = f"{i:064x}"
        if predicate(doc_id(image_id)):
            ids.append(image_id)
        i += 1
    return ids


def test_document_ids_at_both_ends_of_their_range(manticore_url, table):
    """Ids are 63-bit: the server stores `id bigint` (signed), so the highest ids must round-trip, sort and
    page (scan's `id > last`) like the lowest."""
    high = _ids_with_doc_ids(lambda d: d > (1 << 63) - (1 << 56), 5)
    low = _ids_with_doc_ids(lambda d: d < 1 << 56, 5)
    backend = ManticoreBackend.from_url(manticore_url, table=table)
    backend.ensure_schema(MODEL)
    recs = [dataclasses.replace(rec, id=image_id) for rec, image_id in zip(records(10), high + low, strict=True)]
    vectors = clustered(10, 32)
    backend.upsert(recs, vectors)
    assert set(backend.get(high + low)) == set(high + low)
    hits = backend.search(vectors[0], 10)
    assert hits[0].id == high[0] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    scanned = [r.id for batch, _ in backend.scan(batch_size=3) for r in batch]
    assert sorted(scanned) == sorted(high + low) and len(scanned) == 10
    assert [doc_id(i) for i in scanned] == sorted(doc_id(i) for i in scanned)
    assert backend.delete(high) == 5 and backend.count() == 5
    backend.close()


def test_the_live_ddl_is_parsed(manticore_url, table, sql):
    """SHOW CREATE TABLE on the server leaves out options at their defaults and spells `int` as `integer`:
    the dimension is still read back, so a second start with the same model is accepted."""
    for m, efc in ((16, 200), (32, 96)):  # the server's defaults, then other values
        name = f"{table}_{m}"
        backend = ManticoreBackend.from_url(manticore_url, table=name, hnsw_m=m, hnsw_ef_construction=efc)
        backend.ensure_schema(MODEL)
        ManticoreBackend.from_url(manticore_url, table=name).ensure_schema(MODEL)
        sql.execute(stmt("SHOW CREATE TABLE {table}", name))
        ddl = sql.fetchone()[1]
        assert "knn_dims='32'" in ddl
        with pytest.raises(SchemaMismatch, match="32-dimensional"):
            ManticoreBackend.from_url(manticore_url, table=name).ensure_schema(ModelInfo("live-model", "random", 16))
        backend.drop_tables()
        backend.close()


@pytest.mark.parametrize(("columns", "reason"), [
    ("title text, price float", "no KNN float_vector column"),
    ("embedding float_vector knn_type='hnsw' knn_dims='32' hnsw_similarity='L2'", "hnsw_similarity=L2"),
])
def test_a_table_created_by_someone_else_is_refused(manticore_url, table, sql, columns, reason):
    sql.execute(stmt("CREATE TABLE {table} (", table) + columns + ")")
    backend = ManticoreBackend.from_url(manticore_url, table=table)
    with pytest.raises(SchemaMismatch, match=reason):
        backend.ensure_schema(MODEL)
    backend.close()


def test_a_colliding_document_id_is_refused_by_the_live_server(manticore_url, table, sql):
    """Another image already stored on the document id an upsert would use is never overwritten."""
    backend = ManticoreBackend.from_url(manticore_url, table=table)
    backend.ensure_schema(MODEL)
    mine = records(1)[0]
    sql.execute(stmt("REPLACE INTO {table} (id, img_id, embedding) VALUES (%s, %s, %s)", table),
                (doc_id(mine.id), "f" * 64, tuple([0.5] * 32)))
    sql.connection.commit()
    with pytest.raises(BackendError, match="collides"):
        backend.upsert([mine], clustered(1, 32))
    assert backend.get([mine.id]) == {}  # the row holds another image: not returned as this one
    backend.close()


@pytest.mark.parametrize("quantization", ["8bit", "1bit"])
def test_a_quantized_table_answers_with_exact_scores(manticore_url, table, quantization):
    """MANTICORE_QUANTIZATION: the server keeps compressed vectors in the graph and re-scores the candidates
    with the full ones, so scores are the true cosines and an image finds itself at 1.0."""
    backend = ManticoreBackend.from_url(manticore_url, table=table, quantization=quantization, oversampling=4)
    backend.ensure_schema(MODEL)
    vectors = clustered(300, 32)
    backend.upsert(records(300), vectors)
    reopened = ManticoreBackend.from_url(manticore_url, table=table)  # no setting: the table's DDL decides
    reopened.ensure_schema(MODEL)
    for client in (backend, reopened):
        hits = client.search(vectors[7], 10)
        assert hits[0].id == records(8)[7].id and hits[0].score == pytest.approx(1.0, abs=1e-4)
        exact = vectors @ vectors[7]
        for hit in hits:
            assert hit.score == pytest.approx(float(exact[int(hit.id, 16)]), abs=1e-4)
    backend.close()
    reopened.close()


def test_filters_compare_exactly_on_the_live_server(manticore_url, table):
    """Strings byte for byte (the server's default collation, libc_ci, ignores case), coordinates as the
    float64 they were (Manticore's float is 32-bit), path prefixes by code point with `%`/`_` literal."""
    backend = ManticoreBackend.from_url(manticore_url, table=table)
    backend.ensure_schema(MODEL)
    edge = 40.3
    rows = [
        ("PNG", "Canon", "2024/Ñoño/a.jpg", edge), ("png", "canon", "2024/ñoño/b.jpg", np.nextafter(edge, 0)),
        ("JPEG", "", "2024/Ñoño\U0010ffff/c.jpg", np.nextafter(edge, 90)), ("JPEG", "", "2024/Ñoñp/d.jpg", None),
        ("JPEG", "", "c/_%/e.jpg", None), ("JPEG", "", "c/ab/f.jpg", None),
    ]
    recs = [dataclasses.replace(rec, format=fmt, camera_make=make, path=path, latitude=lat,
                                longitude=None if lat is None else -3.7)
            for rec, (fmt, make, path, lat) in zip(records(len(rows)), rows, strict=True)]
    vectors = clustered(len(recs), 32)
    backend.upsert(recs, vectors)
    assert backend.get([r.id for r in recs]) == {r.id: r for r in recs}

    def found(**fields) -> set[int]:
        where = SearchFilter(**fields)
        hits = {int(h.id, 16) for h in backend.search(vectors[0], 10, where=where)}
        assert hits == {i for i, r in enumerate(recs) if where.matches(r)}
        assert backend.count(where) == len(hits)
        return hits

    assert found(formats=("PNG",)) == {0}
    assert found(cameras=("Canon",)) == {0}
    assert found(path_prefix="2024/Ñoño") == {0, 2}
    assert found(path_prefix="c/_%") == {4}
    assert found(bbox=BoundingBox(edge, -4, 41, -3)) == {0, 2}  # the bound itself is in, one ulp below is out
    assert found(bbox=BoundingBox(0, -4, edge, -3)) == {0, 1}
    backend.close()
