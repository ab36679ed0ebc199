"""Manticore Search backend, spoken to over Manticore's MySQL protocol with pymysql.

One real-time table holds the vectors in a `float_vector` attribute with an HNSW index
(`hnsw_similarity='COSINE'`) beside the image metadata; a small second table keeps the model identity.
One index per model identity (`shared.catalog`): `for_index` views use the tables `<index>` and `<index>_meta`
through the same connections, and the catalogue is the table `<table>_catalog` (`key_name`, `value` string
attributes; document id = 63 bits of a BLAKE2b hash of the key, one REPLACE or DELETE per write) of the table
the backend was built with.

Ids. Manticore document ids are unsigned 64-bit integers, ours are SHA-256 hex strings. The document id is
a 64-bit BLAKE2b hash of the image id masked to 63 bits (some clients treat ids as signed), with 0 (an
invalid id) mapped to 1. Hashing the whole id, rather than taking its first 16 hex digits, keeps ids that
are not random (tests number theirs 000…001, 000…002) apart. The full 64-character id is stored in the
`img_id` string attribute and checked on every read, so two images that land on one document id can never
be confused: a row whose `img_id` is not the one asked for is dropped, and an upsert that would overwrite
another image raises BackendError.

Similarity. With COSINE, Manticore normalises vectors when they are stored and `knn_dist()` is
1 − cosine similarity, so a hit's score is `1 - knn_dist()`.

Metadata. Manticore attributes have no NULL, so every optional field has a companion flag or sentinel:
`captured_at` is bigint microseconds beside `has_captured_at` (bool); GPS is `has_gps` (bool) with
`latitude_key` / `longitude_key`, bigints holding each float64 in an order-preserving encoding (`float_key`):
Manticore's `float` is 32-bit and would neither give back the stored degrees nor compare exactly with a
bbox bound, while these keys do both. `orientation` 0 (rows from before it existed) reads as 1. Collections
and tags are stored twice: their names as JSON arrays in string attributes (read back in order), and a
63-bit BLAKE2b hash of each name in the `multi64` attributes `collection_keys` / `tag_keys` that filters
test. Strings compare byte for byte: every connection sets `collation_connection = binary` (the server's
default, libc_ci, would let `format IN ('png')` match `PNG`).

Filters. A `SearchFilter` becomes conditions ANDed to `knn()` in one WHERE (`_conditions`, every value a
`%s` parameter): ranges as `>=` / `<=`, lists as `IN`, cameras as `(camera_make IN … OR camera_model IN …)`,
collections and tags as `ANY(collection_keys) IN …`, `tags_all` as one `ANY(tag_keys) = %s` per tag, a path
prefix as the range `path >= prefix AND path < successor(prefix)` (exact under the binary collation; `%`
and `_` are plain characters there). Manticore 29 prefilters (Searching/KNN.md, "Filtering strategies:
prefilter vs. postfilter"): the filter is checked inside the HNSW walk with ACORN-1, and the server scans
the matching rows exactly instead when it estimates that cheaper. Its estimate does not cover every filter
(on 20k rows, a multi64 filter keeping 1% got 0–10 of 10 hits, recall 0.3, at ef=64), so a filtered search
counts its matches first (an exact COUNT on the attributes, about a millisecond on 20k rows): none -> []
without a search; at most `exact_search_rows` -> `fullscan=1` (a knn() option of the server's SQL parser,
src/searchdsql.cpp: no graph, exact distances to the matching rows); more -> `prefilter=1` with ef raised
to 2·limit divided by the share of matching rows (the walk sees that many fewer usable nodes).
Measured on the 20k-image conformance set: recall@10 ≥ 0.99 at 50%, 10% and 1% on either path.

Migration. `ensure_schema` reads the table's columns from SHOW CREATE TABLE and adds the missing metadata
attributes one `ALTER TABLE … ADD COLUMN` at a time (Updating_table_schema_and_settings.md: RT tables take
every scalar, string, json and multi64 type this way, vectors stay where they are). New columns read as
empty (0, '', no values). A start interrupted half way adds the rest on the next start; two processes
racing to add one column both succeed.

SQL. Every value reaches SQL as a pymysql parameter (`%s`); vectors become `VectorParam`s in `vector_param`,
which the driver renders as `(a,b,c)` with the encoder this module registers. Identifiers are table names
checked against a strict pattern when the backend is built, column names and condition fragments are
constants of this module, and the vector dimension in CREATE TABLE comes from the model config.
Statements follow the Manticore manual pages named beside them (manual/english/...).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import re
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pymysql

from shared.backends.base import Hit, ImageRecord, Neighbours, SearchFilter, check_model, merge_labels, translate_errors
from shared.filters import epoch_micros, from_epoch_micros
from shared.types import BackendError, ModelInfo, SchemaMismatch

if TYPE_CHECKING:
    from shared.config import Settings

log = logging.getLogger(__name__)

DEFAULT_PORT = 9306
_ID_MASK = (1 << 63) - 1
_IMAGE_ID = re.compile(r"[0-9a-fA-F]{64}")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,127}")
_MODEL_ROW = 1  # document id of the model identity row in the meta table
_CATALOG_ROWS = 10_000  # LIMIT / max_matches of a catalogue read (searchd returns 20 rows by default)

# One statement stays far below searchd's max_allowed_packet (128 MiB by default): a bigger one is not an
# error reply but a reset connection, which would look like a server that is down.
MAX_STATEMENT_BYTES = 16 * 1024 * 1024
_FLOAT_BYTES = 17  # the longest float32 in encode_vector's form (-1.23456789e-38), plus its comma
_NUMBER_BYTES = 22  # the longest int64 (-9223372036854775808), its comma and a space

# The most ef a filtered HNSW walk gets (ef grows as the share of matching rows shrinks; below
# exact_search_rows matches the search is exact instead).
_MAX_FILTERED_EF = 10_000

# Searching/KNN.md, "Vector quantization": the values searchd takes ("" = full float32 vectors).
QUANTIZATIONS = frozenset({"", "8bit", "1bit"})

# (column, type) of the metadata attributes in the order rows are read into an ImageRecord. The first eight
# are the first release's (its CREATE TABLE, with img_id before the embedding); the rest are added to an
# older table by ensure_schema (Creating_a_table/Data_types.md; Updating_table_schema_and_settings.md).
_FIRST_RELEASE_COLUMNS = (
    ("img_id", "string attribute"), ("filename", "string attribute"), ("size_bytes", "bigint"),
    ("format", "string attribute"), ("width", "int"), ("height", "int"), ("model", "string attribute"),
    ("created_at", "bigint"),  # microseconds since the epoch: `timestamp` is 32-bit seconds
)
_METADATA_COLUMNS = (
    ("captured_at", "bigint"),  # microseconds since the epoch; 0 when has_captured_at is 0
    ("has_captured_at", "bool"),
    ("camera_make", "string attribute"),
    ("camera_model", "string attribute"),
    ("has_gps", "bool"),
    ("latitude_key", "bigint"),  # float_key(degrees); 0 when has_gps is 0
    ("longitude_key", "bigint"),
    ("orientation", "int"),  # 1-8; 0 in rows from before the column existed, read as 1
    ("path", "string attribute"),
    ("collections", "string attribute"),  # the names as a JSON array, in the order they were added
    ("tags", "string attribute"),
)
# Written and filtered on, never read back: label_key() of each collection / tag name.
_LABEL_KEY_COLUMNS = (("collection_keys", "multi64"), ("tag_keys", "multi64"))
_ADDED_COLUMNS = _METADATA_COLUMNS + _LABEL_KEY_COLUMNS
_READ_COLUMNS = tuple(name for name, _ in _FIRST_RELEASE_COLUMNS + _METADATA_COLUMNS)
_RECORD_COLUMNS = ", ".join(_READ_COLUMNS)
_N_RECORD = len(_READ_COLUMNS)
_WRITE_COLUMNS = ", ".join(("id", "embedding", *_READ_COLUMNS, *(name for name, _ in _LABEL_KEY_COLUMNS)))
_ROW_PLACEHOLDERS = "(" + ", ".join(["%s"] * (2 + _N_RECORD + len(_LABEL_KEY_COLUMNS))) + ")"
# Strings compare byte for byte (UTF-8 byte order = code point order), not by the server's libc_ci default.
_SESSION_SETUP = "SET collation_connection = binary"


def catalog_id(key: str) -> int:
    """The document id of a catalogue key: 63 bits of a BLAKE2b hash of its UTF-8, never 0."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") & _ID_MASK) or 1


def doc_id(image_id: str) -> int:
    """The Manticore document id of an image id: 63 bits of a BLAKE2b hash of the id, never 0."""
    if not isinstance(image_id, str) or not _IMAGE_ID.fullmatch(image_id):
        raise ValueError(f"image ids are 64 hex digits (SHA-256), got {image_id!r}")
    digest = hashlib.blake2b(image_id.encode("ascii"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") & _ID_MASK) or 1


class VectorParam:
    """A vector as a query parameter: finite float32 values, which the driver renders as `(a,b,c)` through
    `encode_vector` (registered in `CONVERSIONS`, the encoder table every connection of ours uses)."""

    __slots__ = ("values",)

    def __init__(self, values: np.ndarray) -> None:
        self.values = values


def vector_param(vector: Any) -> VectorParam:
    """The only place a vector becomes a query parameter: checked (non-empty, finite) and made float32."""
    values = np.asarray(vector, dtype=np.float32).reshape(-1)
    if not values.size:
        raise ValueError("empty vector")
    if not np.isfinite(values).all():
        raise ValueError("vector contains NaN or infinity")
    return VectorParam(values)


_FLOAT32 = "{:.9g}".format  # 9 significant digits: every float32 round-trips exactly


def encode_vector(vector: VectorParam, mapping: Any = None) -> str:
    """`(a,b,c)`: numbers in Manticore's FLOAT_CONSTANT / integer syntax (digits, `-`, `.`, `e`), nothing else
    can appear. Three times faster than the driver's generic float escaping, which dominated bulk upserts."""
    return "(" + ",".join(map(_FLOAT32, vector.values.tolist())) + ")"


CONVERSIONS = {**pymysql.converters.conversions, VectorParam: encode_vector}


def parse_vector(value: str | bytes) -> np.ndarray:
    """A float_vector as Manticore returns it (`0.1,0.2,...`) → float32 array."""
    text = value.decode() if isinstance(value, bytes | bytearray) else str(value)
    text = text.strip().strip("()[]")
    if not text:
        return np.zeros(0, dtype=np.float32)
    return np.array([float(x) for x in text.split(",")], dtype=np.float32)


def parse_url(url: str) -> dict[str, Any]:
    """`mysql://[user[:password]@]host[:port][/db]` → pymysql connection arguments."""
    if not url:
        raise BackendError("MANTICORE_URL is not set; point it at Manticore's MySQL port, e.g. mysql://manticore:9306")
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise BackendError(f"MANTICORE_URL is not a valid URL: {exc}") from None
    if parts.scheme != "mysql" or not parts.hostname:
        raise BackendError(f"MANTICORE_URL must look like mysql://host:9306, got {url!r}")
    return {
        "host": parts.hostname,
        "port": port,
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else "",
        "database": unquote(parts.path.lstrip("/")) or None,
    }


_SIGN = 1 << 63


def float_key(value: float) -> int:
    """A float64 as a signed 64-bit integer of the same order (exact both ways, see `key_float`): the IEEE 754
    bits of a positive number, the negated magnitude bits of a negative one (-0.0 becomes 0.0)."""
    bits = struct.unpack("<Q", struct.pack("<d", float(value)))[0]
    return -(bits & ~_SIGN) if bits & _SIGN else bits


def key_float(key: int) -> float:
    """The float64 that `float_key` encoded."""
    bits = -key | _SIGN if key < 0 else key
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


def label_key(name: str) -> int:
    """The multi64 value a collection or tag name is filtered by: 63 bits of a BLAKE2b hash of its UTF-8."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "big") & _ID_MASK


def _after_prefix(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix` (in code point order, which is UTF-8
    byte order): its last character that can be, incremented. None when there is none (all U+10FFFF)."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates are no characters (and cannot be UTF-8 encoded)
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


def _conditions(where: SearchFilter | None) -> tuple[list[str], list[Any]]:
    """`where` as Manticore conditions to AND together, and their values (one `%s` each, in order).

    The fragments are constants of this function; `SearchFilter.matches` is the meaning they translate.
    """
    conditions: list[str] = []
    values: list[Any] = []

    def add(condition: str, *params: Any) -> None:
        conditions.append(condition)
        values.extend(params)

    if where is None:
        return conditions, values
    if where.captured_from is not None or where.captured_to is not None:
        add("has_captured_at = 1")  # an image without a capture time matches no capture range
    if where.captured_from is not None:
        add("captured_at >= %s", epoch_micros(where.captured_from))
    if where.captured_to is not None:
        add("captured_at <= %s", epoch_micros(where.captured_to))
    if where.ingested_from is not None:
        add("created_at >= %s", epoch_micros(where.ingested_from))
    if where.ingested_to is not None:
        add("created_at <= %s", epoch_micros(where.ingested_to))
    if where.formats:
        add("format IN %s", tuple(where.formats))
    if where.min_width > 0:
        add("width >= %s", int(where.min_width))
    if where.min_height > 0:
        add("height >= %s", int(where.min_height))
    if where.cameras:
        add("(camera_make IN %s OR camera_model IN %s)", tuple(where.cameras), tuple(where.cameras))
    if where.has_gps is not None:
        add("has_gps = %s", int(where.has_gps))
    if where.bbox is not None:
        box = where.bbox
        add("has_gps = 1")
        add("latitude_key >= %s", float_key(box.south))
        add("latitude_key <= %s", float_key(box.north))
        add("longitude_key >= %s", float_key(box.west))
        add("longitude_key <= %s", float_key(box.east))
    if where.collections:
        add("ANY(collection_keys) IN %s", tuple(label_key(name) for name in where.collections))
    for tag in dict.fromkeys(where.tags_all):
        add("ANY(tag_keys) = %s", label_key(tag))  # one condition per tag: all of them
    if where.tags_any:
        add("ANY(tag_keys) IN %s", tuple(label_key(name) for name in where.tags_any))
    if where.path_prefix:
        add("path >= %s", where.path_prefix)
        upper = _after_prefix(where.path_prefix)
        if upper is not None:
            add("path < %s", upper)
    return conditions, values


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _names(value: Any) -> tuple[str, ...]:
    """Collection or tag names from their JSON array ('' in rows from before the column existed)."""
    text = _text(value) if value is not None else ""
    return tuple(json.loads(text)) if text else ()


def _names_json(names: Sequence[str]) -> str:
    return json.dumps([str(name) for name in names], ensure_ascii=False)


def _record(row: Sequence[Any]) -> ImageRecord:
    """An ImageRecord from the `_RECORD_COLUMNS` part of a row."""
    (img_id, filename, size_bytes, fmt, width, height, model, created_at, captured_at, has_captured_at,
     camera_make, camera_model, has_gps, latitude_key, longitude_key, orientation, path, collections, tags) = row
    gps = bool(int(has_gps))
    return ImageRecord(
        id=_text(img_id), filename=_text(filename), size_bytes=int(size_bytes), format=_text(fmt),
        width=int(width), height=int(height), model=_text(model),
        created_at=from_epoch_micros(created_at),
        captured_at=from_epoch_micros(captured_at) if int(has_captured_at) else None,
        camera_make=_text(camera_make), camera_model=_text(camera_model),
        latitude=key_float(int(latitude_key)) if gps else None,
        longitude=key_float(int(longitude_key)) if gps else None,
        orientation=int(orientation) or 1, path=_text(path), collections=_names(collections), tags=_names(tags),
    )


def _row_values(did: int, vector: Any, rec: ImageRecord) -> list[Any]:
    """The values of one row in `_WRITE_COLUMNS` order."""
    latitude, longitude = rec.latitude, rec.longitude
    gps = latitude is not None and longitude is not None
    return [
        did, vector_param(vector), rec.id, str(rec.filename), int(rec.size_bytes), str(rec.format), int(rec.width),
        int(rec.height), str(rec.model), epoch_micros(rec.created_at),
        epoch_micros(rec.captured_at) if rec.captured_at is not None else 0, int(rec.captured_at is not None),
        str(rec.camera_make), str(rec.camera_model), int(gps),
        float_key(latitude) if latitude is not None and gps else 0,
        float_key(longitude) if longitude is not None and gps else 0,
        int(rec.orientation), str(rec.path), _names_json(rec.collections), _names_json(rec.tags),
        tuple(label_key(name) for name in rec.collections), tuple(label_key(name) for name in rec.tags),
    ]


def _sql_bytes(values: Sequence[Any]) -> int:
    """At most how many bytes these values take in a statement: a string doubles if every byte is escaped."""
    size = 0
    for value in values:
        if isinstance(value, VectorParam):
            size += value.values.size * _FLOAT_BYTES + 2
        elif isinstance(value, str):
            size += 2 * len(value.encode("utf-8")) + 4
        elif isinstance(value, tuple):
            size += _NUMBER_BYTES * len(value) + 4
        else:
            size += _NUMBER_BYTES
    return size


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _by_size(rows: list[list[Any]], limit: int) -> Iterator[list[list[Any]]]:
    """Consecutive runs of rows whose values take at most `limit` bytes of SQL together (`_sql_bytes`); a row
    is never split, so one that is larger on its own goes alone."""
    run: list[list[Any]] = []
    size = 0
    for row in rows:
        row_size = _sql_bytes(row) + 4
        if run and size + row_size > limit:
            yield run
            run, size = [], 0
        run.append(row)
        size += row_size
    if run:
        yield run


class _Pool:
    """The idle connections a backend and its views (`for_index`) share."""

    __slots__ = ("idle", "lock")

    def __init__(self) -> None:
        self.idle: list[pymysql.connections.Connection] = []
        self.lock = threading.Lock()


def _check_identifier(*names: str) -> None:
    for ident in names:
        if not _IDENTIFIER.fullmatch(ident):
            raise ValueError(f"table names are lower-case letters, digits and _ (at most 128): {ident!r}")


class ManticoreBackend:
    """Bound to one table (`index`, the `table` it was built with) and its meta table. `for_index` gives views
    on other tables of the same server, sharing the connections; the catalogue is the table
    `<table>_catalog` of the object the views came from."""

    name = "manticore"

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, user: str | None = None,
                 password: str = "", database: str | None = None, table: str = "proxima_images",
                 meta_table: str | None = None, ef_search: int = 64, hnsw_m: int = 16,
                 hnsw_ef_construction: int = 100, quantization: str = "", oversampling: float = 3.0,
                 early_termination: bool = False, exact_search_rows: int = 10_000, batch_rows: int = 500,
                 pool_size: int = 4,
                 connect_timeout: float = 5.0, read_timeout: float | None = 120.0) -> None:
        """Nothing connects here: connections are opened on first use.

        `meta_table` defaults to `proxima_meta` beside the default table, else to `<table>_meta`.
        `quantization` ("", "8bit", "1bit") applies when the table is created; a quantized table is searched
        for `oversampling` × k candidates that are then re-scored with the full vectors, so scores stay exact.
        A filtered search matching at most `exact_search_rows` images compares the query with each of them
        (exact); one matching more walks the HNSW graph with the filter inside the walk.
        """
        if quantization.lower() not in QUANTIZATIONS:
            raise ValueError(f"quantization is one of {sorted(QUANTIZATIONS)}, got {quantization!r}")
        if meta_table is None:
            meta_table = "proxima_meta" if table == "proxima_images" else f"{table}_meta"
        catalog_table = f"{table}_catalog"
        _check_identifier(table, meta_table, catalog_table)
        if len({table, meta_table, catalog_table}) < 3:
            raise ValueError("table, meta_table and the catalogue table (<table>_catalog) must differ")
        self.host, self.port = host, int(port)
        self.user, self.password, self.database = user, password, database
        self.table, self.meta_table = table, meta_table
        # The root object's table and meta table, and its catalogue: views keep them (for_index).
        self._root_tables = (table, meta_table)
        self.catalog_table = catalog_table
        self._is_view = False
        self.ef_search = int(ef_search)
        self.hnsw_m = int(hnsw_m)
        self.hnsw_ef_construction = int(hnsw_ef_construction)
        self.quantization = quantization.lower()
        self.oversampling = float(oversampling)
        self.early_termination = bool(early_termination)
        self.exact_search_rows = int(exact_search_rows)
        self._table_quantized: bool | None = None  # read from the table's DDL by ensure_schema
        self.batch_rows = max(1, int(batch_rows))
        self.pool_size = int(pool_size)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._pool = _Pool()
        self._connector = self  # whose _connect opens connections (the root object's, for views)

    @property
    def index(self) -> str:
        """The table this object reads and writes."""
        return self.table

    @property
    def _idle(self) -> list[pymysql.connections.Connection]:
        return self._pool.idle

    @property
    def _lock(self) -> threading.Lock:
        return self._pool.lock

    def for_index(self, index: str) -> ManticoreBackend:
        """A view bound to table `index` (meta table `<index>_meta`; the root's own table keeps its meta
        table), with the same connections, settings and catalogue. Its close() releases nothing."""
        root_table, root_meta = self._root_tables
        meta = root_meta if index == root_table else f"{index}_meta"
        _check_identifier(index, meta)
        if index != root_table and {index, meta} & {root_table, root_meta, self.catalog_table}:
            raise ValueError(f"{index!r} would share a table with {root_table!r}, its meta table or catalogue")
        view = copy.copy(self)
        view.table, view.meta_table = index, meta
        view._table_quantized = None
        view._is_view = True
        return view

    @classmethod
    def from_url(cls, url: str, **options: Any) -> ManticoreBackend:
        return cls(**parse_url(url), **options)

    @classmethod
    def from_settings(cls, settings: Settings) -> ManticoreBackend:
        return cls.from_url(settings.manticore_url, table=settings.manticore_table,
                            ef_search=settings.manticore_ef_search, hnsw_m=settings.manticore_hnsw_m,
                            hnsw_ef_construction=settings.manticore_hnsw_ef_construction,
                            quantization=settings.manticore_quantization,
                            oversampling=settings.manticore_oversampling,
                            early_termination=settings.manticore_early_termination)

    # --- connection handling -------------------------------------------------------------------
    # pymysql connections are not thread-safe: each call borrows one from a small idle list and gives it
    # back, so threads never share a connection. A connection that saw a driver error is closed, and an
    # idle one is pinged before reuse, so the call after a lost connection reconnects.

    def _connect(self) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, database=self.database,
            charset="utf8mb4", connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
            write_timeout=self.read_timeout,
            autocommit=True,  # pymysql's default (0) would leave writes in an uncommitted Manticore transaction
            conv=CONVERSIONS, init_command=_SESSION_SETUP,
        )

    def _checkout(self) -> pymysql.connections.Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connector._connect()
            try:
                conn.ping(reconnect=False)
                return conn
            except Exception:  # stale (server restarted, idle timeout): drop it and try the next
                _close_quietly(conn)

    def _checkin(self, conn: pymysql.connections.Connection) -> None:
        with self._lock:
            if len(self._idle) < self.pool_size:
                self._idle.append(conn)
                return
        _close_quietly(conn)

    @contextmanager
    def _cursor(self) -> Iterator[pymysql.cursors.Cursor]:
        with _translate_errors():
            conn = self._checkout()
            try:
                with conn.cursor() as cur:
                    yield cur
            except BaseException as exc:
                if isinstance(exc, pymysql.err.Error) or not isinstance(exc, Exception):
                    _close_quietly(conn)
                else:  # our own errors (SchemaMismatch, ValueError) leave the connection clean
                    self._checkin(conn)
                raise
            self._checkin(conn)

    def close(self) -> None:
        """Close the idle connections (the root object; a view's close releases nothing)."""
        if self._is_view:
            return
        with self._lock:
            idle = self._idle[:]
            self._idle.clear()
        for conn in idle:
            _close_quietly(conn)

    def _sql(self, template: str, **fragments: str) -> str:
        """A statement with identifiers and this module's constant fragments put in; values stay `%s`.

        `{table}`, `{meta}` and `{catalog}` are the table names, checked against `_IDENTIFIER` in __init__
        and for_index, and
        `{record}` is the metadata column list; callers pass only fragments built in this module from its
        constants and ints (column lists, `_conditions` fragments, knn options).
        """
        parts = {"table": self.table, "meta": self.meta_table, "catalog": self.catalog_table,
                 "record": _RECORD_COLUMNS, **fragments}
        for key, text in parts.items():
            template = template.replace("{" + key + "}", text)
        return template

    # --- schema --------------------------------------------------------------------------------

    def _create_table_sql(self, dim: int) -> str:
        # Follows Searching/KNN.md ("Configuring a table for KNN search") and Creating_a_table/Data_types.md
        # (float_vector options, `string attribute`, bigint, int, bool, multi64). Manticore's DDL takes these
        # options only as quoted strings; the numbers are ints from the model config and our settings, never
        # client input. The columns are this module's constants.
        return self._sql(
            "CREATE TABLE IF NOT EXISTS {table} ("
            "img_id string attribute, "
            "embedding float_vector knn_type='hnsw' knn_dims='{dims}' hnsw_similarity='COSINE' "
            "hnsw_m='{m}' hnsw_ef_construction='{efc}'{quantization}, {columns})",
            dims=str(int(dim)), m=str(int(self.hnsw_m)), efc=str(int(self.hnsw_ef_construction)),
            quantization=f" quantization='{self.quantization}'" if self.quantization else "",
            columns=", ".join(f"{name} {kind}" for name, kind in (*_FIRST_RELEASE_COLUMNS[1:], *_ADDED_COLUMNS)),
        )

    def ensure_schema(self, model: ModelInfo) -> None:
        with self._cursor() as cur:
            # CREATE ... IF NOT EXISTS first, then read back what is there: if two processes race with
            # different models, the loser still sees the winner's dimension.
            cur.execute(self._create_table_sql(model.dim))
            stored_dim, columns = self._stored_schema(cur)
            if stored_dim != model.dim:
                raise SchemaMismatch(
                    f"the Manticore index holds {stored_dim}-dimensional vectors but model {model.label()} "
                    f"produces {model.dim}; use the model the index was built with, or re-index into a "
                    f"fresh table (drop table {self.table} and {self.meta_table})"
                )
            self._add_missing_columns(cur, columns)
            # Creating_a_table/Data_types.md: a string attribute for the JSON of the model identity.
            cur.execute(self._sql(
                "CREATE TABLE IF NOT EXISTS {meta} (key_name string attribute, value string attribute)"
            ))
            cur.execute(self._sql("SELECT value FROM {meta} WHERE id = %s"), (_MODEL_ROW,))
            row = cur.fetchone()
            check_model(ModelInfo.from_json(_text(row[0])) if row else None, model,
                        index=f"the Manticore table {self.table}")
            if row is None:
                # Updating_documents/REPLACE.md
                cur.execute(self._sql("REPLACE INTO {meta} (id, key_name, value) VALUES (%s, %s, %s)"),
                            (_MODEL_ROW, "model", model.to_json()))

    def _stored_schema(self, cur: pymysql.cursors.Cursor) -> tuple[int, set[str]]:
        """knn_dims of the `embedding` column and the names of all columns, from SHOW CREATE TABLE
        (Listing_tables.md: one column a line)."""
        cur.execute(self._sql("SHOW CREATE TABLE {table}"))
        row = cur.fetchone()
        ddl = _text(row[1]) if row and len(row) > 1 else ""
        columns = {m.group(1).lower() for m in re.finditer(r"^\s*`?(\w+)`?\s+\w", ddl, re.MULTILINE)}
        column = re.search(r"`?\bembedding`?\s+float_vector\b([^,\n)]*)", ddl, re.IGNORECASE)
        dims = re.search(r"knn_dims\s*=\s*'(\d+)'", column.group(1), re.IGNORECASE) if column else None
        if column is None or dims is None:
            raise SchemaMismatch(f"Manticore table {self.table} exists but has no KNN float_vector column "
                                 f"`embedding`; it was not created by Proxima")
        quantized = re.search(r"quantization\s*=\s*'(\w+)'", column.group(1), re.IGNORECASE)
        self._table_quantized = bool(quantized)
        similarity = re.search(r"hnsw_similarity\s*=\s*'(\w+)'", column.group(1), re.IGNORECASE)
        if similarity and similarity.group(1).lower() != "cosine":
            raise SchemaMismatch(f"Manticore table {self.table} uses hnsw_similarity={similarity.group(1)}, "
                                 "Proxima needs COSINE; re-index into a fresh table")
        return int(dims.group(1)), columns

    def _add_missing_columns(self, cur: pymysql.cursors.Cursor, columns: set[str]) -> None:
        """Give a table of an earlier release the metadata attributes added since, one ALTER each
        (Updating_table_schema_and_settings.md: one column per statement in RT tables; existing rows read 0,
        '' or no values). Each ALTER is complete or not done, so an interrupted upgrade finishes next time;
        a column another process added meanwhile is no error."""
        missing = [(name, kind) for name, kind in _ADDED_COLUMNS if name not in columns]
        for name, kind in missing:
            log.info("Manticore table %s: adding column %s %s", self.table, name, kind)
            try:
                cur.execute(self._sql("ALTER TABLE {table} ADD COLUMN {column}", column=f"{name} {kind}"))
            except pymysql.err.Error:
                if name not in self._stored_schema(cur)[1]:
                    raise

    def _exists(self, cur: pymysql.cursors.Cursor, table: str | None = None) -> bool:
        """Whether `table` (default: the bound one) exists."""
        table = self.table if table is None else table
        # Listing_tables.md: SHOW TABLES LIKE takes a pattern, where _ is a wildcard, so compare exactly.
        cur.execute("SHOW TABLES LIKE %s", (table,))
        return any(_text(row[0]) == table for row in cur.fetchall())

    # --- indexes and catalogue -----------------------------------------------------------------

    def stored_model(self) -> ModelInfo | None:
        with self._cursor() as cur:
            if not self._exists(cur) or not self._exists(cur, self.meta_table):
                return None
            cur.execute(self._sql("SELECT value FROM {meta} WHERE id = %s"), (_MODEL_ROW,))
            row = cur.fetchone()
        return ModelInfo.from_json(_text(row[0])) if row else None

    def drop(self) -> None:
        """Drop the bound table and its meta table (the catalogue stays as it is)."""
        with self._cursor() as cur:
            cur.execute(self._sql("DROP TABLE IF EXISTS {table}"))
            cur.execute(self._sql("DROP TABLE IF EXISTS {meta}"))

    def read_catalog(self) -> dict[str, str]:
        with self._cursor() as cur:
            return self._read_catalog(cur)

    def _read_catalog(self, cur: pymysql.cursors.Cursor) -> dict[str, str]:
        if not self._exists(cur, self.catalog_table):
            return {}
        cur.execute(self._sql("SELECT key_name, value FROM {catalog} LIMIT %s OPTION max_matches=%s"),
                    (_CATALOG_ROWS, _CATALOG_ROWS))
        return {_text(key): _text(value) for key, value in cur.fetchall()}

    def write_catalog(self, key: str, value: str | None) -> None:
        """One REPLACE (or DELETE) of the key's document: atomic for that key (Updating_documents/REPLACE.md).
        Keys and values are any text but NUL, which Manticore reads back as a space (`\\0` in its SQL lexer;
        JSON writes it as an escape)."""
        if "\x00" in key or (value is not None and "\x00" in value):
            raise ValueError("catalogue keys and values cannot hold NUL characters")
        with self._cursor() as cur:
            if value is None:
                if self._exists(cur, self.catalog_table):
                    cur.execute(self._sql("DELETE FROM {catalog} WHERE id = %s"), (catalog_id(key),))
                return
            cur.execute(self._sql(
                "CREATE TABLE IF NOT EXISTS {catalog} (key_name string attribute, value string attribute)"
            ))
            cur.execute(self._sql("REPLACE INTO {catalog} (id, key_name, value) VALUES (%s, %s, %s)"),
                        (catalog_id(key), str(key), str(value)))

    # --- data ----------------------------------------------------------------------------------

    def _stored_labels(self, cur: pymysql.cursors.Cursor,
                       doc_ids: Sequence[int]) -> dict[int, tuple[str, tuple[str, ...], tuple[str, ...]]]:
        """{document id: (img_id, collections, tags)} of the stored rows among `doc_ids` (at most `batch_rows`)."""
        cur.execute(
            self._sql("SELECT id, img_id, collections, tags FROM {table} WHERE id IN %s LIMIT %s "
                      "OPTION max_matches=%s"),
            (tuple(int(d) for d in doc_ids), len(doc_ids), len(doc_ids)),
        )
        return {int(row[0]): (_text(row[1]), _names(row[2]), _names(row[3])) for row in cur.fetchall()}

    def upsert(self, records: Sequence[ImageRecord], vectors: np.ndarray) -> None:
        if len(records) != len(vectors):
            raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
        latest = {rec.id: i for i, rec in enumerate(records)}  # the same id twice: the last one wins
        owners: dict[int, str] = {}
        rows: list[tuple[int, int]] = []  # (document id, index into records)
        for image_id, i in latest.items():
            did = doc_id(image_id)
            if owners.setdefault(did, image_id) != image_id:
                raise BackendError(f"image ids {owners[did]} and {image_id} collide on Manticore document id {did}")
            rows.append((did, i))
        for chunk in _chunks(rows, self.batch_rows):
            with self._cursor() as cur:
                # Read what the chunk's document ids hold: another image there is a collision, and the
                # labels stored for this image are kept (merge_labels).
                stored = self._stored_labels(cur, [did for did, _ in chunk])
                values: list[list[Any]] = []
                for did, i in chunk:
                    rec = records[i]
                    if did in stored:
                        stored_id, collections, tags = stored[did]
                        if stored_id != rec.id:
                            raise BackendError(f"image id {rec.id} collides with stored image {stored_id} "
                                               f"on Manticore document id {did}; refusing to overwrite it")
                        rec = merge_labels(rec, rec.with_labels(collections, tags))
                    values.append(_row_values(did, vectors[i], rec))
                # Updating_documents/REPLACE.md ("Bulk replace"): one multi-row statement, one transaction;
                # REPLACE makes a re-upsert of the same id replace the row.
                for statement in _by_size(values, MAX_STATEMENT_BYTES):
                    cur.execute(
                        self._sql("REPLACE INTO {table} ({columns}) VALUES {rows}", columns=_WRITE_COLUMNS,
                                  rows=", ".join([_ROW_PLACEHOLDERS] * len(statement))),
                        [value for row in statement for value in row],
                    )

    def set_labels(self, labels: dict[str, tuple[Sequence[str], Sequence[str]]]) -> int:
        """Replace the collections and tags of the stored images among `labels`' ids, in place: an UPDATE of
        the row-wise attributes (Updating_documents/UPDATE.md) leaves the vector and the HNSW graph alone."""
        found = self._rows_by_id(list(labels), "")
        with self._cursor() as cur:
            for image_id, row in found:
                collections, tags = (tuple(str(name) for name in names) for names in labels[image_id])
                cur.execute(
                    self._sql("UPDATE {table} SET collections = %s, tags = %s, collection_keys = %s, "
                              "tag_keys = %s WHERE id = %s"),
                    (_names_json(collections), _names_json(tags), tuple(label_key(name) for name in collections),
                     tuple(label_key(name) for name in tags), int(row[0])),
                )
        return len(found)

    def search(self, vector: np.ndarray, k: int, *, exclude: Sequence[str] = (),
               where: SearchFilter | None = None) -> list[Hit]:
        k = int(k)
        if k <= 0:
            return []
        query = vector_param(vector)
        skip = set(exclude)
        limit = k + len(skip)  # over-fetch, then leave the excluded ids out here
        conditions, condition_values = _conditions(where)
        # Searching/KNN.md: knn(field, k, (vector), {options}) with knn_dist(); ef >= limit, and
        # early_termination off unless asked for (it stops the graph walk once results stop improving).
        # A quantized table is searched for oversampling × k candidates re-scored with the full vectors.
        # LIMIT/max_matches: Manticore returns 20 rows by default, and a disk chunk may add up to k more.
        ef = max(self.ef_search, limit)
        options = ["ef=%s", "early_termination=%s"]
        if self._quantized():
            options += ["rescore=1", "oversampling=%s"]
        with self._cursor() as cur:
            if conditions:
                # Filters are ANDed beside knn(). Counted first (an exact COUNT over the attributes, a
                # millisecond on 20k rows): none match -> no search; up to exact_search_rows -> `fullscan=1`,
                # exact distances to the matching rows only; more -> the HNSW walk with the filter inside it
                # (`prefilter=1`, ACORN-1), with ef raised to 2·limit / share of matching rows.
                matching = self._count(cur, conditions, condition_values)
                if matching == 0:
                    return []
                if matching <= self.exact_search_rows:
                    options.append("fullscan=1")
                else:
                    total = max(matching, self._count(cur, [], []))
                    ef = min(max(ef, math.ceil(2 * limit * total / matching)), _MAX_FILTERED_EF)
                    options.append("prefilter=1")
            values: list[Any] = [ef, int(self.early_termination)]
            if self._quantized():
                values.append(self.oversampling)
            cur.execute(
                self._sql(
                    "SELECT id, {record}, knn_dist() FROM {table} "
                    "WHERE knn(embedding, %s, %s, {options}){conditions} LIMIT %s OPTION max_matches=%s",
                    options="{" + ", ".join(options) + "}", conditions="".join(" AND " + c for c in conditions),
                ),
                (limit, query, *values, *condition_values, limit, limit),
            )
            rows = cur.fetchall()
        hits = [Hit(record=_record(row[1:_N_RECORD + 1]), score=1.0 - float(row[_N_RECORD + 1])) for row in rows]
        hits = [h for h in hits if h.id not in skip]
        hits.sort(key=lambda h: h.score, reverse=True)  # stable: keeps Manticore's order on ties
        return hits[:k]

    def neighbours(self, ids: Sequence[str], vectors: np.ndarray, k: int) -> Neighbours:
        """One KNN query per row on one connection, reading only each hit's image id and distance."""
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
        k = int(k)
        if k <= 0:
            return [[] for _ in ids]
        limit = k + 1  # the query's own row among them
        options = ["ef=%s", "early_termination=%s"]
        values: list[Any] = [max(self.ef_search, limit), int(self.early_termination)]
        if self._quantized():
            options += ["rescore=1", "oversampling=%s"]
            values.append(self.oversampling)
        statement = self._sql("SELECT img_id, knn_dist() FROM {table} WHERE knn(embedding, %s, %s, {options}) "
                              "LIMIT %s OPTION max_matches=%s", options="{" + ", ".join(options) + "}")
        found: Neighbours = []
        with self._cursor() as cur:
            for own, vector in zip(ids, vectors, strict=True):
                cur.execute(statement, (limit, vector_param(vector), *values, limit, limit))
                hits = [(_text(row[0]), 1.0 - float(row[1])) for row in cur.fetchall()]
                hits = [hit for hit in hits if hit[0] != own]
                hits.sort(key=lambda hit: hit[1], reverse=True)  # stable: Manticore's order on ties
                found.append(hits[:k])
        return found

    def _quantized(self) -> bool:
        """Whether the table stores quantized vectors (its DDL decides, once ensure_schema has read it)."""
        return bool(self.quantization) if self._table_quantized is None else self._table_quantized

    def _rows_by_id(self, ids: Sequence[str], columns: str) -> list[tuple[str, tuple]]:
        """(image id, row) for the requested ids that are stored; rows are `id, img_id, <columns>`.

        A row whose img_id is not one of the requested ids holds another image on the same document id
        (a hash collision): it is left out.
        """
        wanted = {i for i in ids if isinstance(i, str) and _IMAGE_ID.fullmatch(i)}  # others cannot be stored
        doc_ids = sorted({doc_id(i) for i in wanted})
        found: list[tuple[str, tuple]] = []
        if not doc_ids:
            return found
        with self._cursor() as cur:
            for chunk in _chunks(doc_ids, self.batch_rows):
                cur.execute(
                    self._sql("SELECT id, img_id{columns} FROM {table} WHERE id IN %s LIMIT %s OPTION max_matches=%s",
                              columns=columns),
                    (tuple(chunk), len(chunk), len(chunk)),
                )
                for row in cur.fetchall():
                    image_id = _text(row[1])
                    if image_id in wanted and doc_id(image_id) == int(row[0]):
                        found.append((image_id, row))
                    else:
                        log.warning("Manticore document %s holds image %s, not a requested one", row[0], image_id)
        return found

    def get(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        columns = ", " + _RECORD_COLUMNS.removeprefix("img_id, ")
        return {image_id: _record(row[1:_N_RECORD + 1]) for image_id, row in self._rows_by_id(ids, columns)}

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return {image_id: parse_vector(row[2]) for image_id, row in self._rows_by_id(ids, ", embedding")}

    def delete(self, ids: Sequence[str]) -> int:
        doc_ids = [int(row[0]) for _, row in self._rows_by_id(ids, "")]
        if not doc_ids:
            return 0
        with self._cursor() as cur:
            for chunk in _chunks(doc_ids, self.batch_rows):
                # Deleting_documents.md: `id IN (...)` deletes without a search
                cur.execute(self._sql("DELETE FROM {table} WHERE id IN %s"), (tuple(chunk),))
        return len(doc_ids)

    def count(self, where: SearchFilter | None = None) -> int:
        conditions, values = _conditions(where)
        with self._cursor() as cur:
            if not self._exists(cur):
                return 0
            return self._count(cur, conditions, values)

    def _count(self, cur: pymysql.cursors.Cursor, conditions: list[str], values: list[Any]) -> int:
        """Rows matching `_conditions` output (all rows without conditions)."""
        if conditions:
            cur.execute(self._sql("SELECT COUNT(*) FROM {table} WHERE {conditions}",
                                  conditions=" AND ".join(conditions)), values)
        else:
            cur.execute(self._sql("SELECT COUNT(*) FROM {table}"))
        row = cur.fetchone()
        return int(row[0]) if row else 0

    def scan(self, batch_size: int = 1000) -> Iterator[tuple[list[ImageRecord], np.ndarray]]:
        """Every record with its vector, in batches ordered by Manticore document id (a hash of the image id).

        Keyset pagination (`id > last`), so each batch is one cheap query however deep the scan goes.
        """
        batch_size = max(1, int(batch_size))
        after = 0
        while True:
            with self._cursor() as cur:
                if after == 0 and not self._exists(cur):
                    return
                cur.execute(
                    self._sql("SELECT id, {record}, embedding FROM {table} WHERE id > %s ORDER BY id ASC "
                              "LIMIT %s OPTION max_matches=%s"),
                    (after, batch_size, batch_size),
                )
                rows = cur.fetchall()
            if not rows:
                return
            yield ([_record(row[1:_N_RECORD + 1]) for row in rows],
                   np.stack([parse_vector(row[_N_RECORD + 1]) for row in rows]))
            after = int(rows[-1][0])

    def optimize(self, chunks: int = 1) -> None:
        """Write the RAM chunk to disk and merge the disk chunks into at most `chunks`, waiting until done.

        A KNN search visits every chunk's HNSW graph, so after a bulk load one merged chunk answers fastest;
        searchd's own auto_optimize keeps the count near twice the CPU cores otherwise. The merge rebuilds
        the graph: minutes for a million vectors (Securing_and_compacting_a_table/Compacting_a_table.md).
        """
        with self._cursor() as cur:
            if not self._exists(cur):
                return
            cur.execute(self._sql("FLUSH RAMCHUNK {table}"))
            cur.execute(self._sql("OPTIMIZE TABLE {table} OPTION sync=1, cutoff=%s"), (max(1, int(chunks)),))

    def table_status(self) -> dict[str, str]:
        """SHOW TABLE … STATUS as a dict (disk_chunks, ram_bytes, optimizing, …); empty without the table."""
        with self._cursor() as cur:
            if not self._exists(cur):
                return {}
            cur.execute(self._sql("SHOW TABLE {table} STATUS"))
            return {_text(row[0]): _text(row[1]) for row in cur.fetchall()}

    def drop_tables(self) -> None:
        """Drop every table of this database (tests and re-indexing): the index tables the catalogue lists with
        their meta tables, the catalogue, then the bound table and its meta table."""
        with self._cursor() as cur:
            for index in self._catalog_indexes(self._read_catalog(cur)):
                if index not in (self.table, self._root_tables[0]):
                    view = self.for_index(index)
                    cur.execute(view._sql("DROP TABLE IF EXISTS {table}"))
                    cur.execute(view._sql("DROP TABLE IF EXISTS {meta}"))
            cur.execute(self._sql("DROP TABLE IF EXISTS {catalog}"))
            if self.table != self._root_tables[0]:
                cur.execute(self._sql("DROP TABLE IF EXISTS {table}", table=self._root_tables[0]))
                cur.execute(self._sql("DROP TABLE IF EXISTS {meta}", meta=self._root_tables[1]))
            cur.execute(self._sql("DROP TABLE IF EXISTS {table}"))
            cur.execute(self._sql("DROP TABLE IF EXISTS {meta}"))

    @staticmethod
    def _catalog_indexes(catalog: dict[str, str]) -> list[str]:
        """The index tables named by the catalogue's `model:` entries (valid names only)."""
        indexes: list[str] = []
        for key, value in catalog.items():
            if not key.startswith("model:"):
                continue
            try:
                index = json.loads(value).get("index")
            except (ValueError, AttributeError):
                log.warning("catalogue entry %s is not a JSON object; its index is left alone", key)
                continue
            if isinstance(index, str) and _IDENTIFIER.fullmatch(index) and _IDENTIFIER.fullmatch(f"{index}_meta"):
                indexes.append(index)
        return indexes


def _translate_errors():
    return translate_errors("Manticore", unavailable=(pymysql.err.OperationalError, pymysql.err.InterfaceError),
                            failed=(pymysql.err.Error,))


def _close_quietly(conn: pymysql.connections.Connection) -> None:
    with suppress(Exception):  # already closed or the socket is gone: nothing left to release
        conn.close()
