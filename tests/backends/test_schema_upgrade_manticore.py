"""A Manticore table made by the previous release gains the metadata columns at start-up, on a live server.

The previous release's schema and writes are copied here as they were (its `_create_table_sql` and upsert),
so this test keeps meaning the same thing whatever the backend becomes. The upgrade must keep every row
and vector as it was (no re-embedding), read the new fields as empty, and let filters and labels work.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pymysql
import pytest

from shared.backends import ImageRecord
from shared.backends.manticore import CONVERSIONS, ManticoreBackend, doc_id, parse_url, parse_vector, vector_param
from shared.filters import BoundingBox, SearchFilter
from shared.types import ModelInfo
from tests.backends.data import clustered, records, rich_records

pytestmark = pytest.mark.slow
DIM = 32
MODEL = ModelInfo("upgrade-model", "random", DIM)
N_OLD = 300

# The previous release's schema (shared/backends/manticore.py `_create_table_sql` and `ensure_schema`).
PREVIOUS_TABLE = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    "img_id string attribute, "
    "embedding float_vector knn_type='hnsw' knn_dims='32' hnsw_similarity='COSINE' "
    "hnsw_m='16' hnsw_ef_construction='100', "
    "filename string attribute, size_bytes bigint, format string attribute, "
    "width int, height int, model string attribute, created_at bigint)"
)
PREVIOUS_META = "CREATE TABLE IF NOT EXISTS {meta} (key_name string attribute, value string attribute)"
PREVIOUS_MODEL_ROW = "REPLACE INTO {meta} (id, key_name, value) VALUES (%s, %s, %s)"
PREVIOUS_ROW = "REPLACE INTO {table} (id, embedding, img_id, filename, size_bytes, format, width, height, model, " \
               "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"


def stmt(template: str, table: str) -> str:
    """A statement naming this module's generated tables (identifiers cannot be parameters)."""
    assert re.fullmatch(r"up_[0-9a-f]{12}", table), table
    return template.replace("{table}", table).replace("{meta}", f"{table}_meta")


@pytest.fixture
def table(manticore_url: str) -> Iterator[str]:
    name = "up_" + uuid.uuid4().hex[:12]
    yield name
    cleanup = ManticoreBackend.from_url(manticore_url, table=name, meta_table=f"{name}_meta")
    cleanup.drop_tables()
    cleanup.close()


@pytest.fixture
def sql(manticore_url: str) -> Iterator[pymysql.cursors.Cursor]:
    args = parse_url(manticore_url)
    conn = pymysql.connect(host=args["host"], port=args["port"], autocommit=True, conv=CONVERSIONS)
    with conn.cursor() as cur:
        yield cur
    conn.close()


def micros(moment: datetime) -> int:
    return round((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000)


def previous_release_table(sql: pymysql.cursors.Cursor, table: str, old: list[ImageRecord],
                           vectors: np.ndarray) -> dict[str, np.ndarray]:
    """The table as the previous release left it: its DDL, its model row, its rows; part of them saved to a
    disk chunk, the rest in the RAM chunk. Returns the vectors as stored."""
    sql.execute(stmt(PREVIOUS_TABLE, table))
    sql.execute(stmt(PREVIOUS_META, table))
    sql.execute(stmt(PREVIOUS_MODEL_ROW, table), (1, "model", MODEL.to_json()))
    for i, rec in enumerate(old):
        sql.execute(stmt(PREVIOUS_ROW, table), (
            doc_id(rec.id), vector_param(vectors[i]), rec.id, rec.filename, rec.size_bytes, rec.format, rec.width,
            rec.height, rec.model, micros(rec.created_at)))
        if i == len(old) * 2 // 3:
            sql.execute(stmt("FLUSH RAMCHUNK {table}", table))
    sql.execute(stmt("SELECT img_id, embedding FROM {table} LIMIT 1000 OPTION max_matches=1000", table))
    return {row[0]: parse_vector(row[1]) for row in sql.fetchall()}


def test_a_previous_release_table_is_upgraded_in_place(manticore_url, table, sql):
    old = records(N_OLD, model=MODEL.label())
    vectors = clustered(N_OLD + 100, DIM, seed=11)
    stored = previous_release_table(sql, table, old, vectors[:N_OLD])
    assert len(stored) == N_OLD

    backend = ManticoreBackend.from_url(manticore_url, table=table, meta_table=f"{table}_meta")
    backend.ensure_schema(MODEL)
    backend.ensure_schema(MODEL)  # idempotent: nothing left to add
    sql.execute(stmt("SHOW CREATE TABLE {table}", table))
    ddl = sql.fetchone()[1]
    for column in ("captured_at", "has_gps", "latitude_key", "path", "collections", "tag_keys"):
        assert re.search(rf"^{column} ", ddl, re.MULTILINE), ddl

    assert backend.count() == N_OLD
    got = backend.get([r.id for r in old])
    assert got == {r.id: r for r in old}  # the first release's fields as they were, the new ones empty
    assert all(r.captured_at is None and not r.has_gps and r.orientation == 1 and r.collections == () for r in
               got.values())
    after = backend.get_vectors([r.id for r in old])
    assert all(np.array_equal(after[i], stored[i]) for i in stored)  # not one vector re-embedded or rounded
    scanned = [r for batch, _ in backend.scan(128) for r in batch]
    assert sorted(r.id for r in scanned) == sorted(r.id for r in old)

    hits = backend.search(vectors[5], 5)
    assert hits[0].id == old[5].id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert backend.count(SearchFilter(has_gps=False)) == N_OLD  # old rows have no GPS
    assert backend.count(SearchFilter(captured_from=datetime(1900, 1, 1, tzinfo=UTC))) == 0

    # New images with metadata beside the old ones, labels on old ones: filters see both.
    new = [ImageRecord(**{**vars(r), "id": f"{i + 10_000:064x}"}) for i, r in enumerate(rich_records(100, seed=4))]
    backend.upsert(new, vectors[N_OLD:])
    assert backend.set_labels({old[7].id: (["Ñoño trip"], ["beach"]), old[8].id: ([], ["beach"])}) == 2
    assert backend.count() == N_OLD + 100
    album = SearchFilter(collections=("Ñoño trip",))
    assert [h.id for h in backend.search(vectors[7], 10, where=album)] == [old[7].id]
    beach = SearchFilter(tags_any=("beach",))
    expected = {old[7].id, old[8].id} | {r.id for r in new if beach.matches(r)}
    assert {h.id for h in backend.search(vectors[0], 500, where=beach)} == expected
    assert backend.count(beach) == len(expected)
    for where in (SearchFilter(bbox=BoundingBox(-60, -170, 70, 170)), SearchFilter(path_prefix="c/"),
                  SearchFilter(captured_from=datetime(2022, 1, 1, tzinfo=UTC), formats=("JPEG",))):
        matching = {r.id for r in new if where.matches(r)}
        assert matching and {h.id for h in backend.search(vectors[3], 500, where=where)} == matching
        assert backend.count(where) == len(matching)
    assert backend.get([old[7].id])[old[7].id].filename == old[7].filename  # the rest of the row untouched
    assert np.array_equal(backend.get_vectors([old[7].id])[old[7].id], stored[old[7].id])
    backend.close()

    reopened = ManticoreBackend.from_url(manticore_url, table=table, meta_table=f"{table}_meta")
    reopened.ensure_schema(MODEL)  # a second start of the new release: the same table, accepted as it is
    assert reopened.count() == N_OLD + 100
    reopened.close()
