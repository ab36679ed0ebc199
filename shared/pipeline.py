"""The services behind every entry point: accept uploads, embed a batch, search, delete.

The API, the workers, the UI and the scripts call these functions; none of them holds logic of its own
about images, vectors or jobs. Dependencies are passed in as keyword arguments so the same function runs
in any process.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Literal

import numpy as np

from shared.backends import BackendUnavailable, Hit, ImageRecord, VectorBackend
from shared.embedder import Embedder
from shared.imagestore import ImageStore
from shared.imaging import ImageError, load_image, probe, to_model_input
from shared.jobs import FileError, JobStore

log = logging.getLogger(__name__)

# enqueue(job_id, batch_key, items): hand one batch of {"id", "filename"} items to the workers
Enqueue = Callable[[str, str, list[dict[str, str]]], None]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


@dataclass(frozen=True)
class Accepted:
    id: str | None
    filename: str
    status: Literal["queued", "duplicate", "rejected"]
    error: str | None = None


def clean_filename(name: str | None) -> str:
    """A display name for metadata only (never a path): last path component, no control characters."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFC", _CONTROL.sub("", name)).strip()
    name = name.encode("utf-8", "replace").decode("utf-8")[:255]
    return name or "unnamed"


def accept_uploads(
    uploads: Iterable[Upload],
    *,
    images: ImageStore,
    backend: VectorBackend,
    jobs: JobStore,
    enqueue: Enqueue,
    batch_size: int,
    max_pixels: int,
) -> tuple[str, list[Accepted]]:
    """Store each valid upload content-addressed and queue the new ones for embedding in batches.

    A file that is not an image is rejected without affecting the others. Bytes already stored and
    already indexed (or repeated within this request) are reported as duplicates and not re-embedded.
    Returns the job id and one entry per upload, in order.
    """
    results: list[Accepted] = []
    seen: set[str] = set()
    existing: list[str] = []  # stored before this request: indexed already, or still to do
    for upload in uploads:
        filename = clean_filename(upload.filename)
        try:
            probe(upload.data, max_pixels=max_pixels)
        except ImageError as exc:
            results.append(Accepted(None, filename, "rejected", str(exc)))
            continue
        image_id, created = images.put(upload.data)
        if image_id in seen:
            results.append(Accepted(image_id, filename, "duplicate"))
            continue
        seen.add(image_id)
        if not created:
            existing.append(image_id)
        results.append(Accepted(image_id, filename, "queued"))

    indexed = _indexed_ids(backend, existing)
    results = [
        Accepted(r.id, r.filename, "duplicate") if r.status == "queued" and r.id in indexed else r
        for r in results
    ]
    queued = [{"id": r.id, "filename": r.filename} for r in results if r.status == "queued"]
    job_id = jobs.create(total=len(results))
    skipped = [r for r in results if r.status != "queued"]
    if skipped:  # duplicates count as done, rejections as failed, right away
        jobs.finish_batch(
            job_id, "upload",
            done=sum(r.status == "duplicate" for r in skipped),
            errors=[FileError(r.id, r.filename, r.error or "") for r in skipped if r.status == "rejected"],
        )
    for n, start in enumerate(range(0, len(queued), batch_size)):
        enqueue(job_id, f"b{n}", queued[start:start + batch_size])
    return job_id, results


def _indexed_ids(backend: VectorBackend, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    try:
        return set(backend.get(ids))
    except BackendUnavailable:
        # Can't tell: embed again. Upserts are idempotent, so the worst case is wasted work, never a loss.
        log.warning("backend unavailable while checking %d stored uploads; re-embedding them", len(ids))
        return set()


@dataclass(frozen=True)
class BatchResult:
    done: int
    errors: list[FileError]


def embed_batch(
    items: Sequence[dict[str, str]],
    *,
    images: ImageStore,
    backend: VectorBackend,
    embedder: Embedder,
    pool: Executor,
    max_pixels: int,
) -> BatchResult:
    """Decode the batch in parallel, embed it in one model call, upsert it in one backend call.

    An image that cannot be read fails alone (and its file is removed from the store, since it can never
    be indexed). BackendUnavailable propagates so the caller can retry the whole batch later.
    """
    size = embedder.image_size

    def prepare(item: dict[str, str]) -> tuple[ImageRecord, np.ndarray] | FileError:
        image_id, filename = item["id"], item["filename"]
        try:
            path = images.path(image_id)
            loaded = load_image(path, min_side=size, max_pixels=max_pixels)
            pixels = to_model_input(loaded.image, size)
            record = ImageRecord(
                id=image_id, filename=filename, size_bytes=path.stat().st_size, format=loaded.format,
                width=loaded.width, height=loaded.height, model=embedder.info.label(),
            )
            return record, pixels
        except ImageError as exc:
            images.delete(image_id)
            return FileError(image_id, filename, str(exc))
        except (FileNotFoundError, ValueError) as exc:
            return FileError(image_id, filename, f"image file missing from the store: {exc}")

    prepared = list(pool.map(prepare, items))
    errors = [p for p in prepared if isinstance(p, FileError)]
    good = [p for p in prepared if not isinstance(p, FileError)]
    if good:
        vectors = embedder.encode_images([pixels for _, pixels in good])
        backend.upsert([record for record, _ in good], vectors)
    return BatchResult(done=len(good), errors=errors)


def search_image(
    data: bytes, k: int, *, embedder: Embedder, backend: VectorBackend, max_pixels: int
) -> list[Hit]:
    """The k indexed images most similar to `data`. Raises ImageError if it is not a decodable image."""
    loaded = load_image(data, min_side=embedder.image_size, max_pixels=max_pixels)
    vector = embedder.encode_images([to_model_input(loaded.image, embedder.image_size)])[0]
    return backend.search(vector, k)


def search_text(text: str, k: int, *, embedder: Embedder, backend: VectorBackend) -> list[Hit]:
    """The k indexed images that best match a text description."""
    return backend.search(embedder.encode_text([text])[0], k)


def delete_image(image_id: str, *, images: ImageStore, backend: VectorBackend) -> bool:
    """Remove the vector and the file; True if either existed."""
    removed_vector = backend.delete([image_id]) > 0
    removed_file = images.delete(image_id)
    return removed_vector or removed_file
