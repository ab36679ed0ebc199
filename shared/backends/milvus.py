"""Milvus backend (pymilvus `MilvusClient`).

`MILVUS_URI` is a server URL (`http://host:19530`, the production path) or a local path, which means
Milvus Lite: fine for development and small collections, but one process per data directory, so
`make up` runs `milvus-lite server` and points every process at it over HTTP.

One collection with an explicit schema: the image id (VARCHAR 64) as primary key, a FLOAT_VECTOR of the
model's dimension, and the metadata fields. HNSW index with the COSINE metric, whose search "distance"
is already the cosine similarity. The model identity is kept as JSON in a collection property (and the
schema description), and a collection holding another model's vectors is refused.

Consistency: collections use `Strong`. The writer (a worker) and the reader (the API) are different
clients, so `Session` would not let a search see a batch another process just finished; `Bounded`
(Milvus' default) may hide it for a moment. Strong costs a little latency per query and makes "job
completed, so its images are searchable" true.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.backends.base import Hit, ImageRecord, check_model, translate_errors
from shared.types import BackendError, ModelInfo, SchemaMismatch

if TYPE_CHECKING:
    from shared.config import Settings

_META_FIELDS = ["filename", "size_bytes", "format", "width", "height", "model", "created_at"]
# Long calls (index builds) otherwise trip gRPC's "too_many_pings" with Milvus Lite.
_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 3_600_000, "grpc.keepalive_permit_without_calls": False}
_MAX_BATCH = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COLLECTION_NOT_LOADED = 101
_MODEL_PROPERTY = "proxima.model"  # collection property holding the model identity (JSON)
_NO_SERVER = 2  # pymilvus: "Fail connecting to server" (what a stopped server gives)


class MilvusBackend:
    name = "milvus"

    def __init__(self, uri: str, *, collection: str = "proxima_images", token: str = "", hnsw_m: int = 16,
                 hnsw_ef_construction: int = 128, ef_search: int = 100, timeout: float = 30.0) -> None:
        if not uri:
            raise BackendError("VECTOR_BACKEND=milvus needs MILVUS_URI (http://host:19530 or a local path)")
        self.uri = uri
        self.collection = collection
        self.ef_search = ef_search
        self._hnsw = {"M": hnsw_m, "efConstruction": hnsw_ef_construction}  # index build parameters
        self._connect_args = {"token": token, "timeout": timeout, "grpc_options": _GRPC_OPTIONS}
        self._client = None
        self._lock = threading.Lock()
        self._collection_seen = False  # once it exists, reads skip the has_collection round trip

    @classmethod
    def from_settings(cls, settings: Settings) -> MilvusBackend:
        uri = settings.milvus_uri or str((settings.data_dir / "milvus" / "proxima.db").resolve())
        return cls(uri, collection=settings.milvus_collection, token=settings.milvus_token,
                   hnsw_m=settings.milvus_hnsw_m, hnsw_ef_construction=settings.milvus_hnsw_ef_construction,
                   ef_search=settings.milvus_ef_search)

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        with _translate_errors():
            with self._lock:
                if self._client is None:
                    from pymilvus import MilvusClient

                    self._client = MilvusClient(self.uri, **self._connect_args)
                client = self._client
            yield client

    def _read(self, op):
        """Run a read; a collection the server released (e.g. after a restart) is loaded and read again."""
        from pymilvus.exceptions import MilvusException

        with self._conn() as client:
            if not self._collection_seen:
                if not client.has_collection(self.collection):
                    return None
                self._collection_seen = True
            try:
                return op(client)
            except MilvusException as exc:
                if exc.code != _COLLECTION_NOT_LOADED:
                    raise
                client.load_collection(self.collection)
                return op(client)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # --- schema --------------------------------------------------------------------------------

    def ensure_schema(self, model: ModelInfo) -> None:
        from pymilvus import DataType, MilvusClient

        with self._conn() as client:
            if client.has_collection(self.collection):
                description = client.describe_collection(self.collection)
                check_model(_stored_model(description), model, index=f"the Milvus collection {self.collection!r}")
                stored = _dim(description)
                if stored != model.dim:
                    raise SchemaMismatch(
                        f"the Milvus collection {self.collection!r} holds {stored}-dimensional vectors but model "
                        f"{model.label()} produces {model.dim}; use the model the index was built with, or "
                        "re-index into a fresh collection"
                    )
                client.load_collection(self.collection)
                return
            schema = MilvusClient.create_schema(
                auto_id=False, enable_dynamic_field=False,
                description=model.to_json(),
            )
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=model.dim)
            schema.add_field("filename", DataType.VARCHAR, max_length=1024)
            schema.add_field("size_bytes", DataType.INT64)
            schema.add_field("format", DataType.VARCHAR, max_length=16)
            schema.add_field("width", DataType.INT32)
            schema.add_field("height", DataType.INT32)
            schema.add_field("model", DataType.VARCHAR, max_length=512)
            schema.add_field("created_at", DataType.INT64)  # microseconds since the epoch, UTC
            index = client.prepare_index_params()
            index.add_index(field_name="embedding", index_type="HNSW", metric_type="COSINE",
                            params=self._hnsw)
            client.create_collection(self.collection, schema=schema, index_params=index,
                                     consistency_level="Strong", properties={_MODEL_PROPERTY: model.to_json()})

    # --- data ----------------------------------------------------------------------------------

    def upsert(self, records: Sequence[ImageRecord], vectors: np.ndarray) -> None:
        if len(records) != len(vectors):
            raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
        rows = {rec.id: _row(rec, vec) for rec, vec in zip(records, np.asarray(vectors, np.float32), strict=True)}
        batch = list(rows.values())  # the same id twice in one call: the last one wins
        with self._conn() as client:
            for start in range(0, len(batch), _MAX_BATCH):
                client.upsert(self.collection, batch[start:start + _MAX_BATCH])

    def search(self, vector: np.ndarray, k: int, *, exclude: Sequence[str] = ()) -> list[Hit]:
        limit = k + len(exclude)
        query = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()
        result = self._read(lambda client: client.search(
            self.collection, data=[query], limit=limit, output_fields=_META_FIELDS,
            search_params={"metric_type": "COSINE", "params": {"ef": max(self.ef_search, limit)}},
        ))
        if not result:
            return []
        skip = set(exclude)
        hits = [Hit(record=_record(r["id"], r["entity"]), score=float(r["distance"]))
                for r in result[0] if r["id"] not in skip]
        return hits[:k]

    def get(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        if not ids:
            return {}
        rows = self._read(lambda client: client.get(self.collection, ids=list(ids), output_fields=_META_FIELDS))
        return {row["id"]: _record(row["id"], row) for row in rows or []}

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not ids:
            return {}
        rows = self._read(lambda client: client.get(self.collection, ids=list(ids), output_fields=["embedding"]))
        return {row["id"]: np.asarray(row["embedding"], dtype=np.float32) for row in rows or []}

    def delete(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        existing = list(self.get(ids))  # Milvus reports the ids it was given, not the ones it removed
        if existing:
            with self._conn() as client:
                client.delete(self.collection, ids=existing)
        return len(existing)

    def count(self) -> int:
        rows = self._read(lambda client: client.query(self.collection, filter="", output_fields=["count(*)"]))
        return int(rows[0]["count(*)"]) if rows else 0

    def scan(self, batch_size: int = 1000) -> Iterator[tuple[list[ImageRecord], np.ndarray]]:
        iterator = self._read(lambda client: client.query_iterator(
            self.collection, batch_size=batch_size, output_fields=[*_META_FIELDS, "embedding"]))
        if iterator is None:
            return
        try:
            while True:
                with _translate_errors():
                    rows = iterator.next()
                if not rows:
                    return
                yield ([_record(r["id"], r) for r in rows],
                       np.asarray([r["embedding"] for r in rows], dtype=np.float32))
        finally:
            iterator.close()

def _dim(description: dict[str, Any]) -> int:
    return int(next(f["params"]["dim"] for f in description["fields"] if f["name"] == "embedding"))


def _stored_model(description: dict[str, Any]) -> ModelInfo | None:
    """The model identity kept with the collection: a collection property (Milvus Lite drops schema
    descriptions), else the schema description (collections made before the property). None if neither."""
    stored = (description.get("properties") or {}).get(_MODEL_PROPERTY) or description.get("description") or ""
    try:
        return ModelInfo.from_json(stored)
    except (ValueError, TypeError, AttributeError):
        return None


def _row(rec: ImageRecord, vec: np.ndarray) -> dict[str, Any]:
    return {
        "id": rec.id, "embedding": vec.tolist(), "filename": rec.filename, "size_bytes": int(rec.size_bytes),
        "format": rec.format, "width": int(rec.width), "height": int(rec.height), "model": rec.model,
        "created_at": (rec.created_at - _EPOCH) // timedelta(microseconds=1),
    }


def _record(image_id: str, fields: dict[str, Any]) -> ImageRecord:
    return ImageRecord(
        id=image_id, filename=fields["filename"], size_bytes=int(fields["size_bytes"]), format=fields["format"],
        width=int(fields["width"]), height=int(fields["height"]), model=fields["model"],
        created_at=_EPOCH + timedelta(microseconds=int(fields["created_at"])),
    )


def _translate_errors():
    import grpc
    from pymilvus.exceptions import ConnectError, MilvusException, MilvusUnavailableException

    return translate_errors("Milvus", unavailable=(MilvusUnavailableException, ConnectError, grpc.RpcError),
                            failed=(MilvusException,), unreachable=lambda exc: getattr(exc, "code", None) == _NO_SERVER)
