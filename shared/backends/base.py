"""The vector backend contract every database implements.

Exceptions (defined in `shared.types`, re-exported here for backend authors):

    BackendError            anything the backend could not do
    ├── BackendUnavailable  cannot reach the database (retry later; the API answers 503)
    └── SchemaMismatch      the stored index was built by another model (name, pretrained weights or dimension)

Backends translate their driver's errors into these at the boundary (`translate_errors`), so callers never
import a driver. A backend module imports only this module and `shared.types` (settings only for typing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np

from shared.types import BackendError, BackendUnavailable, ModelInfo, SchemaMismatch

__all__ = ["BackendError", "BackendUnavailable", "Hit", "ImageRecord", "SchemaMismatch", "VectorBackend",
           "check_model", "translate_errors"]


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
    """Metadata kept beside each vector."""

    id: str
    filename: str
    size_bytes: int
    format: str
    width: int
    height: int
    model: str
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Hit:
    record: ImageRecord
    score: float  # cosine similarity, higher is more similar (1.0 = same direction)

    @property
    def id(self) -> str:
        return self.record.id


class VectorBackend(Protocol):
    """One collection of L2-normalised image vectors keyed by image id (SHA-256 hex)."""

    name: str

    def ensure_schema(self, model: ModelInfo) -> None:
        """Create the collection and index for `model` if missing, recording its identity; idempotent.

        Raises SchemaMismatch (via `check_model`) if the collection holds vectors of another model: another
        name, pretrained weights or dimension.
        """

    def upsert(self, records: Sequence[ImageRecord], vectors: np.ndarray) -> None:
        """Insert or replace `records[i]` with `vectors[i]` in one bulk operation; same id twice = one row."""

    def search(self, vector: np.ndarray, k: int, *, exclude: Sequence[str] = ()) -> list[Hit]:
        """The `k` nearest images by cosine similarity, best first, leaving out ids in `exclude`."""

    def get(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        """Records of the ids that exist (missing ids are simply absent)."""

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors of the ids that exist."""

    def delete(self, ids: Sequence[str]) -> int:
        """Remove these ids; returns how many existed."""

    def count(self) -> int:
        """Number of stored vectors."""

    def scan(self, batch_size: int = 1000) -> Iterator[tuple[list[ImageRecord], np.ndarray]]:
        """Every record with its vector, in batches ordered by id (for migrations and audits)."""

    def close(self) -> None:
        """Release connections."""
