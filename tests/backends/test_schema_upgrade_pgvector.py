"""A pgvector table made by the first release (no metadata columns) gains them at start-up, keeps its
vectors (nothing is re-embedded) and answers filtered searches."""

from __future__ import annotations

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from shared.backends.pgvector import PgVectorBackend
from shared.filters import SearchFilter
from shared.types import ModelInfo
from tests.backends.data import clustered, records

DIM = 64
MODEL = ModelInfo("test-model", "random", DIM)

# The previous release's schema, as its ensure_schema created it.
PREVIOUS_SCHEMA = [
    "CREATE TABLE proxima_meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE proxima_images ( id text PRIMARY KEY, embedding vector(64) NOT NULL, filename text NOT NULL,"
    " size_bytes bigint NOT NULL, format text NOT NULL, width integer NOT NULL, height integer NOT NULL,"
    " model text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    "ALTER TABLE proxima_images ALTER COLUMN embedding SET STORAGE PLAIN",
    "CREATE INDEX proxima_images_embedding_hnsw ON proxima_images USING hnsw "
    "((embedding::halfvec(64)) halfvec_cosine_ops) WITH (m = 16, ef_construction = 96)",
]


def test_a_first_release_table_gains_the_metadata_columns(fresh_pg_url):
    recs, vectors = records(300), clustered(300, DIM, seed=21)
    with psycopg.connect(fresh_pg_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
        for statement in PREVIOUS_SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO proxima_meta VALUES ('model', %s)", (MODEL.to_json(),))
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO proxima_images VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                            [(r.id, v, r.filename, r.size_bytes, r.format, r.width, r.height, r.model, r.created_at)
                             for r, v in zip(recs, vectors, strict=True)])

    backend = PgVectorBackend(fresh_pg_url)
    try:
        backend.ensure_schema(MODEL)
        backend.ensure_schema(MODEL)  # idempotent once upgraded
        assert backend.count() == 300
        assert backend.get([r.id for r in recs]) == {r.id: r for r in recs}  # new fields empty
        stored = backend.get_vectors([recs[5].id])[recs[5].id]
        assert np.allclose(stored, vectors[5], atol=1e-6)  # the same vector, not re-embedded
        assert backend.search(vectors[5], 1)[0].id == recs[5].id

        backend.set_labels({recs[5].id: (["kept"], ["old"])})
        backend.upsert([recs[6].with_labels(["kept"], [])], vectors[6:7])
        where = SearchFilter(collections=("kept",))
        assert {h.id for h in backend.search(vectors[5], 10, where=where)} == {recs[5].id, recs[6].id}
        assert backend.count(SearchFilter(has_gps=True)) == 0
        assert backend.count(SearchFilter(has_gps=False)) == 300
    finally:
        backend.close()
