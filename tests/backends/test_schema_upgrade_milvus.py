"""A Milvus collection made by the first release (no metadata beyond created_at) gains the new fields at
start-up: copied with its vectors (nothing re-embedded) into a collection of the new schema that takes its
name, also when a crash cut the copy short. Runs on Milvus Lite and on a real Milvus server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from pymilvus import DataType, MilvusClient

import shared.backends.milvus as milvus_module
from shared.backends.milvus import MilvusBackend
from shared.backends.milvus import connect as milvus_connect
from shared.filters import SearchFilter, epoch_micros
from shared.types import ModelInfo
from tests.backends.data import clustered, records

DIM = 64
MODEL = ModelInfo("test-model", "random", DIM)
N = 300


def create_previous_release_collection(client: MilvusClient, name: str) -> None:
    """The previous release's schema, as its ensure_schema created it."""
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=MODEL.to_json())
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("filename", DataType.VARCHAR, max_length=1024)
    schema.add_field("size_bytes", DataType.INT64)
    schema.add_field("format", DataType.VARCHAR, max_length=16)
    schema.add_field("width", DataType.INT32)
    schema.add_field("height", DataType.INT32)
    schema.add_field("model", DataType.VARCHAR, max_length=512)
    schema.add_field("created_at", DataType.INT64)  # microseconds since the epoch, UTC
    index = client.prepare_index_params()
    index.add_index(field_name="embedding", index_type="HNSW", metric_type="COSINE",
                    params={"M": 16, "efConstruction": 128})
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong",
                             properties={"proxima.model": MODEL.to_json()})


@pytest.fixture(params=["milvus_url", "milvus_server_url"])
def old_collection(request) -> Iterator[tuple[str, str, list, np.ndarray]]:
    """(uri, name) of a first-release collection holding N images, and those images with their vectors."""
    uri = request.getfixturevalue(request.param)
    name = "up_" + uuid.uuid4().hex[:12]
    recs, vectors = records(N), clustered(N, DIM, seed=21)
    client = milvus_connect(uri)
    create_previous_release_collection(client, name)
    client.insert(name, [
        {"id": r.id, "embedding": v.tolist(), "filename": r.filename, "size_bytes": r.size_bytes, "format": r.format,
         "width": r.width, "height": r.height, "model": r.model,
         "created_at": epoch_micros(r.created_at)}
        for r, v in zip(recs, vectors, strict=True)])
    yield uri, name, recs, vectors
    for suffix in ("", "__upgrade", "__previous"):
        client.drop_collection(name + suffix)
    client.close()


def check_upgraded(uri: str, name: str, recs: list, vectors: np.ndarray) -> None:
    backend = MilvusBackend(uri, collection=name)
    try:
        backend.ensure_schema(MODEL)
        backend.ensure_schema(MODEL)  # idempotent once upgraded
        client = milvus_connect(uri)
        assert sorted(c for c in client.list_collections() if c.startswith(name)) == [name]  # swapped, old dropped
        client.close()
        assert backend.count() == N
        assert backend.get([r.id for r in recs]) == {r.id: r for r in recs}  # new fields empty
        stored = backend.get_vectors([r.id for r in recs])
        assert all(np.array_equal(stored[r.id], v) for r, v in zip(recs, vectors, strict=True))  # copied exactly
        assert backend.search(vectors[5], 1)[0].id == recs[5].id

        backend.set_labels({recs[5].id: (["kept"], ["old"])})
        backend.upsert([recs[6].with_labels(["kept"], [])], vectors[6:7])
        assert backend.get([recs[5].id])[recs[5].id].collections == ("kept",)
        where = SearchFilter(collections=("kept",))
        assert {h.id for h in backend.search(vectors[5], 10, where=where)} == {recs[5].id, recs[6].id}
        assert backend.count(SearchFilter(has_gps=True)) == 0
        assert backend.count(SearchFilter(has_gps=False)) == N
    finally:
        backend.close()


def test_a_first_release_collection_gains_the_metadata_fields(old_collection):
    check_upgraded(*old_collection)


def crash_during_copy(uri: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start the upgrade and kill it (an exception standing for the crash) after 150 rows were converted."""
    monkeypatch.setattr(milvus_module, "_MAX_BATCH", 100)
    converted = 0
    row = milvus_module._row

    def dying_row(*args, **kwargs):
        nonlocal converted
        converted += 1
        if converted > 150:
            raise SystemExit("crash")
        return row(*args, **kwargs)

    monkeypatch.setattr(milvus_module, "_row", dying_row)
    backend = MilvusBackend(uri, collection=name)
    with pytest.raises(SystemExit):
        backend.ensure_schema(MODEL)
    backend.close()
    monkeypatch.undo()
    client = milvus_connect(uri)
    assert client.has_collection(name + "__upgrade")
    assert 0 < client.query(name + "__upgrade", filter="", output_fields=["count(*)"])[0]["count(*)"] < N
    client.close()


def test_an_upgrade_cut_short_during_the_copy_is_finished_at_the_next_start(old_collection, monkeypatch):
    uri, name, recs, vectors = old_collection
    crash_during_copy(uri, name, monkeypatch)
    check_upgraded(uri, name, recs, vectors)


def test_an_upgrade_cut_short_between_the_renames_is_finished_at_the_next_start(old_collection, monkeypatch):
    uri, name, recs, vectors = old_collection
    crash_during_copy(uri, name, monkeypatch)
    client = milvus_connect(uri)
    client.release_collection(name)
    client.rename_collection(name, name + "__previous")  # the swap's first step, then the crash
    client.close()
    check_upgraded(uri, name, recs, vectors)
