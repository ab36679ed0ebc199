"""Manticore backend: the SQL it sends, checked without a server.

No Manticore server can run here, so these tests swap the pymysql connection for a fake that records
`(sql, params)` and answers with canned rows. Statements are rendered with pymysql's own escaping
(`Cursor.mogrify`, the code `execute` runs) and matched against the grammar of the Manticore manual and its
SQL lexer. The live behaviour is the conformance suite's job (tests/backends/test_conformance.py), which
runs against a real server when MANTICORE_URL is set.
"""

from __future__ import annotations

import functools
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pymysql
import pytest

from shared.backends import BackendError, BackendUnavailable, ImageRecord, SchemaMismatch, manticore
from shared.backends.manticore import (
    ManticoreBackend,
    doc_id,
    float_key,
    key_float,
    label_key,
    parse_url,
    parse_vector,
    vector_param,
)
from shared.config import Settings
from shared.filters import BoundingBox, SearchFilter
from shared.types import ModelInfo
from tests.backends.data import clustered, records

MODEL = ModelInfo("test-model", "random", 64)
# Two image ids that share their first 16 hex digits: the `colliding` fixture maps them to one document id.
A_ID, B_ID = "0123456789abcdef" + "0" * 48, "0123456789abcdef" + "1" * 48
HOSTILE = "x'); DROP TABLE proxima_images; -- \\' \" \\\\ %s {ef=1} \n ñandú 🐦.jpg"

# Manticore's SQL lexer (src/sphinxql.l): FLOAT_CONSTANT and a single-quoted string.
FLOAT = r"(?:\d+\.\d*(?:[eE][+-]?\d+)?|\d*\.\d+[eE][+-]?\d+|\d+[eE][+-]?\d+)"
NUMBER = rf"-?(?:{FLOAT}|\d+)"
VECTOR = rf"\({NUMBER}(?:,{NUMBER})*\)"
QUOTED = r"'(?:[^'\\]|\\.)*'"
MVA = r"\((?:\d+(?:,\d+)*)?\)"  # a multi64 value: (1,2,3) or ()
# The metadata columns a row is read with, in ImageRecord order (the first eight are the first release's).
RECORD = ("img_id, filename, size_bytes, format, width, height, model, created_at, captured_at, has_captured_at, "
          "camera_make, camera_model, has_gps, latitude_key, longitude_key, orientation, path, collections, tags")




def with_record(template: str) -> str:
    return template.replace("{record}", RECORD)


# The columns after `embedding` as SHOW CREATE TABLE prints them: the first release's, then the metadata added.
FIRST_RELEASE_DDL = ("filename string attribute,\nsize_bytes bigint,\nformat string attribute,\nwidth integer,\n"
                     "height integer,\nmodel string attribute,\ncreated_at bigint")
ADDED = [("captured_at", "bigint"), ("has_captured_at", "bool"), ("camera_make", "string attribute"),
         ("camera_model", "string attribute"), ("has_gps", "bool"), ("latitude_key", "bigint"),
         ("longitude_key", "bigint"), ("orientation", "int"), ("path", "string attribute"),
         ("collections", "string attribute"), ("tags", "string attribute"), ("collection_keys", "multi64"),
         ("tag_keys", "multi64")]
CURRENT_DDL = FIRST_RELEASE_DDL + "".join(f",\n{name} {kind.replace('int', 'integer') if kind == 'int' else kind}"
                                          for name, kind in ADDED)


def show_create(dim: int, similarity: str = "COSINE", table: str = "proxima_images",
                columns: str = CURRENT_DDL) -> tuple[str, str]:
    """A SHOW CREATE TABLE answer shaped like Manticore's (Listing_tables.md; a clt test's output)."""
    return (table, f"CREATE TABLE {table} (\nid bigint,\nimg_id string attribute,\n"
                   f"embedding float_vector knn_type='hnsw' knn_dims='{dim}' hnsw_similarity='{similarity}' "
                   f"hnsw_m='16' hnsw_ef_construction='200',\n{columns}\n)")


@functools.cache
def _escaper() -> pymysql.cursors.Cursor:
    conn = pymysql.connections.Connection(defer_connect=True, charset="utf8mb4", conv=manticore.CONVERSIONS)
    conn.server_status = 0  # as after a handshake: backslash escapes on (Manticore's lexer uses them)
    return pymysql.cursors.Cursor(conn)


def render(sql: str, params: Any = None) -> str:
    """The exact text pymysql sends for `cursor.execute(sql, params)` (execute calls mogrify)."""
    return _escaper().mogrify(sql, params)


def unescape(literal: str) -> str:
    """Manticore's SqlUnescape (src/sphinxint.h) applied to one quoted literal."""
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\":
            out.append({"b": "\b", "n": "\n", "r": "\r", "t": "\t", "0": " "}.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.rows: list[tuple] = []

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: Any = None) -> int:
        self.conn.log.append((sql, params))
        render(sql, params)  # every statement must survive pymysql's escaping
        self.rows = list(self.conn.answer(sql, params))
        return len(self.rows)

    def fetchall(self) -> list[tuple]:
        return self.rows

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None


class FakeConnection:
    """Records (sql, params); `answer(sql, params)` gives the rows of each statement."""

    def __init__(self, answer: Callable[[str, Any], list[tuple]], log: list) -> None:
        self.answer = answer
        self.log = log
        self.closed = False

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def ping(self, reconnect: bool = False) -> None:
        if self.closed:
            raise pymysql.err.InterfaceError(0, "")

    def close(self) -> None:
        self.closed = True


class Fake:
    """A backend whose connections are fakes; `rules` maps a statement's first words to its rows."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, **options: Any) -> None:
        self.log: list[tuple[str, Any]] = []
        self.rules: dict[str, Callable[[str, Any], list[tuple]] | list[tuple]] = {}
        self.connects = 0
        self.backend = ManticoreBackend(**options)
        monkeypatch.setattr(self.backend, "_connect", self._connect)

    def _connect(self) -> FakeConnection:
        self.connects += 1
        return FakeConnection(self._answer, self.log)

    def _answer(self, sql: str, params: Any) -> list[tuple]:
        for prefix, rows in self.rules.items():
            if sql.startswith(prefix):
                return rows(sql, params) if callable(rows) else rows
        return []

    def statements(self, prefix: str = "") -> list[tuple[str, Any]]:
        return [(sql, params) for sql, params in self.log if sql.startswith(prefix)]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Fake:
    return Fake(monkeypatch)


@pytest.fixture
def colliding(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], int]:
    """A document id mapping weak enough to collide (the first 16 hex digits), as a 63-bit hash might."""
    def prefix_id(image_id: str) -> int:
        return int(image_id[:16], 16) or 1

    monkeypatch.setattr(manticore, "doc_id", prefix_id)
    assert prefix_id(A_ID) == prefix_id(B_ID)
    return prefix_id


def image(image_id: str, filename: str = "f.png") -> ImageRecord:
    return ImageRecord(id=image_id, filename=filename, size_bytes=1, format="PNG", width=1, height=1, model="m")


def micros(moment: datetime) -> int:
    return round((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000)


def record_row(rec: ImageRecord) -> tuple:
    """The RECORD columns of a stored row as Manticore answers them."""
    gps = rec.latitude is not None
    return (rec.id, rec.filename, rec.size_bytes, rec.format, rec.width, rec.height, rec.model,
            micros(rec.created_at), micros(rec.captured_at) if rec.captured_at else 0, int(bool(rec.captured_at)),
            rec.camera_make, rec.camera_model, int(gps), float_key(rec.latitude) if gps else 0,
            float_key(rec.longitude) if gps else 0, rec.orientation, rec.path,
            json.dumps(list(rec.collections)), json.dumps(list(rec.tags)))


# --- schema ----------------------------------------------------------------------------------------


def test_create_table_follows_the_knn_grammar(fake: Fake):
    fake.rules["SHOW CREATE TABLE"] = [show_create(64)]
    fake.backend.ensure_schema(MODEL)
    create = fake.statements("CREATE TABLE IF NOT EXISTS proxima_images")
    assert len(create) == 1 and create[0][1] is None
    sql = create[0][0]
    assert "embedding float_vector knn_type='hnsw' knn_dims='64' hnsw_similarity='COSINE'" in sql
    assert "hnsw_m='16' hnsw_ef_construction='100'" in sql
    # Data_types.md: `ident type [options]`, options `name='value'`
    columns = re.fullmatch(r"CREATE TABLE IF NOT EXISTS proxima_images \((.*)\)", sql).group(1).split(", ")
    types = {c.split()[0]: " ".join(c.split()[1:]) for c in columns}
    assert types.pop("embedding").startswith("float_vector ")
    assert types == {"img_id": "string attribute", "filename": "string attribute", "size_bytes": "bigint",
                     "format": "string attribute", "width": "int", "height": "int",
                     "model": "string attribute", "created_at": "bigint", "captured_at": "bigint",
                     "has_captured_at": "bool", "camera_make": "string attribute",
                     "camera_model": "string attribute", "has_gps": "bool", "latitude_key": "bigint",
                     "longitude_key": "bigint", "orientation": "int", "path": "string attribute",
                     "collections": "string attribute", "tags": "string attribute", "collection_keys": "multi64",
                     "tag_keys": "multi64"}
    assert fake.statements("ALTER") == []  # the table has every column


def test_dimension_is_formatted_from_an_int(fake: Fake):
    fake.rules["SHOW CREATE TABLE"] = [show_create(32)]
    fake.backend.ensure_schema(ModelInfo("m", "random", np.int64(32)))
    assert "knn_dims='32'" in fake.statements("CREATE TABLE IF NOT EXISTS proxima_images")[0][0]
    with pytest.raises(ValueError):
        fake.backend.ensure_schema(ModelInfo("m", "random", "32' hnsw_similarity='L2"))


def test_model_identity_is_stored_as_a_parameter(fake: Fake):
    fake.rules["SHOW CREATE TABLE"] = [show_create(64)]
    fake.backend.ensure_schema(MODEL)
    assert fake.statements("CREATE TABLE IF NOT EXISTS proxima_meta")[0][0] == (
        "CREATE TABLE IF NOT EXISTS proxima_meta (key_name string attribute, value string attribute)")
    [(sql, params)] = fake.statements("REPLACE INTO proxima_meta")
    assert sql == "REPLACE INTO proxima_meta (id, key_name, value) VALUES (%s, %s, %s)"
    assert params[:2] == (1, "model")
    assert json.loads(params[2]) == {"name": "test-model", "pretrained": "random", "dim": 64}


def test_other_dimension_raises_schema_mismatch(fake: Fake):
    fake.rules["SHOW CREATE TABLE"] = [show_create(64)]
    with pytest.raises(SchemaMismatch, match="Manticore index holds 64-dimensional.*other/random produces 32"):
        fake.backend.ensure_schema(ModelInfo("other", "random", 32))
    assert fake.statements("REPLACE") == []  # the stored model identity is left alone


@pytest.mark.parametrize("ddl", [
    show_create(64, similarity="L2")[1],
    "CREATE TABLE proxima_images (\nid bigint,\ntitle text\n)",
])
def test_foreign_table_raises_schema_mismatch(fake: Fake, ddl: str):
    fake.rules["SHOW CREATE TABLE"] = [("proxima_images", ddl)]
    with pytest.raises(SchemaMismatch):
        fake.backend.ensure_schema(MODEL)


def test_another_model_of_the_same_dimension_is_refused(fake: Fake):
    fake.rules["SHOW CREATE TABLE"] = [show_create(64)]
    fake.rules["SELECT value FROM proxima_meta"] = [(json.dumps({"name": "old", "pretrained": "x", "dim": 64}),)]
    with pytest.raises(SchemaMismatch, match="MODEL_NAME=old MODEL_PRETRAINED=x"):
        fake.backend.ensure_schema(MODEL)
    assert not any(sql.startswith("REPLACE") for sql, _ in fake.log)  # the stored identity is never overwritten


# --- search ----------------------------------------------------------------------------------------


def test_search_uses_knn_and_passes_the_vector_as_a_parameter(fake: Fake):
    query = clustered(1, 64)[0]  # float32
    fake.backend.search(query, 10)
    [(sql, params)] = fake.log
    assert "<=>" not in sql and "knn(embedding, %s, %s, {ef=%s, early_termination=%s})" in sql
    assert sql.startswith(with_record("SELECT id, {record}, knn_dist() FROM proxima_images WHERE knn("))
    k, vector, ef, early_termination, limit, max_matches = params
    assert (k, limit, max_matches) == (10, 10, 10) and ef == 64 and early_termination == 0
    assert isinstance(vector, manticore.VectorParam) and vector.values.dtype == np.float32
    assert np.array_equal(vector.values, query)


def test_rendered_search_matches_the_manual_knn_grammar(fake: Fake):
    query = clustered(1, 8)[0] * np.float32(-1)
    query[0] = 1e-9  # exponent form
    fake.backend.search(query, 5, exclude=["a" * 64])
    text = render(*fake.log[0])
    # Searching/KNN.md: select ... from <table> where knn ( <field>, <k>, <query vector> [,<options>] )
    head = with_record("SELECT id, {record}, knn_dist() FROM proxima_images ")
    assert text.startswith(head)
    pattern = (rf"WHERE knn\(embedding, (\d+), ({VECTOR}), \{{ef=(\d+), early_termination=0\}}\) "
               r"LIMIT (\d+) OPTION max_matches=(\d+)")
    match = re.fullmatch(pattern, text[len(head):])
    assert match, text
    assert match.group(1) == match.group(4) == match.group(5) == "6"  # k + len(exclude)
    parsed = np.array([float(x) for x in match.group(2)[1:-1].split(",")], dtype=np.float32)
    assert np.array_equal(parsed, query)  # exactly the float32 values


def test_quantized_tables_are_created_and_searched_with_rescoring(monkeypatch: pytest.MonkeyPatch):
    fake = Fake(monkeypatch, quantization="8bit", oversampling=4, early_termination=True)
    backend = fake.backend
    assert "quantization='8bit'" in backend._create_table_sql(64)
    assert "quantization" not in ManticoreBackend()._create_table_sql(64)
    backend.search(clustered(1, 8)[0], 5)
    text = render(*fake.log[0])
    assert re.search(r"\{ef=\d+, early_termination=1, rescore=1, oversampling=4\.0e0\}\)", text), text
    with pytest.raises(ValueError, match="quantization"):
        ManticoreBackend(quantization="4bit")


def test_numpy_scalars_would_be_quoted_so_vectors_are_converted():
    assert render("%s", (np.float32(0.5),)) == "'0.5'"  # why vector_param() exists
    assert render("%s", (vector_param(np.array([0.5, -2, 1e-30, -3.4e38], dtype=np.float32)),)) == \
        "(0.5,-2,1e-30,-3.39999995e+38)"
    with pytest.raises(ValueError):
        vector_param([0.1, float("nan")])


def test_scores_are_one_minus_knn_dist_and_exclude_is_filtered(fake: Fake):
    recs = records(4)
    dists = [0.0, 0.1, 0.25, 0.5]
    fake.rules["SELECT id, img_id"] = [(doc_id(r.id), *record_row(r), d) for r, d in zip(recs, dists, strict=True)]
    hits = fake.backend.search(np.ones(64), 2, exclude=[recs[0].id])
    assert fake.log[0][1][0] == 3  # over-fetched k + len(exclude)
    assert [h.id for h in hits] == [recs[1].id, recs[2].id]
    assert [h.score for h in hits] == pytest.approx([0.9, 0.75])
    assert hits[0].record == recs[1]


def test_search_with_k_zero_sends_nothing(fake: Fake):
    assert fake.backend.search(np.ones(4), 0) == []
    assert fake.log == []


# --- upsert ----------------------------------------------------------------------------------------


def test_hostile_metadata_travels_only_as_escaped_parameters(fake: Fake):
    rec = ImageRecord(id="ab" * 32, filename=HOSTILE, size_bytes=10, format="JPEG'--", width=1, height=2,
                      model="m\\'", created_at=datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC))
    fake.backend.upsert([rec], clustered(1, 4))
    [(sql, params)] = fake.statements("REPLACE INTO")
    assert "DROP" not in sql and "'" not in sql.split("VALUES")[1]
    assert HOSTILE in params
    text = render(sql, params)
    head = with_record("REPLACE INTO proxima_images (id, embedding, {record}, collection_keys, tag_keys) VALUES ")
    assert text.startswith(head)
    # Updating_documents/REPLACE.md: VALUES (value1, value2, ...) [, (...)]; Manticore's lexer splits the tuple
    value = rf"(?:{NUMBER}|{VECTOR}|{QUOTED}|{MVA})"
    row = re.fullmatch(rf"\(({value}(?:, {value})*)\)", text[len(head):])
    assert row, text
    tokens = re.findall(value, row.group(1))
    assert len(tokens) == 23
    assert [unescape(t) for t in tokens if t.startswith("'")] == ["ab" * 32, HOSTILE, "JPEG'--", "m\\'", "", "",
                                                                  "", "[]", "[]"]
    assert int(tokens[0]) == doc_id(rec.id)
    assert int(tokens[9]) == 1767323045123456  # created_at in microseconds since the epoch
    assert tokens[-2:] == ["()", "()"]  # no collections, no tags


def test_upsert_splits_batches_and_keeps_the_last_duplicate(monkeypatch: pytest.MonkeyPatch):
    fake = Fake(monkeypatch, batch_rows=500)
    recs = records(1200)
    vectors = clustered(1200, 8)
    first = ImageRecord(**{**vars(recs[0]), "filename": "first.jpg"})
    fake.backend.upsert([first, *recs], np.vstack([vectors[-1:], vectors]))
    replaces = fake.statements("REPLACE INTO")
    assert [len(params) // 23 for _, params in replaces] == [500, 500, 200]
    for sql, params in replaces:
        assert sql.count("%s") == len(params)
    params = replaces[0][1]
    assert params[3] == recs[0].filename  # the later copy of the duplicate id won
    assert np.allclose(params[1].values, vectors[0])
    # each chunk first reads which images hold its document ids (collision check)
    checks = fake.statements("SELECT id, img_id, collections, tags FROM proxima_images WHERE id IN")
    assert [len(p[0]) for _, p in checks] == [500, 500, 200]


def test_upsert_refuses_to_overwrite_a_colliding_image(fake: Fake, colliding: Callable[[str], int]):
    with pytest.raises(BackendError, match="collide"):
        fake.backend.upsert([image(A_ID), image(B_ID)], np.ones((2, 4)))
    fake.rules["SELECT id, img_id"] = [(colliding(B_ID), B_ID, "[]", "[]")]
    with pytest.raises(BackendError, match="refusing to overwrite"):
        fake.backend.upsert([image(A_ID)], np.ones((1, 4)))
    assert fake.statements("REPLACE") == []
    fake.backend.upsert([image(B_ID)], np.ones((1, 4)))  # the stored image itself may be replaced
    assert len(fake.statements("REPLACE")) == 1


def test_upsert_validates_input(fake: Fake):
    bad = ImageRecord(id="not-a-sha256", filename="f", size_bytes=1, format="PNG", width=1, height=1, model="m")
    with pytest.raises(ValueError):
        fake.backend.upsert([bad], np.ones((1, 4)))
    with pytest.raises(ValueError):
        fake.backend.upsert(records(2), np.ones((1, 4)))
    fake.backend.upsert([], np.zeros((0, 4)))
    assert fake.log == []


# --- ids and reads ---------------------------------------------------------------------------------


def test_doc_id_is_deterministic_and_in_range():
    ids = [r.id for r in records(5000)] + ["f" * 64, "8" + "0" * 63, "F" * 64, A_ID, B_ID]
    doc_ids = [doc_id(i) for i in ids]
    assert doc_ids == [doc_id(i) for i in ids]
    assert all(1 <= d <= 2**63 - 1 for d in doc_ids)
    assert len(set(doc_ids)) == len(ids)  # sequential test ids (000…001, 000…002) stay apart
    assert doc_id("0" * 64) == 6795220967960052883  # pinned: stored ids must never change
    for bad in ["", "g" * 64, "a" * 63, "a" * 65, None]:
        with pytest.raises(ValueError):
            doc_id(bad)


@pytest.mark.parametrize("digest", [bytes(8), b"\x80" + bytes(7)])
def test_doc_id_is_never_zero(monkeypatch: pytest.MonkeyPatch, digest: bytes):
    class Zero:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def digest(self) -> bytes:
            return digest

    monkeypatch.setattr(manticore.hashlib, "blake2b", Zero)
    assert doc_id("0" * 64) == 1  # 0 is not a valid document id, and the sign bit is masked off


def test_get_sends_ids_as_parameters(fake: Fake):
    recs = records(2)
    fake.rules["SELECT id, img_id"] = [(doc_id(r.id), *record_row(r)) for r in recs]
    assert fake.backend.get([r.id for r in recs] + ["not hex"]) == {r.id: r for r in recs}
    [(sql, params)] = fake.log
    assert sql == with_record("SELECT id, {record} FROM proxima_images WHERE id IN %s LIMIT %s OPTION max_matches=%s")
    ids = tuple(sorted(doc_id(r.id) for r in recs))
    assert params == (ids, 2, 2)
    assert render(sql, params).endswith(f"WHERE id IN ({ids[0]},{ids[1]}) LIMIT 2 OPTION max_matches=2")


def test_a_colliding_row_is_never_returned(fake: Fake, colliding: Callable[[str], int]):
    stored_b = (colliding(B_ID), *record_row(image(B_ID, "b.jpg")))
    fake.rules["SELECT id, img_id, filename"] = [stored_b]
    fake.rules["SELECT id, img_id, embedding"] = [(colliding(B_ID), B_ID, "0.5,0.5")]
    fake.rules["SELECT id, img_id FROM"] = [(colliding(B_ID), B_ID)]
    assert fake.backend.get([A_ID]) == {}  # B sits on A's document id: never returned as A
    assert fake.backend.get_vectors([A_ID]) == {}
    assert fake.backend.delete([A_ID]) == 0
    assert fake.statements("DELETE") == []
    assert fake.backend.get([B_ID])[B_ID].filename == "b.jpg"
    assert fake.backend.delete([A_ID, B_ID]) == 1


def test_get_vectors_parses_manticore_output(fake: Fake):
    recs = records(2)
    fake.rules["SELECT id, img_id, embedding"] = [(doc_id(recs[0].id), recs[0].id, "0.5,-0.25,1e-08"),
                                                  (doc_id(recs[1].id), recs[1].id, b"0.1,0.2,0.3")]
    got = fake.backend.get_vectors([r.id for r in recs])
    assert np.allclose(got[recs[0].id], [0.5, -0.25, 1e-8]) and got[recs[0].id].dtype == np.float32
    assert np.allclose(got[recs[1].id], [0.1, 0.2, 0.3])
    assert parse_vector("").size == 0


def test_created_at_round_trips_in_microseconds(fake: Fake):
    when = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    rec = ImageRecord(**{**vars(records(1)[0]), "created_at": when})
    fake.backend.upsert([rec], np.ones((1, 4)))
    stored_micros = fake.statements("REPLACE")[0][1][9]
    stored = list(record_row(rec))
    stored[7] = stored_micros
    fake.rules["SELECT id, img_id, filename"] = [(doc_id(rec.id), *stored)]
    assert fake.backend.get([rec.id])[rec.id] == rec
    naive = ImageRecord(**{**vars(rec), "created_at": when.replace(tzinfo=None)})
    fake.backend.upsert([naive], np.ones((1, 4)))
    assert fake.statements("REPLACE")[1][1][9] == stored_micros  # naive datetimes are UTC


def test_delete_counts_first_and_deletes_only_stored_rows(fake: Fake):
    recs = records(3)
    fake.rules["SELECT id, img_id FROM"] = [(doc_id(recs[0].id), recs[0].id), (doc_id(recs[2].id), recs[2].id)]
    assert fake.backend.delete([r.id for r in recs] + ["f" * 64]) == 2
    asked = tuple(sorted(doc_id(i) for i in [*(r.id for r in recs), "f" * 64]))
    assert fake.statements("SELECT id, img_id FROM")[0][1][0] == asked
    [(sql, params)] = fake.statements("DELETE")
    assert sql == "DELETE FROM proxima_images WHERE id IN %s"
    assert sorted(params[0]) == sorted([doc_id(recs[0].id), doc_id(recs[2].id)])
    fake.log.clear()
    assert fake.backend.delete([]) == 0 and fake.log == []


def test_count_is_zero_without_the_table(fake: Fake):
    fake.rules["SHOW TABLES LIKE"] = [("proximaXimages", "rt")]  # LIKE treats _ as a wildcard
    assert fake.backend.count() == 0
    assert fake.log == [("SHOW TABLES LIKE %s", ("proxima_images",))]
    fake.rules["SHOW TABLES LIKE"] = [("proxima_images", "rt")]
    fake.rules["SELECT COUNT(*)"] = [(42,)]
    assert fake.backend.count() == 42
    assert fake.log[-1] == ("SELECT COUNT(*) FROM proxima_images", None)


def test_table_names_are_checked_and_used(monkeypatch: pytest.MonkeyPatch):
    for bad in ["Images", "a-b", "x; DROP TABLE y", "", "1abc"]:
        with pytest.raises(ValueError):
            ManticoreBackend(table=bad)
    fake = Fake(monkeypatch, table="t_1_images", meta_table="t_1_meta")
    fake.rules["SHOW CREATE TABLE"] = [show_create(64, table="t_1_images")]
    fake.backend.ensure_schema(MODEL)
    fake.backend.drop_tables()
    sql = [s for s, _ in fake.log]
    assert "proxima" not in " ".join(sql)
    assert sql[-2:] == ["DROP TABLE IF EXISTS t_1_images", "DROP TABLE IF EXISTS t_1_meta"]


# --- settings, connections and errors --------------------------------------------------------------


def test_url_parsing():
    assert parse_url("mysql://manticore") == {"host": "manticore", "port": 9306, "user": None, "password": "",
                                              "database": None}
    assert parse_url("mysql://u%40x:p%3Aw@10.0.0.1:9400/Manticore") == {
        "host": "10.0.0.1", "port": 9400, "user": "u@x", "password": "p:w", "database": "Manticore"}
    for bad in ["http://h:9306", "mysql://", "mysql://h:notaport"]:
        with pytest.raises(BackendError, match="MANTICORE_URL"):
            parse_url(bad)


def test_from_settings_without_url_names_the_variable():
    with pytest.raises(BackendError, match="MANTICORE_URL"):
        ManticoreBackend.from_settings(Settings.explicit(manticore_url=""))
    backend = ManticoreBackend.from_settings(Settings.explicit(manticore_url="mysql://192.0.2.1:9306"))
    assert (backend.host, backend.port, backend.name) == ("192.0.2.1", 9306, "manticore")  # nothing connected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_backend_unavailable():
    backend = ManticoreBackend("127.0.0.1", free_port(), connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="unreachable"):
        backend.count()
    with pytest.raises(BackendUnavailable):
        backend.search(np.ones(4), 3)
    assert time.monotonic() - started < 5
    backend.close()


@pytest.mark.parametrize(("error", "expected"), [
    (pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"), BackendUnavailable),
    (pymysql.err.InterfaceError(0, ""), BackendUnavailable),
    (pymysql.err.ProgrammingError(1064, "P01: syntax error"), BackendError),
])
def test_driver_errors_are_translated_and_the_next_call_reconnects(fake: Fake, error: Exception, expected: type):
    calls = {"n": 0}

    def fail_once(sql: str, params: Any) -> list[tuple]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise error
        return [("proxima_images", "rt")]

    fake.rules["SHOW TABLES"] = fail_once
    fake.rules["SELECT COUNT(*)"] = [(7,)]
    with pytest.raises(expected) as info:
        fake.backend.count()
    assert type(info.value) is expected and info.value.__cause__ is error
    assert fake.backend.count() == 7
    assert fake.connects == 2  # the connection that saw the error was dropped


def test_idle_connections_are_reused_and_stale_ones_replaced(fake: Fake):
    fake.backend.count()
    fake.backend.count()
    assert fake.connects == 1
    fake.backend._idle[0].closed = True  # e.g. the server restarted: ping fails
    fake.backend.count()
    assert fake.connects == 2
    fake.backend.close()
    assert fake.backend._idle == []


def test_views_share_the_connections_and_the_catalogue(fake: Fake):
    view = fake.backend.for_index("proxima_images_m_0123abcd")
    assert (view.index, view.meta_table, view.catalog_table) == (
        "proxima_images_m_0123abcd", "proxima_images_m_0123abcd_meta", "proxima_images_catalog")
    assert fake.backend.for_index("proxima_images").meta_table == "proxima_meta"
    for bad in ["Images", "x; DROP TABLE y", "proxima", "proxima_images_catalog", "a" * 128]:
        with pytest.raises(ValueError):
            fake.backend.for_index(bad)
    view.count()
    view.close()  # releases nothing: the connection stays in the shared pool
    assert len(fake.backend._idle) == 1 and view._idle is fake.backend._idle
    fake.backend.count()
    assert fake.connects == 1
    view.write_catalog("model:m", HOSTILE)
    view.drop()
    assert fake.statements("REPLACE INTO proxima_images_catalog") == [(
        "REPLACE INTO proxima_images_catalog (id, key_name, value) VALUES (%s, %s, %s)",
        (manticore.catalog_id("model:m"), "model:m", HOSTILE))]
    assert [s for s, _ in fake.log[-2:]] == ["DROP TABLE IF EXISTS proxima_images_m_0123abcd",
                                             "DROP TABLE IF EXISTS proxima_images_m_0123abcd_meta"]
    with pytest.raises(ValueError, match="NUL"):
        view.write_catalog("k", "a\x00b")
    fake.backend.close()
    assert fake.backend._idle == []


def test_threads_never_share_a_connection(fake: Fake):
    busy: set[int] = set()
    clashes: list[int] = []
    lock = threading.Lock()

    def answer(sql: str, params: Any, conn: FakeConnection) -> list[tuple]:
        with lock:
            if id(conn) in busy:
                clashes.append(id(conn))
            busy.add(id(conn))
        time.sleep(0.002)
        with lock:
            busy.discard(id(conn))
        return []

    def connect() -> FakeConnection:
        fake.connects += 1
        conn = FakeConnection(lambda sql, params: answer(sql, params, conn), fake.log)
        return conn

    fake.backend._connect = connect
    threads = [threading.Thread(target=lambda: [fake.backend.count() for _ in range(20)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clashes == []
    assert 1 < fake.connects <= 8 + 8 * 20
    assert len(fake.backend._idle) <= fake.backend.pool_size


def test_scan_pages_by_document_id(fake: Fake):
    recs = records(5)
    stored = sorted((doc_id(r.id), *record_row(r), f"{i}.5,1") for i, r in enumerate(recs))
    fake.rules["SHOW TABLES LIKE"] = [("proxima_images", "rt")]

    def page(sql: str, params: Any) -> list[tuple]:
        after, limit, _ = params
        return [row for row in stored if row[0] > after][:limit]

    fake.rules["SELECT id, img_id"] = page
    batches = list(fake.backend.scan(2))
    assert [len(recs_) for recs_, _ in batches] == [2, 2, 1]
    by_id = {r.id: r for r in recs}
    assert [r for recs_, _ in batches for r in recs_] == [by_id[row[1]] for row in stored]
    assert batches[0][1].shape == (2, 2) and batches[0][1].dtype == np.float32
    scans = fake.statements("SELECT id, img_id")
    assert scans[0][0] == with_record("SELECT id, {record}, embedding FROM proxima_images WHERE id > %s "
                                      "ORDER BY id ASC LIMIT %s OPTION max_matches=%s")
    assert [p for _, p in scans] == [(0, 2, 2), (stored[1][0], 2, 2), (stored[3][0], 2, 2), (stored[4][0], 2, 2)]


def test_scan_of_a_missing_table_is_empty(fake: Fake):
    assert list(fake.backend.scan()) == []
    assert [sql for sql, _ in fake.log] == ["SHOW TABLES LIKE %s"]


def test_from_settings_uses_table_and_tuning_settings():
    settings = Settings.explicit(manticore_url="mysql://m:9306", manticore_table="e2e_1234abcd",
                        manticore_ef_search=300, manticore_hnsw_m=24)
    backend = ManticoreBackend.from_settings(settings)
    assert (backend.table, backend.meta_table, backend.ef_search, backend.hnsw_m) == (
        "e2e_1234abcd", "e2e_1234abcd_meta", 300, 24)
    assert ManticoreBackend().meta_table == "proxima_meta"


# --- metadata, filters, labels and migration --------------------------------------------------------


def test_float_keys_are_exact_and_keep_the_order():
    values = [-180.0, -90.0, -33.856784, -1e-300, -0.0, 0.0, 5e-324, 1e-9, 40.3, 40.30000000000001, 151.215297,
              180.0]
    keys = [float_key(v) for v in values]
    assert [key_float(k) for k in keys] == values  # -0.0 == 0.0
    assert keys == sorted(keys) and float_key(-0.0) == float_key(0.0) == 0
    assert len(set(keys)) == len(values) - 1
    assert all(-(2**63) < k < 2**63 for k in keys)
    rng = np.random.default_rng(0)
    sample = sorted(rng.uniform(-200, 200, 2000).tolist())
    assert [float_key(v) for v in sample] == sorted(float_key(v) for v in sample)
    assert all(key_float(float_key(v)) == v for v in sample)


def test_label_keys_are_63_bit_and_pinned():
    assert label_key("beach") == label_key("beach") != label_key("Beach")
    assert 0 <= label_key("sunset 🌅") < 2**63
    assert label_key("") == 7252660547403494068  # pinned: stored keys must never change


FILTER_SQL = [
    (SearchFilter(captured_from=datetime(2022, 1, 1, tzinfo=UTC)),
     ["has_captured_at = 1", "captured_at >= %s"], [1640995200000000]),
    (SearchFilter(captured_to=datetime(2022, 1, 1, tzinfo=UTC)), ["has_captured_at = 1", "captured_at <= %s"],
     [1640995200000000]),
    (SearchFilter(ingested_from=datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC),
                  ingested_to=datetime(1970, 1, 2, tzinfo=UTC)),
     ["created_at >= %s", "created_at <= %s"], [1_000_000, 86_400_000_000]),
    (SearchFilter(formats=("PNG", "HEIF")), ["format IN %s"], [("PNG", "HEIF")]),
    (SearchFilter(min_width=10, min_height=20), ["width >= %s", "height >= %s"], [10, 20]),
    (SearchFilter(cameras=("Canon",)), ["(camera_make IN %s OR camera_model IN %s)"], [("Canon",), ("Canon",)]),
    (SearchFilter(has_gps=False), ["has_gps = %s"], [0]),
    (SearchFilter(bbox=BoundingBox(-1.5, 2, 3, 4)),
     ["has_gps = 1", "latitude_key >= %s", "latitude_key <= %s", "longitude_key >= %s", "longitude_key <= %s"],
     [float_key(-1.5), float_key(3), float_key(2), float_key(4)]),
    (SearchFilter(collections=("a", "b")), ["ANY(collection_keys) IN %s"], [(label_key("a"), label_key("b"))]),
    (SearchFilter(tags_all=("a", "b")), ["ANY(tag_keys) = %s", "ANY(tag_keys) = %s"], [label_key("a"), label_key("b")]),
    (SearchFilter(tags_any=("a",)), ["ANY(tag_keys) IN %s"], [(label_key("a"),)]),
    (SearchFilter(path_prefix="c/_%"), ["path >= %s", "path < %s"], ["c/_%", "c/_&"]),
    (SearchFilter(), [], []),
]


@pytest.mark.parametrize(("where", "conditions", "values"), FILTER_SQL)
def test_each_filter_field_becomes_conditions_with_bound_values(where: SearchFilter, conditions: list[str],
                                                                values: list[Any]):
    assert manticore._conditions(where) == (conditions, values)


def test_the_path_prefix_range_ends_at_the_next_string():
    after = manticore._after_prefix
    assert after("c/4") == "c/5" and after("2024/Ñoño") == "2024/Ñoñp"
    assert after("a\U0010ffff") == "b" and after("\U0010ffff") is None
    assert after("x\ud7ff") == "x\ue000"  # no surrogates
    for prefix in ["c/4", "é", "a\U0010ffff"]:
        upper = after(prefix)
        for path in [prefix, prefix + "\U0010ffff/x", prefix + "\x00"]:
            assert prefix <= path < upper and prefix.encode() <= path.encode() < upper.encode()


def test_a_filtered_search_counts_first_and_is_exact_when_few_match(fake: Fake):
    where = SearchFilter(formats=("PNG",), cameras=(HOSTILE,))
    fake.rules["SELECT COUNT(*)"] = [(0,)]
    assert fake.backend.search(np.ones(8), 5, where=where) == []  # nothing matches: no vector search
    [(sql, params)] = fake.log
    assert sql == "SELECT COUNT(*) FROM proxima_images WHERE format IN %s AND (camera_make IN %s OR camera_model IN %s)"
    assert params == [("PNG",), (HOSTILE,), (HOSTILE,)]
    fake.log.clear()
    fake.rules["SELECT COUNT(*)"] = [(42,)]
    fake.backend.search(np.ones(8), 5, where=where)
    sql, params = fake.log[-1]
    assert "knn(embedding, %s, %s, {ef=%s, early_termination=%s, fullscan=1}) AND format IN %s AND (" in sql
    text = render(sql, params)
    assert "DROP" not in sql and re.search(r"fullscan=1\}\) AND format IN \('PNG'\) AND \(camera_make IN \('x", text)
    assert text.endswith("LIMIT 5 OPTION max_matches=5")


def test_a_filtered_search_of_many_matches_walks_the_graph_with_a_larger_ef(fake: Fake):
    where = SearchFilter(collections=("half",))

    def counts(sql: str, params: Any) -> list[tuple]:
        return [(20_000,)] if "WHERE" in sql else [(1_000_000,)]

    fake.rules["SELECT COUNT(*)"] = counts
    fake.backend.search(np.ones(8), 10, where=where)
    sql, params = fake.log[-1]
    assert "{ef=%s, early_termination=%s, prefilter=1}) AND ANY(collection_keys) IN %s LIMIT" in sql
    assert params[2] == 2 * 10 * 1_000_000 // 20_000  # ef: 2·limit / share of matching rows
    assert params[4] == (label_key("half"),)


def test_count_with_a_filter(fake: Fake):
    fake.rules["SHOW TABLES LIKE"] = [("proxima_images", "rt")]
    fake.rules["SELECT COUNT(*)"] = [(3,)]
    assert fake.backend.count(SearchFilter(has_gps=True)) == 3
    assert fake.log[-1] == ("SELECT COUNT(*) FROM proxima_images WHERE has_gps = %s", [1])


def test_every_field_is_written_and_read_back(fake: Fake):
    rec = ImageRecord(id="c" * 64, filename="f.jpg", size_bytes=5, format="JPEG", width=3, height=4, model="m",
                      created_at=datetime(2026, 1, 2, tzinfo=UTC), captured_at=datetime(1999, 12, 31, 23, tzinfo=UTC),
                      camera_make="Canon", camera_model="EOS", latitude=-33.856784, longitude=151.215297,
                      orientation=6, path="a/ñ.jpg", collections=("Viaje", "Família"), tags=("sunset 🌅",))
    fake.backend.upsert([rec], np.ones((1, 4)))
    [(sql, params)] = fake.statements("REPLACE")
    assert params[10:] == [micros(rec.captured_at), 1, "Canon", "EOS", 1, float_key(-33.856784),
                           float_key(151.215297), 6, "a/ñ.jpg", '["Viaje", "Família"]', '["sunset 🌅"]',
                           (label_key("Viaje"), label_key("Família")), (label_key("sunset 🌅"),)]
    fake.rules["SELECT id, img_id, filename"] = [(doc_id(rec.id), *record_row(rec))]
    assert fake.backend.get([rec.id]) == {rec.id: rec}
    bare = image(rec.id)
    old = (doc_id(rec.id), *record_row(bare)[:8], 0, 0, "", "", 0, 0, 0, 0, "", "", "")
    fake.rules["SELECT id, img_id, filename"] = [old]  # a row from before the metadata columns: all empty
    assert fake.backend.get([rec.id]) == {rec.id: bare}


def test_upsert_keeps_the_stored_labels(fake: Fake):
    rec = image("d" * 64).with_labels(["new", "both"], ["t"])
    fake.rules["SELECT id, img_id, collections, tags"] = [(doc_id(rec.id), rec.id, '["old", "both"]', '["t"]')]
    fake.backend.upsert([rec], np.ones((1, 4)))
    params = fake.statements("REPLACE")[0][1]
    assert params[19:] == ['["old", "both", "new"]', '["t"]', tuple(label_key(n) for n in ("old", "both", "new")),
                           (label_key("t"),)]


def test_set_labels_updates_only_stored_images(fake: Fake):
    stored = "e" * 64
    fake.rules["SELECT id, img_id FROM"] = [(doc_id(stored), stored)]
    assert fake.backend.set_labels({stored: (["a"], []), "f" * 64: (["b"], ["c"]), "junk": ([], [])}) == 1
    [(sql, params)] = fake.statements("UPDATE")
    assert sql == ("UPDATE proxima_images SET collections = %s, tags = %s, collection_keys = %s, tag_keys = %s "
                   "WHERE id = %s")
    assert params == ('["a"]', "[]", (label_key("a"),), (), doc_id(stored))
    assert render(sql, params).endswith(f"collection_keys = ({label_key('a')}), tag_keys = () WHERE id = "
                                        f"{doc_id(stored)}")


def test_a_first_release_table_gains_the_new_columns(fake: Fake):
    fake.rules["SHOW CREATE TABLE"] = [show_create(64, columns=FIRST_RELEASE_DDL)]
    fake.backend.ensure_schema(MODEL)
    alters = [sql for sql, params in fake.statements("ALTER") if params is None]
    assert alters == [f"ALTER TABLE proxima_images ADD COLUMN {name} {kind}" for name, kind in ADDED]
    fake.log.clear()
    half = FIRST_RELEASE_DDL + "".join(f",\n{name} {kind}" for name, kind in ADDED[:5])  # an interrupted upgrade
    fake.rules["SHOW CREATE TABLE"] = [show_create(64, columns=half)]
    fake.backend.ensure_schema(MODEL)
    added = [sql.split("ADD COLUMN ")[1].split()[0] for sql, _ in fake.statements("ALTER")]
    assert added == [name for name, _ in ADDED[5:]]


def test_a_column_another_process_added_meanwhile_is_no_error(fake: Fake):
    answers = [show_create(64, columns=FIRST_RELEASE_DDL)]  # then the table as the other process left it
    fake.rules["SHOW CREATE TABLE"] = lambda sql, params: [answers.pop(0) if answers else show_create(64)]

    def alter(sql: str, params: Any) -> list[tuple]:
        raise pymysql.err.ProgrammingError(1064, "table proxima_images: 'captured_at' attribute already in schema")

    fake.rules["ALTER"] = alter
    fake.backend.ensure_schema(MODEL)
    assert len(fake.statements("ALTER")) == len(ADDED)
    fake.rules["SHOW CREATE TABLE"] = [show_create(64, columns=FIRST_RELEASE_DDL)]
    with pytest.raises(BackendError, match="already in schema"):  # still missing: the error was real
        fake.backend.ensure_schema(MODEL)


def test_connections_compare_strings_byte_for_byte(monkeypatch: pytest.MonkeyPatch):
    seen: dict[str, Any] = {}
    monkeypatch.setattr(manticore.pymysql, "connect", lambda **kwargs: seen.update(kwargs))
    ManticoreBackend()._connect()
    assert seen["init_command"] == "SET collation_connection = binary" and seen["autocommit"] is True
