"""Milvus backend (pymilvus `MilvusClient`).

`MILVUS_URI` is a server URL (`http://host:19530`, the production path) or a local path, which means
Milvus Lite: fine for development and small collections, but one process per data directory, so
`make up` runs `milvus-lite server` and points every process at it over HTTP.

One collection with an explicit schema: the image id (VARCHAR 64) as primary key, a FLOAT_VECTOR of the
model's dimension, and the metadata of `ImageRecord`. HNSW index with the COSINE metric, whose search
"distance" is already the cosine similarity. The model identity is kept as JSON in a collection property
(and the schema description), and a collection holding another model's vectors is refused.

Metadata fields. Older servers have no NULLs, so "absent" is a flag beside the value: `has_captured` (BOOL)
+ `captured_at` (INT64 microseconds since the epoch, UTC; 0 when absent), `has_gps` (BOOL) + `latitude` /
`longitude` (DOUBLE; 0.0 when absent). `camera_make`, `camera_model` and `path` are VARCHARs ("" when
unknown; `path` holds 1024 characters of UTF-8, 4096 bytes), `orientation` an INT32, and `collections` /
`tags` are ARRAY<VARCHAR> (64 elements of 64 characters, 256 bytes). Upserts keep the labels already
stored for an id (one `get` of the batch's existing ids first, then `merge_labels`); `set_labels` rewrites
whole rows with the stored vectors, since Milvus has no partial update before 2.6.

Filtered search. A `SearchFilter` becomes one boolean expression with a placeholder for every value
(`format in {formats}`, `ARRAY_CONTAINS_ALL(tags, {tags_all})`, ...), sent as `filter=` / `filter_params=`
(expression templates): the filter runs inside the ANN search, and the values travel apart from the
expression. The path prefix is the string range `path >= {prefix} and path < {successor}` (UTF-8
byte order is code point order), which needs no LIKE escaping: LIKE's wildcards and escapes differ between
versions (2.3 matches prefixes only and takes `_` literally, Milvus Lite 3 reads `_` as a wildcard and
`\\` as its escape). Filtered searches use a larger `ef` (twice MILVUS_EF_SEARCH, at least 8 x k) so recall
holds when the filter keeps only a few percent of the collection.

Expression templates need a Milvus >= 2.5 server; Milvus Lite (2.5 and 3.x, the `make up` default) and
Milvus 2.3 reject them ("unexpected character '{'"), and no pymilvus version changes that (the binding
happens in the server). `supports_filters()` asks the server once; where it cannot bind, `with_literals`
writes each value into the expression as a typed literal: only bools, ints, finite floats, strings as
JSON string literals (quotes and backslashes escaped; no control characters, which filters refuse) and
lists of those, in one pass over placeholders of an expression made of constants. The conformance suite
searches for values made of quotes, backslashes and Milvus operators on both paths.

Schema upgrade. A collection made by the first release (no metadata beyond created_at) is upgraded by
`ensure_schema` without re-embedding: no Milvus before 2.6 (nor Milvus Lite) can add fields, so it is
copied in batches, vectors included, into `<name>__upgrade` with the new schema, and the names are
swapped (`<name>` -> `<name>__previous`, `<name>__upgrade` -> `<name>`, then the old one is dropped).
Every step is idempotent and chosen from which of the three collections exist, so a crash anywhere is
finished by the next start (rows already copied are skipped, not rewritten). Stop writers while it runs.

Indexes and catalogue. One collection per model identity: views (`for_index`) bound to another collection
share the backend's one client (closing a view releases nothing). The catalogue (`read_catalog` /
`write_catalog`) is the collection `<collection>_catalog`, named after the collection the backend was
configured with: a VARCHAR primary key `key`, a VARCHAR `value` (65535 bytes) and, since Milvus wants a
vector field, a 2-dimensional `vector` with a FLAT index. A write is one upsert (or delete) of one row,
read back with Strong consistency. `drop` drops a collection (and the leftovers of an interrupted
upgrade of it), never the catalogue.

Consistency: collections use `Strong`. The writer (a worker) and the reader (the API) are different
clients, so `Session` would not let a search see a batch another process just finished; `Bounded`
(Milvus' default) may hide it for a moment. Strong costs a little latency per query and makes "job
completed, so its images are searchable" true.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.backends.base import Hit, ImageRecord, Neighbours, check_model, merge_labels, translate_errors
from shared.filters import MAX_LABELS, SearchFilter, epoch_micros, from_epoch_micros
from shared.types import BackendError, ModelInfo, SchemaMismatch

if TYPE_CHECKING:
    from shared.config import Settings

log = logging.getLogger(__name__)

# The first release's metadata, then what came with filtered search.
_V1_FIELDS = ["filename", "size_bytes", "format", "width", "height", "model", "created_at"]
_V2_FIELDS = ["has_captured", "captured_at", "camera_make", "camera_model", "has_gps", "latitude", "longitude",
              "orientation", "path", "collections", "tags"]
_META_FIELDS = [*_V1_FIELDS, *_V2_FIELDS]
# Long calls (index builds) otherwise trip gRPC's "too_many_pings" with Milvus Lite.
_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 3_600_000, "grpc.keepalive_permit_without_calls": False}
_MAX_BATCH = 1000
_COLLECTION_NOT_LOADED = 101
_MODEL_PROPERTY = "proxima.model"  # collection property holding the model identity (JSON)
_NO_SERVER = 2  # pymilvus: "Fail connecting to server" (what a stopped server gives)
_UPGRADE_SUFFIX = "__upgrade"  # the new-schema copy of a first-release collection, while it is being made
_PREVIOUS_SUFFIX = "__previous"  # the first-release collection once the copy has taken its name
_FILTERED_EF_FACTOR = 2  # filtered searches explore this many times the usual candidates (at least 8 per result)
_CATALOG_SUFFIX = "_catalog"  # the catalogue collection: `<collection>_catalog`, beside the configured collection
_CATALOG_LIMIT = 16384  # catalogue rows read at most (a few per model identity)
_INDEX_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


def connect(uri: str, *, token: str = "", timeout: float = 30.0) -> Any:
    """A pymilvus `MilvusClient` with our gRPC keepalive settings. Every client of one address shares a gRPC
    channel, so one made without them (pinging every few seconds) gets the channel closed by Milvus Lite
    ("Too many pings") for the others too: tests and scripts connect through here as well."""
    from pymilvus import MilvusClient

    return MilvusClient(uri, token=token, timeout=timeout, grpc_options=_GRPC_OPTIONS)


class _Connection:
    """The one `MilvusClient` of a backend and its views (made on first use), and what is known of the server."""

    def __init__(self, uri: str, *, token: str, timeout: float) -> None:
        self.uri, self.token, self.timeout = uri, token, timeout
        self.client: Any = None
        self.lock = threading.Lock()
        self.templates: bool | None = None  # whether the server binds expression parameters (probed once)
        self.catalog_seen = False  # the catalogue collection exists and is loaded

    def get(self) -> Any:
        with self.lock:
            if self.client is None:
                self.client = connect(self.uri, token=self.token, timeout=self.timeout)
            return self.client

    def close(self) -> None:
        with self.lock:
            if self.client is not None:
                self.client.close()
                self.client = None


class MilvusBackend:
    name = "milvus"

    def __init__(self, uri: str, *, collection: str = "proxima_images", token: str = "", hnsw_m: int = 16,
                 hnsw_ef_construction: int = 128, ef_search: int = 100, timeout: float = 30.0) -> None:
        if not uri:
            raise BackendError("VECTOR_BACKEND=milvus needs MILVUS_URI (http://host:19530 or a local path)")
        self.uri = uri
        self.index = collection  # the collection this object reads and writes
        self.ef_search = ef_search
        self._hnsw = {"M": hnsw_m, "efConstruction": hnsw_ef_construction}  # index build parameters
        self._shared = _Connection(uri, token=token, timeout=timeout)  # shared with the views (`for_index`)
        self._owner = True  # closing it closes the connection; a view's close releases nothing
        self._catalog = collection + _CATALOG_SUFFIX  # the database's catalogue, whatever the view
        self._collection_seen = False  # once it exists, reads skip the has_collection round trip

    @property
    def collection(self) -> str:
        """The collection name (`index`), under the name of the constructor's parameter."""
        return self.index

    @classmethod
    def from_settings(cls, settings: Settings) -> MilvusBackend:
        uri = settings.milvus_uri or str((settings.data_dir / "milvus" / "proxima.db").resolve())
        return cls(uri, collection=settings.milvus_collection, token=settings.milvus_token,
                   hnsw_m=settings.milvus_hnsw_m, hnsw_ef_construction=settings.milvus_hnsw_ef_construction,
                   ef_search=settings.milvus_ef_search)

    def for_index(self, index: str) -> MilvusBackend:
        """A view bound to the collection `index`, sharing this object's client (and its catalogue)."""
        if not _INDEX_NAME.fullmatch(index):
            raise BackendError(f"not a Milvus collection name: {index[:80]!r}")
        view = copy.copy(self)
        view.index = index
        view._owner = False
        view._collection_seen = False
        return view

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        with _translate_errors():
            yield self._shared.get()

    def _read(self, op: Callable[[Any], Any]) -> Any:
        """Run a read; a collection the server released (e.g. after a restart) is loaded and read again."""
        from pymilvus.exceptions import MilvusException

        with self._conn() as client:
            if not self._collection_seen:
                if not client.has_collection(self.index):
                    return None
                self._collection_seen = True
            try:
                return op(client)
            except MilvusException as exc:
                if exc.code != _COLLECTION_NOT_LOADED:
                    raise
                client.load_collection(self.index)
                return op(client)

    def close(self) -> None:
        if self._owner:
            self._shared.close()

    # --- indexes and the catalogue ---------------------------------------------------------------

    def stored_model(self) -> ModelInfo | None:
        with self._conn() as client:
            if not client.has_collection(self.index):
                return None
            return _stored_model(client.describe_collection(self.index))

    def drop(self) -> None:
        """Drop the collection, with what an interrupted schema upgrade of it left (the catalogue stays)."""
        with self._conn() as client:
            for name in (self.index + _UPGRADE_SUFFIX, self.index + _PREVIOUS_SUFFIX, self.index):
                if client.has_collection(name):
                    client.drop_collection(name)
        self._collection_seen = False

    def read_catalog(self) -> dict[str, str]:
        from pymilvus.exceptions import MilvusException

        with self._conn() as client:
            if not client.has_collection(self._catalog):
                return {}

            def query() -> list[dict[str, Any]]:
                return client.query(self._catalog, filter='key != ""', output_fields=["key", "value"],
                                    limit=_CATALOG_LIMIT, consistency_level="Strong")

            try:
                rows = query()
            except MilvusException as exc:
                if exc.code != _COLLECTION_NOT_LOADED:
                    raise
                client.load_collection(self._catalog)
                rows = query()
        return {row["key"]: row["value"] for row in rows}

    def write_catalog(self, key: str, value: str | None) -> None:
        with self._conn() as client:
            if value is None:
                if client.has_collection(self._catalog):
                    client.delete(self._catalog, ids=[key])
                return
            if not self._shared.catalog_seen:
                self._create_catalog(client)
                self._shared.catalog_seen = True
            client.upsert(self._catalog, [{"key": key, "value": value, "vector": [1.0, 0.0]}])

    def _create_catalog(self, client: Any) -> None:
        """The catalogue collection: a VARCHAR key and value (Milvus wants a vector field too: a tiny one)."""
        from pymilvus import DataType, MilvusClient
        from pymilvus.exceptions import MilvusException

        if not client.has_collection(self._catalog):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                                description="proxima model catalogue")
            schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=256)
            schema.add_field("value", DataType.VARCHAR, max_length=65535)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
            index = client.prepare_index_params()
            index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
            try:
                client.create_collection(self._catalog, schema=schema, index_params=index,
                                         consistency_level="Strong")
            except MilvusException:
                if not client.has_collection(self._catalog):  # not another process creating it first
                    raise
        client.load_collection(self._catalog)

    # --- schema --------------------------------------------------------------------------------

    def ensure_schema(self, model: ModelInfo) -> None:
        with self._conn() as client:
            self._finish_upgrade(client, model)
            if client.has_collection(self.index):
                description = client.describe_collection(self.index)
                self._check(description, model, self.index)
                if not _is_current(description):
                    self._upgrade(client, model)
                client.load_collection(self.index)
                return
            self._create(client, self.index, model)

    def _check(self, description: dict[str, Any], model: ModelInfo, name: str) -> None:
        check_model(_stored_model(description), model, index=f"the Milvus collection {name!r}")
        stored = _dim(description)
        if stored != model.dim:
            raise SchemaMismatch(
                f"the Milvus collection {name!r} holds {stored}-dimensional vectors but model "
                f"{model.label()} produces {model.dim}; use the model the index was built with, or "
                "re-index into a fresh collection"
            )

    def _create(self, client: Any, name: str, model: ModelInfo) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=model.to_json())
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=model.dim)
        schema.add_field("filename", DataType.VARCHAR, max_length=1024)
        schema.add_field("size_bytes", DataType.INT64)
        schema.add_field("format", DataType.VARCHAR, max_length=16)
        schema.add_field("width", DataType.INT32)
        schema.add_field("height", DataType.INT32)
        schema.add_field("model", DataType.VARCHAR, max_length=512)
        schema.add_field("created_at", DataType.INT64)  # microseconds since the epoch, UTC
        schema.add_field("has_captured", DataType.BOOL)
        schema.add_field("captured_at", DataType.INT64)  # microseconds since the epoch, UTC; 0 without one
        schema.add_field("camera_make", DataType.VARCHAR, max_length=1024)
        schema.add_field("camera_model", DataType.VARCHAR, max_length=1024)
        schema.add_field("has_gps", DataType.BOOL)
        schema.add_field("latitude", DataType.DOUBLE)  # 0.0 without GPS
        schema.add_field("longitude", DataType.DOUBLE)
        schema.add_field("orientation", DataType.INT32)
        schema.add_field("path", DataType.VARCHAR, max_length=4096)  # 1024 characters of UTF-8
        for labels in ("collections", "tags"):
            schema.add_field(labels, DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_LABELS,
                             max_length=256)  # 64 characters of UTF-8
        index = client.prepare_index_params()
        index.add_index(field_name="embedding", index_type="HNSW", metric_type="COSINE", params=self._hnsw)
        client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong",
                                 properties={_MODEL_PROPERTY: model.to_json()})

    def _upgrade(self, client: Any, model: ModelInfo) -> None:
        """Copy the first-release collection into one with the current schema, then swap the names."""
        target = self.index + _UPGRADE_SUFFIX
        if not client.has_collection(target):
            self._create(client, target, model)
        self._copy(client, self.index, target)
        self._finish_upgrade(client, model)

    def _copy(self, client: Any, source: str, target: str) -> None:
        """Every row of `source` into `target` with empty new fields, vectors as stored; rows `target`
        already holds (an earlier, interrupted copy) are skipped."""
        client.load_collection(source)
        client.load_collection(target)
        iterator = client.query_iterator(source, batch_size=_MAX_BATCH, output_fields=[*_V1_FIELDS, "embedding"])
        try:
            while rows := iterator.next():
                done = {r["id"] for r in client.get(target, ids=[r["id"] for r in rows], output_fields=["id"])}
                missing = [r for r in rows if r["id"] not in done]
                if missing:
                    client.upsert(target, [_row(_record(r["id"], r), np.asarray(r["embedding"], np.float32))
                                           for r in missing])
        finally:
            iterator.close()

    def _finish_upgrade(self, client: Any, model: ModelInfo) -> None:
        """Complete an upgrade a crash interrupted, from which collections exist: the old one under its own
        name (copy again, then swap), under `__previous` (rename the copy, drop it) or only the copy left
        beside the new one (drop the old)."""
        name, target, previous = self.index, self.index + _UPGRADE_SUFFIX, self.index + _PREVIOUS_SUFFIX
        if not client.has_collection(target) and not client.has_collection(previous):
            return
        if client.has_collection(target):
            self._check(client.describe_collection(target), model, target)
            if client.has_collection(name):
                if _is_current(client.describe_collection(name)):
                    raise BackendError(f"the Milvus collections {name!r} and {target!r} both have the current "
                                       f"schema; drop {target!r} (an unfinished upgrade copy) by hand")
                self._copy(client, name, target)
                client.release_collection(name)
                client.rename_collection(name, previous)
            elif client.has_collection(previous):
                self._copy(client, previous, target)  # the copy may have been cut short before the rename
            client.rename_collection(target, name)
        if client.has_collection(previous):
            client.drop_collection(previous)
        self._collection_seen = False

    # --- data ----------------------------------------------------------------------------------

    def upsert(self, records: Sequence[ImageRecord], vectors: np.ndarray) -> None:
        if len(records) != len(vectors):
            raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
        latest = {rec.id: (rec, vec) for rec, vec in zip(records, np.asarray(vectors, np.float32), strict=True)}
        batch = list(latest.values())  # the same id twice in one call: the last one wins
        with self._conn() as client:
            for start in range(0, len(batch), _MAX_BATCH):
                chunk = batch[start:start + _MAX_BATCH]
                stored = self._labels(client, [rec.id for rec, _ in chunk])
                client.upsert(self.index, [_row(merge_labels(rec, stored.get(rec.id)), vec)
                                                for rec, vec in chunk])

    def _labels(self, client: Any, ids: list[str]) -> dict[str, ImageRecord]:
        """The stored labels of these ids, as records carrying only them (for `merge_labels`)."""
        rows = client.get(self.index, ids=ids, output_fields=["collections", "tags"])
        return {r["id"]: ImageRecord(id=r["id"], filename="", size_bytes=0, format="", width=0, height=0, model="",
                                     collections=tuple(r["collections"] or ()), tags=tuple(r["tags"] or ()))
                for r in rows}

    def set_labels(self, labels: dict[str, tuple[Sequence[str], Sequence[str]]]) -> int:
        ids = list(labels)
        found = 0
        for start in range(0, len(ids), _MAX_BATCH):
            chunk = ids[start:start + _MAX_BATCH]

            def stored(client: Any, chunk: list[str] = chunk) -> Any:
                return client.get(self.index, ids=chunk, output_fields=[*_META_FIELDS, "embedding"])

            rows = self._read(stored) or []
            if not rows:
                continue
            found += len(rows)
            updated = [_row(_record(r["id"], r).with_labels(*labels[r["id"]]), np.asarray(r["embedding"], np.float32))
                       for r in rows]
            with self._conn() as client:
                client.upsert(self.index, updated)
        return found

    def supports_filters(self) -> bool:
        """Whether this server binds expression parameters (`filter_params`, Milvus >= 2.5); asked once."""
        if self._shared.templates is None:
            from pymilvus.exceptions import MilvusException

            def probe(client: Any) -> bool:
                pymilvus_log = logging.getLogger("pymilvus")
                level = pymilvus_log.level
                pymilvus_log.setLevel(logging.CRITICAL)  # the refusal is expected on older engines
                try:
                    client.query(self.index, filter="id in {ids}", filter_params={"ids": [""]},
                                 output_fields=["id"])
                    return True
                except MilvusException as exc:
                    if exc.code in (_COLLECTION_NOT_LOADED, _NO_SERVER):
                        raise
                    log.info("Milvus %s cannot bind expression parameters (%s): filter values are written as "
                             "typed literals", client.get_server_version(), exc.message)
                    return False
                finally:
                    pymilvus_log.setLevel(level)

            templates = self._read(probe)
            if templates is None:  # no collection yet: nothing to filter, ask again once there is one
                return False
            self._shared.templates = templates
        return self._shared.templates

    def _filter(self, where: SearchFilter | None) -> tuple[str, dict[str, Any]]:
        """The expression and its parameters for `where` ("" for no filter). Where the server cannot bind
        parameters, the values are written into the expression as typed literals (`with_literals`)."""
        if where is None or where.is_empty():
            return "", {}
        expr, params = milvus_expression(where)
        if not self.supports_filters():
            return with_literals(expr, params), {}
        return expr, params

    def search(self, vector: np.ndarray, k: int, *, exclude: Sequence[str] = (),
               where: SearchFilter | None = None) -> list[Hit]:
        expr, params = self._filter(where)
        limit = k + len(exclude)
        ef = max(self.ef_search, limit) if not expr else max(_FILTERED_EF_FACTOR * self.ef_search, 8 * limit)
        query = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()
        result = self._read(lambda client: client.search(
            self.index, data=[query], limit=limit, output_fields=_META_FIELDS, filter=expr,
            filter_params=params, search_params={"metric_type": "COSINE", "params": {"ef": ef}},
        ))
        if not result:
            return []
        skip = set(exclude)
        hits = [Hit(record=_record(r["id"], r["entity"]), score=float(r["distance"]))
                for r in result[0] if r["id"] not in skip]
        return hits[:k]

    def neighbours(self, ids: Sequence[str], vectors: np.ndarray, k: int) -> Neighbours:
        """One search of every row (nq = len(ids)) returning primary keys and scores only, at Session
        consistency: a Strong search waits for the server's next time tick (~0.2 s a call on Milvus 2.3), a
        Session one only for this process's own writes (pymilvus remembers their timestamps). Others' writes
        are seen as far as the server has applied them (a duplicates run's Strong `scan` comes first). Bounded
        would not wait even for those: it missed rows this process had upserted a moment before."""
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
        if not len(ids) or k <= 0:
            return [[] for _ in ids]
        limit = k + 1  # the query's own row among them
        queries = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1).tolist()
        result = self._read(lambda client: client.search(
            self.index, data=queries, limit=limit, consistency_level="Session",
            search_params={"metric_type": "COSINE", "params": {"ef": max(self.ef_search, limit)}},
        ))
        if not result:
            return [[] for _ in ids]
        return [[(r["id"], float(r["distance"])) for r in hits if r["id"] != own][:k]
                for own, hits in zip(ids, result, strict=True)]

    def get(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        if not ids:
            return {}
        rows = self._read(lambda client: client.get(self.index, ids=list(ids), output_fields=_META_FIELDS))
        return {row["id"]: _record(row["id"], row) for row in rows or []}

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not ids:
            return {}
        rows = self._read(lambda client: client.get(self.index, ids=list(ids), output_fields=["embedding"]))
        return {row["id"]: np.asarray(row["embedding"], dtype=np.float32) for row in rows or []}

    def delete(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        existing = list(self.get(ids))  # Milvus reports the ids it was given, not the ones it removed
        if existing:
            with self._conn() as client:
                client.delete(self.index, ids=existing)
        return len(existing)

    def count(self, where: SearchFilter | None = None) -> int:
        expr, params = self._filter(where)
        rows = self._read(lambda client: client.query(self.index, filter=expr, filter_params=params,
                                                      output_fields=["count(*)"]))
        return int(rows[0]["count(*)"]) if rows else 0

    def scan(self, batch_size: int = 1000) -> Iterator[tuple[list[ImageRecord], np.ndarray]]:
        iterator = self._read(lambda client: client.query_iterator(
            self.index, batch_size=batch_size, output_fields=[*_META_FIELDS, "embedding"]))
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


def milvus_expression(where: SearchFilter) -> tuple[str, dict[str, Any]]:
    """A Milvus boolean expression for `where` with a `{placeholder}` for every value, and the values
    (pymilvus `filter` / `filter_params`). The meaning is `SearchFilter.matches`'."""
    terms: list[str] = []
    params: dict[str, Any] = {}

    def bind(name: str, value: Any) -> str:
        params[name] = value
        return "{" + name + "}"

    if where.captured_from is not None or where.captured_to is not None:
        terms.append("has_captured == true")
        if where.captured_from is not None:
            terms.append(f"captured_at >= {bind('captured_from', epoch_micros(where.captured_from))}")
        if where.captured_to is not None:
            terms.append(f"captured_at <= {bind('captured_to', epoch_micros(where.captured_to))}")
    if where.ingested_from is not None:
        terms.append(f"created_at >= {bind('ingested_from', epoch_micros(where.ingested_from))}")
    if where.ingested_to is not None:
        terms.append(f"created_at <= {bind('ingested_to', epoch_micros(where.ingested_to))}")
    if where.formats:
        terms.append(f"format in {bind('formats', list(where.formats))}")
    if where.min_width:
        terms.append(f"width >= {bind('min_width', int(where.min_width))}")
    if where.min_height:
        terms.append(f"height >= {bind('min_height', int(where.min_height))}")
    if where.cameras:
        cameras = bind("cameras", list(where.cameras))
        terms.append(f"(camera_make in {cameras} or camera_model in {cameras})")
    if where.has_gps is not None:
        terms.append("has_gps == true" if where.has_gps else "has_gps == false")
    if where.bbox is not None:
        box = where.bbox
        terms += ["has_gps == true", f"latitude >= {bind('south', float(box.south))}",
                  f"latitude <= {bind('north', float(box.north))}", f"longitude >= {bind('west', float(box.west))}",
                  f"longitude <= {bind('east', float(box.east))}"]
    if where.collections:
        terms.append(f"ARRAY_CONTAINS_ANY(collections, {bind('collections', list(where.collections))})")
    if where.tags_all:
        terms.append(f"ARRAY_CONTAINS_ALL(tags, {bind('tags_all', list(where.tags_all))})")
    if where.tags_any:
        terms.append(f"ARRAY_CONTAINS_ANY(tags, {bind('tags_any', list(where.tags_any))})")
    if where.path_prefix:
        terms.append(f"path >= {bind('path_from', where.path_prefix)}")
        successor = _successor(where.path_prefix)
        if successor is not None:
            terms.append(f"path < {bind('path_before', successor)}")
    return " and ".join(dict.fromkeys(terms)), params


_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def with_literals(expr: str, params: dict[str, Any]) -> str:
    """`expr` (built by `milvus_expression` from constants and placeholders only) with each placeholder
    replaced by its value as a typed literal: for engines without expression templates (Milvus < 2.5,
    Milvus Lite), which bind nothing. One pass, so a value can never introduce a placeholder."""
    return _PLACEHOLDER.sub(lambda match: _literal(params[match.group(1)]), expr)


def _literal(value: Any) -> str:
    """A Milvus expression literal of a bool, int, finite float, string or list of them, nothing else.
    Strings become JSON string literals (`"` and `\\` escaped), which both Milvus' grammar and Milvus
    Lite's parser read back exactly; filter strings never hold control characters (SearchFilter refuses
    them), which are refused here too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float) and math.isfinite(value):
        return repr(float(value))
    if isinstance(value, str) and not _CONTROL.search(value):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    raise BackendError(f"cannot write {type(value).__name__} {str(value)[:40]!r} into a Milvus expression")


def _successor(prefix: str) -> str | None:
    """The least string greater than every string starting with `prefix` (None: there is none)."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop()) + 1
        if last == 0xD800:  # surrogates are not characters (no UTF-8 form)
            last = 0xE000
        if last <= 0x10FFFF:
            return "".join(chars) + chr(last)
    return None


def _is_current(description: dict[str, Any]) -> bool:
    """Whether a collection has every field of the current schema (else it is a first-release one)."""
    return set(_V2_FIELDS) <= {f["name"] for f in description["fields"]}


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
        "created_at": epoch_micros(rec.created_at),
        "has_captured": rec.captured_at is not None,
        "captured_at": epoch_micros(rec.captured_at) if rec.captured_at is not None else 0,
        "camera_make": rec.camera_make, "camera_model": rec.camera_model,
        "has_gps": rec.has_gps,
        "latitude": float(rec.latitude) if rec.has_gps else 0.0,  # type: ignore[arg-type]
        "longitude": float(rec.longitude) if rec.has_gps else 0.0,  # type: ignore[arg-type]
        "orientation": int(rec.orientation), "path": rec.path,
        "collections": list(rec.collections), "tags": list(rec.tags),
    }


def _record(image_id: str, fields: dict[str, Any]) -> ImageRecord:
    """A record from a row; a first-release row (no new fields) has them empty."""
    has_gps = bool(fields.get("has_gps", False))
    return ImageRecord(
        id=image_id, filename=fields["filename"], size_bytes=int(fields["size_bytes"]), format=fields["format"],
        width=int(fields["width"]), height=int(fields["height"]), model=fields["model"],
        created_at=from_epoch_micros(fields["created_at"]),
        captured_at=from_epoch_micros(fields["captured_at"])
        if fields.get("has_captured") else None,
        camera_make=fields.get("camera_make") or "", camera_model=fields.get("camera_model") or "",
        latitude=float(fields["latitude"]) if has_gps else None,
        longitude=float(fields["longitude"]) if has_gps else None,
        orientation=int(fields.get("orientation") or 1), path=fields.get("path") or "",
        collections=tuple(fields.get("collections") or ()), tags=tuple(fields.get("tags") or ()),
    )


def _translate_errors():
    import grpc
    from pymilvus.exceptions import ConnectError, MilvusException, MilvusUnavailableException

    return translate_errors("Milvus", unavailable=(MilvusUnavailableException, ConnectError, grpc.RpcError),
                            failed=(MilvusException,), unreachable=lambda exc: getattr(exc, "code", None) == _NO_SERVER)
