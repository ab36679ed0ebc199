"""The vector backend contract every database implements.

Exceptions (defined in `shared.types`, re-exported here for backend authors):

    BackendError            anything the backend could not do
    ├── BackendUnavailable  cannot reach the database (retry later; the API answers 503)
    └── SchemaMismatch      the stored index was built by another model (name, pretrained weights or dimension)

Backends translate their driver's errors into these at the boundary (`translate_errors`), so callers never
import a driver. A backend module imports only this module, `shared.types` and `shared.filters` (settings only
for typing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np

from shared.filters import SearchFilter
from shared.types import BackendError, BackendUnavailable, ModelInfo, SchemaMismatch

__all__ = ["BackendError", "BackendUnavailable", "Hit", "ImageRecord", "Neighbours", "SchemaMismatch", "SearchFilter",
           "VectorBackend", "check_model", "merge_labels", "neighbours_by_search", "translate_errors"]

# Per query row, (image id, cosine similarity) of its nearest other images, best first (`VectorBackend.neighbours`).
Neighbours = list[list[tuple[str, float]]]


@contextmanager
def translate_errors(database: str, *, unavailable: tuple[type[BaseException], ...],
                     failed: tuple[type[BaseException], ...],
                     unreachable: Callable[[BaseException], bool] = lambda exc: False) -> Iterator[None]:
    """Turn a driver's exceptions into BackendUnavailable (`unavailable`, or a `failed` one for which
    `unreachable` says so, for drivers that tell by an error code) or BackendError (`failed`)."""
    try:
        yield
    except BackendError:
        raise
    except unavailable as exc:
        raise BackendUnavailable(f"{database} is unreachable: {exc}") from exc
    except failed as exc:
        if unreachable(exc):
            raise BackendUnavailable(f"{database} is unreachable: {exc}") from exc
        raise BackendError(f"{database} error: {exc}") from exc


def check_model(stored: ModelInfo | None, model: ModelInfo, *, index: str) -> None:
    """Refuse to serve an index whose vectors came from another model: mixing two embedding spaces in one index
    silently ruins every search. `stored` is the identity saved with the index (None: a new index)."""
    if stored is None:
        return
    if (stored.name, stored.label(), stored.dim) == (model.name, model.label(), model.dim):
        return
    raise SchemaMismatch(
        f"{index} holds {stored.dim}-dimensional vectors of model {stored.label()}, but model {model.label()} "
        f"produces {model.dim}-dimensional ones: vectors of two models must never share an index. Set "
        f"MODEL_NAME={stored.name} MODEL_PRETRAINED={stored.pretrained} back, or re-embed the collection with "
        "the new model into a fresh index."
    )


@dataclass(frozen=True)
class ImageRecord:
    """Metadata kept beside each vector (what filters select on, see `shared.filters.SearchFilter`).

    The first eight fields are the first release's; the others were added later with empty defaults, and
    an index made before them gains them at start-up (`ensure_schema`), empty for the images it holds.
    """

    id: str
    filename: str
    size_bytes: int
    format: str
    width: int
    height: int
    model: str
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))  # when it was indexed (UTC)
    captured_at: datetime | None = None  # EXIF DateTimeOriginal (UTC; a time without offset is read as UTC)
    camera_make: str = ""
    camera_model: str = ""
    latitude: float | None = None  # EXIF GPS, degrees (both or neither)
    longitude: float | None = None
    orientation: int = 1  # EXIF orientation 1-8 as found in the file (the vector is of the upright image)
    path: str = ""  # folder ingests: the file's path relative to the ingest root ("" for uploads)
    collections: tuple[str, ...] = ()  # albums, in the order they were added
    tags: tuple[str, ...] = ()

    @property
    def has_gps(self) -> bool:
        return self.latitude is not None and self.longitude is not None

    def with_labels(self, collections: Sequence[str], tags: Sequence[str]) -> ImageRecord:
        return dataclasses.replace(self, collections=tuple(collections), tags=tuple(tags))


def merge_labels(new: ImageRecord, stored: ImageRecord | None) -> ImageRecord:
    """What an upsert of `new` stores when `stored` is there: the stored collections and tags with the new
    ones added (upserts never drop labels), and the stored folder path when `new` has none (the same bytes
    uploaded, or re-embedded from the store, keep the path they were ingested from)."""
    if stored is None:
        return new
    merged = new.with_labels(tuple(dict.fromkeys([*stored.collections, *new.collections])),
                             tuple(dict.fromkeys([*stored.tags, *new.tags])))
    return merged if new.path else dataclasses.replace(merged, path=stored.path)


@dataclass(frozen=True)
class Hit:
    record: ImageRecord
    score: float  # cosine similarity, higher is more similar (1.0 = same direction)

    @property
    def id(self) -> str:
        return self.record.id


class VectorBackend(Protocol):
    """One collection of L2-normalised image vectors keyed by image id (SHA-256 hex), with each image's
    metadata (`ImageRecord`) stored beside its vector so filters run inside the vector search.

    A backend object is bound to one index (a table or collection: `index`); a database holds one index per
    model identity (`shared.catalog`), reached through views (`for_index`) that share the connections, and a
    small key → value catalogue saying which index is active."""

    name: str
    index: str  # the physical index (table / collection name) this object reads and writes

    def ensure_schema(self, model: ModelInfo) -> None:
        """Create the collection and index for `model` if missing, recording its identity; idempotent.
        An index made by an earlier release gains the metadata fields added since (no re-embedding).

        Raises SchemaMismatch (via `check_model`) if the collection holds vectors of another model: another
        name, pretrained weights or dimension.
        """

    def upsert(self, records: Sequence[ImageRecord], vectors: np.ndarray) -> None:
        """Insert or replace `records[i]` with `vectors[i]` in one bulk operation; same id twice = one row.
        The collections and tags already stored for an id are kept, the record's are added (`merge_labels`)."""

    def search(self, vector: np.ndarray, k: int, *, exclude: Sequence[str] = (),
               where: SearchFilter | None = None) -> list[Hit]:
        """The `k` nearest images by cosine similarity among those matching `where`, best first, leaving
        out ids in `exclude`. The filter runs inside the index search (not on its top k afterwards), so a
        filter that keeps 1% of the collection still returns k matches when there are k."""

    def neighbours(self, ids: Sequence[str], vectors: np.ndarray, k: int) -> Neighbours:
        """For each row `vectors[i]` (the stored vector of image `ids[i]`), up to `k` (id, cosine) pairs of
        other images, best first: ids and scores only, no filter, many queries per call. For scans of the
        whole collection (near-duplicates); each backend answers it leaner than `search`. This body (for
        classes that subclass VectorBackend) is the plain version, `neighbours_by_search`."""
        return neighbours_by_search(self, ids, vectors, k)

    def get(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        """Records of the ids that exist (missing ids are simply absent)."""

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors of the ids that exist."""

    def set_labels(self, labels: dict[str, tuple[Sequence[str], Sequence[str]]]) -> int:
        """Replace the (collections, tags) of stored images, keyed by id, without touching their vectors;
        returns how many of the ids exist (the others are ignored)."""

    def delete(self, ids: Sequence[str]) -> int:
        """Remove these ids; returns how many existed."""

    def count(self, where: SearchFilter | None = None) -> int:
        """Number of stored vectors (matching `where`)."""

    def scan(self, batch_size: int = 1000) -> Iterator[tuple[list[ImageRecord], np.ndarray]]:
        """Every record with its vector, in batches ordered by id (for migrations and audits)."""

    def for_index(self, index: str) -> VectorBackend:
        """A view of the same database bound to the index named `index` (created by its `ensure_schema`),
        sharing this object's connections and settings. Closing a view releases nothing; closing the object
        the views came from closes them all. `index` is built by `shared.catalog.index_name` (letters, digits
        and _), never from client input."""

    def stored_model(self) -> ModelInfo | None:
        """The model identity recorded with this index; None if the index does not exist."""

    def drop(self) -> None:
        """Delete this index with its vectors and recorded identity; nothing happens if it does not exist."""

    def read_catalog(self) -> dict[str, str]:
        """The database's catalogue: a few short keys and JSON values (`shared.catalog` owns their meaning),
        kept beside the index named when the backend was configured, whatever index this view is bound to."""

    def write_catalog(self, key: str, value: str | None) -> None:
        """Set one catalogue key (None deletes it). Each write is atomic: a reader sees the old or the new value."""

    def close(self) -> None:
        """Release connections."""


def neighbours_by_search(backend: VectorBackend, ids: Sequence[str], vectors: np.ndarray, k: int) -> Neighbours:
    """`VectorBackend.neighbours` through `search`: one search per row, leaving out the row's own id."""
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
    return [[(hit.id, hit.score) for hit in backend.search(vector, k, exclude=[own])]
            for own, vector in zip(ids, vectors, strict=True)]
