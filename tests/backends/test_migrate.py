"""scripts/migrate_backend.py moves every vector across without re-embedding, and resumes safely."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import numpy as np

from scripts.devservices import REPO, child_env
from shared.backends.milvus import MilvusBackend
from shared.backends.pgvector import PgVectorBackend
from shared.types import ModelInfo
from tests.backends.data import clustered, records

MODEL = ModelInfo("test-model", "random", 32)


def run_migrate(env: dict[str, str], *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "scripts/migrate_backend.py", *args], cwd=REPO, capture_output=True, text=True,
        env=child_env(env), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_pgvector_to_milvus_and_resume(fresh_pg_url, milvus_url, tmp_path):
    collection = "mig_" + uuid.uuid4().hex[:8]
    source = PgVectorBackend(fresh_pg_url)
    source.ensure_schema(MODEL)
    vectors = clustered(2500, 32, seed=5)
    recs = records(2500, model="test-model/random")
    source.upsert(recs, vectors)
    dest = MilvusBackend(milvus_url, collection=collection)
    dest.ensure_schema(MODEL)
    dest.upsert(recs[:1000], vectors[:1000])  # as if an earlier run was interrupted after 1,000 rows

    env = {"DATA_DIR": str(tmp_path), "DATABASE_URL": fresh_pg_url, "MILVUS_URI": milvus_url,
           "MILVUS_COLLECTION": collection}
    first = run_migrate(env, "--from", "pgvector", "--to", "milvus", "--batch-size", "700")
    assert (first["copied"], first["already_there"]) == (1500, 1000)
    assert first["source_count"] == first["dest_count"] == 2500
    assert first["ok"] and first["mean_overlap_at_10"] >= 0.9

    again = run_migrate(env, "--from", "pgvector", "--to", "milvus")
    assert (again["copied"], again["already_there"]) == (0, 2500)

    got = dest.get([recs[2000].id])[recs[2000].id]
    assert got == recs[2000]  # metadata came across unchanged
    assert np.allclose(dest.get_vectors([recs[2000].id])[recs[2000].id], vectors[2000], atol=1e-6)
    source.close()
    dest.close()
