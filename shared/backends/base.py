"""The vector backend contract every database implements.

Exceptions:

    BackendError            anything the backend could not do
    ├── BackendUnavailable  cannot reach the database (retry later; the API answers 503)
    └── SchemaMismatch      the stored index was built for another model dimension

Backends translate their driver's errors into these at the boundary, so callers never import a driver.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np

from shared.embedder import ModelInfo


class BackendError(RuntimeError):
    pass


class BackendUnavailable(BackendError):
    pass


class SchemaMismatch(BackendError):
    pass


@contextmanager
def translate_errors(database: str, *, unavailable: tuple[type[BaseException], ...],
                     failed: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Turn a driver's exceptions into BackendUnavailable (`unavailable`) or BackendError (`failed`)."""
    try:
        yield
    except BackendError:
        raise
    except unavailable as exc:
        raise BackendUnavailable(f"{database} is unreachable: {exc}") from exc
    except failed as exc:
        raise BackendError(f"{database} error: {exc}") from exc


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
        """Create the collection and index for `model.dim` if missing; idempotent.

        Raises SchemaMismatch if the collection exists with another dimension.
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
