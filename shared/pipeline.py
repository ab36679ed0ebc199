"""The operations on images and vectors: accept uploads, embed a batch, search, delete.

Dependencies are passed in as keyword arguments so the same function runs in any process. Entry points do
not call these directly: they go through `shared.services.Proxima`, which holds the dependencies and
adds the job-level rules; the workers' tasks call `embed_batch` with their own decoder.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.backends import Hit, ImageRecord, VectorBackend
from shared.decode import Decoder
from shared.embedder import Embedder
from shared.imagestore import ImageStore
from shared.imaging import load_image, probe, to_model_input
from shared.jobs import JobStore
from shared.types import (
    Accepted,
    BackendUnavailable,
    BatchResult,
    Encoder,
    FileError,
    ImageError,
    QueryError,
    StageTimes,
    Upload,
)

log = logging.getLogger(__name__)

# enqueue(job_id, batch_key, items): hand one batch of items ({"id", "filename"} or a folder's
# {"path", "size", "mtime_ns"}) to the workers
Enqueue = Callable[[str, str, list[dict]], None]

MAX_QUERY_CHARS = 1000  # CLIP reads about 75 words; longer texts are refused rather than cut silently
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
    job_id: str | None = None,
) -> tuple[str, list[Accepted]]:
    """Store each valid upload content-addressed and queue the new ones for embedding in batches.

    A file that is not an image is rejected without affecting the others. Bytes already stored and
    already indexed (or repeated within this request) are reported as duplicates and not re-embedded.
    The uploads form a new job, or are added to the open job `job_id` (a client-side folder ingest).
    Returns the job id and one entry per upload, in order.
    """
    uploads = list(uploads)
    # The job first: with Redis down the request fails here, before any file is stored.
    if job_id is None:
        job_id = jobs.create(total=len(uploads))
    else:
        jobs.add(job_id, counts={"total": len(uploads), "seen": len(uploads)})
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

    indexed = indexed_ids(backend, existing)
    results = [
        Accepted(r.id, r.filename, "duplicate") if r.status == "queued" and r.id in indexed else r
        for r in results
    ]
    queued = [{"id": r.id, "filename": r.filename} for r in results if r.status == "queued"]
    request_key = uuid.uuid4().hex[:12]  # batch keys stay unique when several requests share a job
    skipped = [r for r in results if r.status != "queued"]
    if skipped:  # duplicates count as done, rejections as failed, right away
        jobs.finish_batch(
            job_id, f"{request_key}-upload",
            done=sum(r.status == "duplicate" for r in skipped),
            errors=[FileError(r.id, r.filename, r.error or "") for r in skipped if r.status == "rejected"],
            duplicates=sum(r.status == "duplicate" for r in skipped),
        )
    for n, start in enumerate(range(0, len(queued), batch_size)):
        enqueue(job_id, f"{request_key}-b{n}", queued[start:start + batch_size])
    return job_id, results


def indexed_ids(backend: VectorBackend, ids: Sequence[str]) -> set[str]:
    """Which of `ids` the backend has; none if it cannot tell right now (they are then embedded again:
    upserts are idempotent, so the worst case is wasted work, never a loss)."""
    if not ids:
        return set()
    try:
        return set(backend.get(ids))
    except BackendUnavailable:
        log.warning("backend unavailable while checking %d images; queueing them again", len(ids))
        return set()


@dataclass(frozen=True)
class Pending:
    """An image in the store, about to be embedded."""

    id: str
    filename: str
    source: bytes | Path  # its bytes if already in memory, else its stored path
    size_bytes: int


def embed_batch(
    items: Sequence[dict[str, str]],
    *,
    images: ImageStore,
    backend: VectorBackend,
    embedder: Embedder,
    decoder: Decoder,
    times: StageTimes | None = None,
) -> BatchResult:
    """Embed a batch of stored uploads ({"id", "filename"} items) and upsert it in one backend call.

    An image that cannot be read fails alone (and its file is removed from the store, since it can never
    be indexed). BackendUnavailable propagates so the caller can retry the whole batch later.
    """
    pending, errors = [], []
    for item in items:
        path = images.path(item["id"])
        try:
            pending.append(Pending(item["id"], item["filename"], path, path.stat().st_size))
        except FileNotFoundError:
            errors.append(FileError(item["id"], item["filename"], "image file missing from the store"))
    done, failed = embed_pending(pending, backend=backend, embedder=embedder, decoder=decoder, times=times)
    for p in pending:
        if p.id in failed:
            images.delete(p.id)
            errors.append(FileError(p.id, p.filename, failed[p.id]))
    return BatchResult(done=done, errors=errors)


def embed_pending(
    pending: Sequence[Pending], *, backend: VectorBackend, embedder: Embedder, decoder: Decoder,
    times: StageTimes | None = None,
) -> tuple[int, dict[str, str]]:
    """Decode the batch (CPU pool and/or GPU, see shared/decode.py), embed it in one model call, upsert it
    in one backend call. Returns how many were embedded and {id: why} for those that could not be decoded.
    """
    times = times or StageTimes()
    decoded, failed = decoder.decode([(p.id, p.source) for p in pending], times)
    good = [p for p in pending if p.id in decoded]
    if good:
        vectors = embedder.encode_images([decoded[p.id].pixels for p in good], times)
        records = [ImageRecord(id=p.id, filename=p.filename, size_bytes=p.size_bytes, format=decoded[p.id].format,
                               width=decoded[p.id].width, height=decoded[p.id].height, model=embedder.info.label())
                   for p in good]
        with times.timing("upsert"):
            backend.upsert(records, vectors)
    return len(good), failed


def search_image(
    data: bytes, k: int, *, embedder: Encoder, backend: VectorBackend, max_pixels: int
) -> list[Hit]:
    """The k indexed images most similar to `data`. Raises ImageError if it is not a decodable image."""
    loaded = load_image(data, min_side=embedder.image_size, max_pixels=max_pixels)
    vector = embedder.encode_images([to_model_input(loaded.image, embedder.image_size)])[0]
    return backend.search(vector, k)


def check_query_text(text: str) -> str:
    """The text stripped; QueryError (a ValueError) if it is empty or longer than MAX_QUERY_CHARS."""
    text = text.strip()
    if not text:
        raise QueryError("the text is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the text is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
    return text


def search_text(text: str, k: int, *, embedder: Encoder, backend: VectorBackend) -> list[Hit]:
    """The k indexed images that best match a text description (QueryError if empty or too long)."""
    return backend.search(embedder.encode_text([check_query_text(text)])[0], k)


def search_similar(image_id: str, k: int, *, backend: VectorBackend) -> list[Hit] | None:
    """The k images most like an indexed one, from its stored vector (no re-embedding), itself excluded.
    None if the id is not indexed."""
    vector = backend.get_vectors([image_id]).get(image_id)
    if vector is None:
        return None
    return backend.search(vector, k, exclude=[image_id])


def delete_image(image_id: str, *, images: ImageStore, backend: VectorBackend) -> bool:
    """Remove the vector and the file; True if either existed."""
    removed_vector = backend.delete([image_id]) > 0
    removed_file = images.delete(image_id)
    return removed_vector or removed_file
