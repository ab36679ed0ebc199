"""The contract of `shared.backends.base.VectorBackend`, checked on every available backend."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime

import numpy as np
import pytest

from shared.backends import SchemaMismatch
from shared.types import ModelInfo
from tests.backends.data import clustered, records

DIM = 64
MODEL = ModelInfo("test-model", "random", DIM)


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(vectors @ query), kind="stable")[:k]


def test_ensure_schema_is_idempotent(backend):
    backend.ensure_schema(MODEL)
    backend.ensure_schema(MODEL)
    assert backend.count() == 0


def test_search_on_empty_collection(backend):
    backend.ensure_schema(MODEL)
    assert backend.search(clustered(1, DIM)[0], 10) == []
    assert backend.get(["0" * 64]) == {}


def test_dimension_mismatch_is_refused(backend_factory):
    backend_factory().ensure_schema(MODEL)
    with pytest.raises(SchemaMismatch, match="64-dimensional.*produces 32"):
        backend_factory().ensure_schema(ModelInfo("other", "random", 32))


@pytest.mark.parametrize("other", [ModelInfo("other-model", "random", DIM), ModelInfo("test-model", "laion2b", DIM)],
                         ids=["another-name", "other-weights"])
def test_another_model_of_the_same_dimension_is_refused(backend_factory, other):
    first = backend_factory()
    first.ensure_schema(MODEL)
    first.upsert(records(3), clustered(3, DIM))
    with pytest.raises(SchemaMismatch, match=r"MODEL_NAME=test-model MODEL_PRETRAINED=random back.*re-embed"):
        backend_factory().ensure_schema(other)
    again = backend_factory()
    again.ensure_schema(MODEL)  # the stored identity was not overwritten by the refused model
    assert again.count() == 3


def test_scan_returns_every_vector_once_in_batches(backend):
    backend.ensure_schema(MODEL)
    assert list(backend.scan(batch_size=100)) == []
    vectors = clustered(2500, DIM, seed=11)
    recs = records(2500)
    backend.upsert(recs, vectors)
    seen: dict[str, np.ndarray] = {}
    for batch_records, batch_vectors in backend.scan(batch_size=1000):
        assert 0 < len(batch_records) <= 1000 and batch_vectors.shape == (len(batch_records), DIM)
        for rec, vec in zip(batch_records, batch_vectors, strict=True):
            assert rec.id not in seen
            seen[rec.id] = vec
    assert set(seen) == {r.id for r in recs}
    by_id = {r.id: i for i, r in enumerate(recs)}
    for image_id, vec in seen.items():
        assert np.allclose(vec @ vectors[by_id[image_id]], 1.0, atol=1e-3)  # the vector stored for that id


def test_bulk_upsert_recall_and_scores(backend):
    backend.ensure_schema(MODEL)
    data = clustered(3050, DIM, seed=1)
    vectors, queries = data[:3000], data[3000:]  # held-out queries from the same distribution
    recs = records(3000)
    for start in range(0, 3000, 1000):
        backend.upsert(recs[start:start + 1000], vectors[start:start + 1000])
    assert backend.count() == 3000
    recall = []
    for q in queries:
        hits = backend.search(q, 10)
        truth = {recs[i].id for i in exact_top(vectors, q, 10)}
        recall.append(len(truth & {h.id for h in hits}) / 10)
        index = {r.id: i for i, r in enumerate(recs)}
        for h in hits:
            assert h.score == pytest.approx(float(vectors[index[h.id]] @ q), abs=1e-3)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert np.mean(recall) >= 0.98


def test_reupsert_replaces_without_duplicates(backend):
    backend.ensure_schema(MODEL)
    vectors = clustered(200, DIM, seed=3)
    backend.upsert(records(200), vectors)
    backend.upsert(records(200), vectors[::-1].copy())  # same ids, new vectors
    assert backend.count() == 200
    hit = backend.search(vectors[-1], 1)[0]
    assert hit.id == records(1)[0].id and hit.score == pytest.approx(1, abs=1e-4)
    dup = records(1)
    backend.upsert(dup + dup, np.stack([vectors[0], vectors[0]]))  # the same id twice in one batch
    assert backend.count() == 200


def test_metadata_round_trip(backend):
    backend.ensure_schema(MODEL)
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rec = records(1)[0]
    rec = type(rec)(**{**vars(rec), "filename": "ñandú 🐦.jpeg", "created_at": created})
    vec = clustered(1, DIM)
    backend.upsert([rec], vec)
    got = backend.get([rec.id])[rec.id]
    assert got == rec
    assert backend.search(vec[0], 1)[0].record == rec
    assert np.allclose(backend.get_vectors([rec.id])[rec.id], vec[0], atol=1e-6)


def test_get_delete_count_and_exclude(backend):
    backend.ensure_schema(MODEL)
    vectors = clustered(20, DIM, seed=4)
    recs = records(20)
    backend.upsert(recs, vectors)
    assert set(backend.get([recs[0].id, recs[1].id, "f" * 64])) == {recs[0].id, recs[1].id}
    hits = backend.search(vectors[0], 5, exclude=[recs[0].id])
    assert len(hits) == 5 and recs[0].id not in {h.id for h in hits}
    assert backend.delete([recs[0].id, "f" * 64]) == 1
    assert backend.count() == 19
    assert backend.get([recs[0].id]) == {}
    assert backend.delete([]) == 0


def _write_range(spec, start: int) -> None:
    from tests.backends.conftest import build

    backend = build(spec)
    vectors = clustered(1500, DIM, seed=start)
    recs = records(1500, start=start)
    for i in range(0, 1500, 250):
        backend.upsert(recs[i:i + 250], vectors[i:i + 250])
    backend.close()


def test_two_processes_write_at_once(backend_factory):
    backend = backend_factory()
    backend.ensure_schema(MODEL)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_range, args=(backend_factory.spec, start)) for start in (0, 1000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert backend.count() == 2500  # the ranges overlap on 1000..1499: still one row per id
