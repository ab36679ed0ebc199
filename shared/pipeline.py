"""The operations on images and vectors: accept uploads, embed a batch, search, delete.

Dependencies are passed in as keyword arguments so the same function runs in any process. Entry points do
not call these directly: they go through `shared.services.Proxima`, which holds the dependencies and
adds the job-level rules; the workers' tasks call `embed_batch` with their own decoder.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared import metrics
from shared.backends import Hit, ImageRecord, VectorBackend
from shared.decode import Decoder
from shared.embedder import Embedder
from shared.filters import MAX_DEPTH, NO_FILTER, SearchFilter
from shared.imagestore import ImageStore
from shared.imaging import load_image, probe, to_model_input
from shared.jobs import JobStore
from shared.metadata import read_metadata
from shared.types import (
    Accepted,
    BackendUnavailable,
    BadInput,
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
    collections: Sequence[str] = (),
) -> tuple[str, list[Accepted]]:
    """Store each valid upload content-addressed and queue the new ones for embedding in batches.

    A file that is not an image is rejected without affecting the others. Bytes already stored and
    already indexed (or repeated within this request) are reported as duplicates and not re-embedded.
    The uploads form a new job, or are added to the open job `job_id` (a client-side folder ingest).
    With `collections`, every accepted image lands in them (duplicates included: they are added at once).
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
    if collections and indexed:
        add_to_collections(backend, sorted(indexed), collections)
    results = [
        Accepted(r.id, r.filename, "duplicate") if r.status == "queued" and r.id in indexed else r
        for r in results
    ]
    extra = {"collections": list(collections)} if collections else {}
    queued = [{"id": r.id, "filename": r.filename, **extra} for r in results if r.status == "queued"]
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
    metrics.record_images("upload", "duplicate", sum(r.status == "duplicate" for r in skipped))
    metrics.record_images("upload", "failed", sum(r.status == "rejected" for r in skipped))
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
    path: str = ""  # folder ingests: relative to the ingest root
    collections: tuple[str, ...] = ()


def add_to_collections(backend: VectorBackend, ids: Sequence[str], collections: Sequence[str]) -> int:
    """Put indexed images into collections (an image uploaded again into another album); returns how many
    of the ids are indexed."""
    if not collections or not ids:
        return 0
    stored = backend.get(list(ids))
    changes: dict[str, tuple[Sequence[str], Sequence[str]]] = {
        image_id: (list(dict.fromkeys([*rec.collections, *collections])), list(rec.tags))
        for image_id, rec in stored.items() if not set(collections) <= set(rec.collections)}
    backend.set_labels(changes)
    return len(stored)


def embed_batch(
    items: Sequence[dict[str, str]],
    *,
    images: ImageStore,
    backend: VectorBackend,
    embedder: Embedder,
    decoder: Decoder,
    times: StageTimes | None = None,
) -> BatchResult:
    """Embed a batch of stored uploads ({"id", "filename"[, "collections"]} items) and upsert it in one
    backend call.

    An image that cannot be read fails alone (and its file is removed from the store, since it can never
    be indexed). BackendUnavailable propagates so the caller can retry the whole batch later.
    """
    pending, errors = [], []
    for item in items:
        path = images.path(item["id"])
        try:
            pending.append(Pending(item["id"], item["filename"], path, path.stat().st_size,
                                   collections=tuple(item.get("collections", ()))))
        except FileNotFoundError:
            errors.append(FileError(item["id"], item["filename"], "image file missing from the store"))
    done, failed = embed_pending(pending, backend=backend, embedder=embedder, decoder=decoder, times=times)
    for p in pending:
        if p.id in failed:
            images.delete(p.id)
            errors.append(FileError(p.id, p.filename, failed[p.id]))
    return BatchResult(done=done, errors=errors, embedded=tuple(p.id for p in pending if p.id not in failed))


def embed_pending(
    pending: Sequence[Pending], *, backend: VectorBackend, embedder: Embedder, decoder: Decoder,
    times: StageTimes | None = None, kept: Mapping[str, ImageRecord] | None = None,
) -> tuple[int, dict[str, str]]:
    """Decode the batch (CPU pool and/or GPU, see shared/decode.py) and read each file's EXIF metadata,
    embed it in one model call, upsert it in one backend call. Returns how many were embedded and
    {id: why} for those that could not be decoded. `kept`: records already indexed under another model
    (a re-embed), whose name, ingest time, path, collections and tags the new records keep.
    """
    times = times or StageTimes()
    decoded, failed = decoder.decode([(p.id, p.source) for p in pending], times)
    good = [p for p in pending if p.id in decoded]
    if good:
        with times.timing("read"):
            found = list(decoder.pool.map(read_metadata, [p.source for p in good]))
        vectors = embedder.encode_images([decoded[p.id].pixels for p in good], times)
        label = embedder.info.label()
        records = [ImageRecord(id=p.id, filename=p.filename, size_bytes=p.size_bytes, format=decoded[p.id].format,
                               width=decoded[p.id].width, height=decoded[p.id].height, model=label,
                               captured_at=meta.captured_at, camera_make=meta.camera_make,
                               camera_model=meta.camera_model, latitude=meta.latitude, longitude=meta.longitude,
                               orientation=meta.orientation, path=p.path, collections=p.collections)
                   for p, meta in zip(good, found, strict=True)]
        if kept:
            records = [_keep(rec, kept[rec.id]) if rec.id in kept else rec for rec in records]
        with times.timing("upsert"):
            backend.upsert(records, vectors)
    return len(good), failed


def _keep(new: ImageRecord, old: ImageRecord) -> ImageRecord:
    """`new` (another model's vector of the same file) with what `old` knew that the file does not say."""
    return dataclasses.replace(new, filename=old.filename, created_at=old.created_at, path=old.path or new.path,
                               collections=old.collections, tags=old.tags)


@dataclass(frozen=True)
class Page:
    """Which results of a search: `top_k` of them after skipping `offset` (offset + top_k ≤ MAX_DEPTH),
    among the images matching `where`, none scoring below `min_score`. Results are ordered by score, then
    id, so the pages of one query follow each other without gaps or repeats while the index is unchanged."""

    top_k: int = 10
    offset: int = 0
    where: SearchFilter = NO_FILTER
    min_score: float | None = None

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.offset < 0:
            raise BadInput("top_k is at least 1 and offset at least 0")
        if self.offset + self.top_k > MAX_DEPTH:
            raise BadInput(f"offset + top_k is at most {MAX_DEPTH} (results are paged that deep); narrow the "
                           "search with filters or min_score instead")
        if self.min_score is not None and not -1.0 <= self.min_score <= 1.0:
            raise BadInput("min_score is a cosine similarity, between -1 and 1")

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], *, top_k: int = 10, offset: int = 0) -> Page:
        """The page the API's filter fields ask for (`api.routes.search.Filters`: `format`, `camera`,
        `collection`, `tag`, `any_tag`, `min_score`, ...); BadInput naming the field for a bad value."""
        where = SearchFilter.build(
            captured_from=fields.get("captured_from"), captured_to=fields.get("captured_to"),
            ingested_from=fields.get("ingested_from"), ingested_to=fields.get("ingested_to"),
            formats=fields.get("format"), min_width=fields.get("min_width"), min_height=fields.get("min_height"),
            cameras=fields.get("camera"), has_gps=fields.get("has_gps"), bbox=fields.get("bbox"),
            collections=fields.get("collection"), tags_all=fields.get("tag"), tags_any=fields.get("any_tag"),
            path_prefix=fields.get("path_prefix"))
        return cls(top_k=top_k, offset=offset, where=where, min_score=fields.get("min_score"))

    def next_offset(self, found: int) -> int | None:
        """The offset of the next page after this one returned `found` results: None when it was not full
        (no more), or when another page would go deeper than MAX_DEPTH."""
        more = found == self.top_k and self.offset + 2 * self.top_k <= MAX_DEPTH
        return self.offset + self.top_k if more else None

    def run(self, backend: VectorBackend, vector: np.ndarray, exclude: Sequence[str] = ()) -> list[Hit]:
        where = None if self.where.is_empty() else self.where
        hits = backend.search(vector, self.offset + self.top_k, exclude=exclude, where=where)[self.offset:]
        if self.min_score is not None:
            hits = [h for h in hits if h.score >= self.min_score]
        return hits


FIRST_PAGE = Page()


def search_image(data: bytes, page: Page, *, embedder: Encoder, backend: VectorBackend, max_pixels: int) -> list[Hit]:
    """The indexed images most similar to `data`. Raises ImageError if it is not a decodable image."""
    with metrics.search_stage("image", "decode"):
        loaded = load_image(data, min_side=embedder.image_size, max_pixels=max_pixels)
        pixels = to_model_input(loaded.image, embedder.image_size)
    with metrics.search_stage("image", "embed"):
        vector = embedder.encode_images([pixels])[0]
    with metrics.search_stage("image", "vector_search"):
        return page.run(backend, vector)


def check_query_text(text: str) -> str:
    """The text stripped; QueryError (a ValueError) if it is empty or longer than MAX_QUERY_CHARS."""
    text = text.strip()
    if not text:
        raise QueryError("the text is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the text is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
    return text


def search_text(text: str, page: Page, *, embedder: Encoder, backend: VectorBackend) -> list[Hit]:
    """The indexed images that best match a text description (QueryError if empty or too long)."""
    text = check_query_text(text)
    with metrics.search_stage("text", "embed"):
        vector = embedder.encode_text([text])[0]
    with metrics.search_stage("text", "vector_search"):
        return page.run(backend, vector)


def search_similar(image_id: str, page: Page, *, backend: VectorBackend) -> list[Hit] | None:
    """The images most like an indexed one, from its stored vector (no re-embedding), itself excluded.
    None if the id is not indexed."""
    vector = backend.get_vectors([image_id]).get(image_id)
    if vector is None:
        return None
    with metrics.search_stage("similar", "vector_search"):
        return page.run(backend, vector, exclude=[image_id])


def delete_image(image_id: str, *, images: ImageStore, backend: VectorBackend) -> bool:
    """Remove the vector and the file; True if either existed."""
    removed_vector = backend.delete([image_id]) > 0
    removed_file = images.delete(image_id)
    return removed_vector or removed_file
