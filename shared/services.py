"""The composition root: `Proxima.from_settings(settings)` builds every service once, and holds the
operations that the API routes, the page, the workers and the scripts share.

    settings ─▶ Redis client ─▶ JobStore, RedisManifest, TaskQueue (Celery producer)
             ─▶ ImageStore
             ─▶ VectorBackend (the chosen database)
             ─▶ the model (optional: the API and the workers load one, scripts that only queue work don't)

Each entry point builds exactly one `Proxima` when its process starts (the API in its lifespan, a worker in
`workers.tasks.context`, a script in `main()`, tests in their fixtures) and closes it at the end.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis

from shared import pipeline
from shared.backends import Hit, ImageRecord, VectorBackend, make_backend
from shared.backfill import BackfillReport, backfill_metadata
from shared.config import Settings
from shared.filters import MAX_LABELS, SearchFilter, label, labels
from shared.imagestore import ImageStore, is_image_id
from shared.ingest import RedisManifest, WalkStats, resolve_under, walk_folder
from shared.jobs import JobStore
from shared.labels import Collection, CollectionRegistry
from shared.pipeline import FIRST_PAGE, Page
from shared.queue import EMBED_BATCH, INGEST_FILES, RECONCILE_REPORT_KEY, TaskQueue
from shared.reconcile import ReconcileReport, reconcile
from shared.types import (
    Accepted,
    BackendError,
    BackendUnavailable,
    BadInput,
    ClientCounts,
    Encoder,
    Forbidden,
    Job,
    JobClosed,
    NotFound,
    TooLarge,
    Upload,
)

log = logging.getLogger(__name__)

REDIS_CONNECT_TIMEOUT_S = 3
REDIS_TIMEOUT_S = 30  # longer than any single command we send (pipelines of 512 lookups included)


def connect_redis(settings: Settings) -> redis.Redis:
    """The one Redis client of a process (jobs, manifest, queue depth)."""
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
                                socket_timeout=REDIS_TIMEOUT_S)


@dataclass
class Proxima:
    settings: Settings
    images: ImageStore
    backend: VectorBackend
    jobs: JobStore
    manifest: RedisManifest
    queue: TaskQueue
    redis: redis.Redis
    collections: CollectionRegistry
    encoder: Encoder | None = None  # the model, for searches (and, in a worker, for embedding)
    walks: dict[str, threading.Event] = field(default_factory=dict)  # folder walks running here → stop flag

    @classmethod
    def from_settings(cls, settings: Settings, *, encoder: Encoder | None = None) -> Proxima:
        client = connect_redis(settings)
        return cls(settings=settings, images=ImageStore(settings.images_dir), backend=make_backend(settings),
                   jobs=JobStore(client, ttl_s=settings.job_ttl_days * 86400), manifest=RedisManifest(client),
                   queue=TaskQueue.from_settings(settings, client), redis=client,
                   collections=CollectionRegistry(client), encoder=encoder)

    def close(self) -> None:
        for stop in list(self.walks.values()):
            stop.set()  # running folder walks seal their jobs and end
        self.backend.close()
        self.queue.close()
        self.redis.close()

    @property
    def model(self) -> Encoder:
        if self.encoder is None:
            raise RuntimeError("this process was built without a model (Proxima.from_settings(encoder=...))")
        return self.encoder

    def check_index(self, *, tolerate_outage: bool = False) -> None:
        """Create the index for the model if missing; SchemaMismatch if it holds another model's vectors.
        With `tolerate_outage`, a database that is down is only logged (the API starts anyway and answers
        503 until it is back; the workers create the index)."""
        try:
            self.backend.ensure_schema(self.model.info)
        except BackendUnavailable as exc:
            if not tolerate_outage:
                raise
            log.warning("vector backend unavailable at start-up: %s", exc)

    # --- uploads and jobs --------------------------------------------------------------------------

    def send_embed(self, job_id: str, batch_key: str, items: list[dict]) -> None:
        """Queue a batch of stored uploads and note it in its job (so a batch the queue loses is sent again)."""
        self.queue.embed(job_id, batch_key, items)
        self.jobs.record_sent(job_id, batch_key, EMBED_BATCH, items)

    def send_ingest(self, job_id: str, batch_key: str, items: list[dict]) -> None:
        """Queue a batch of a folder's files and note it in its job."""
        self.queue.ingest(job_id, batch_key, items)
        self.jobs.record_sent(job_id, batch_key, INGEST_FILES, items)

    def resend_lost_batches(self, suspects: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Look, while the queue is idle (nothing queued, nothing being worked on), for batches of unfinished
        jobs that were never counted: those already in `suspects` (lost at the previous look too) are sent
        again; the others are returned, to be passed to the next look. Sending a batch twice is harmless:
        upserts are idempotent and a batch is counted once."""
        if self.queue.depth() or self.queue.in_flight():
            return set()
        lost = {(job_id, key): (task, items) for job_id, key, task, items in self.jobs.lost_batches()}
        for job_id, key in lost.keys() & suspects:
            log.warning("job %s: batch %s was lost by the queue (a worker died as it took it); sending it again",
                        job_id, key)
            self.queue.send_batch(lost[job_id, key][0], job_id, key, lost[job_id, key][1])
        return set(lost) - suspects

    def accept(self, uploads: Sequence[Upload], job_id: str | None = None,
               collection: str | None = None) -> tuple[str, list[Accepted]]:
        """Store uploads and queue them for indexing: a new job, or the open job `job_id`; with `collection`,
        the images go into that collection (created if new)."""
        collections = self._collections(collection)
        if job_id is not None:
            job = self.job(job_id)
            if not job.walking:
                raise JobClosed(f"job {job_id} is not open for more images")
        limit = self.settings.max_files_per_request
        if len(uploads) > limit:
            raise TooLarge(f"{len(uploads)} files in one request; the limit is {limit} (MAX_FILES_PER_REQUEST)")
        return pipeline.accept_uploads(uploads, images=self.images, backend=self.backend, jobs=self.jobs,
                                       enqueue=self.send_embed, batch_size=self.settings.effective_batch_size,
                                       max_pixels=self.settings.max_image_pixels, job_id=job_id,
                                       collections=collections)

    def _collections(self, name: str | None) -> tuple[str, ...]:
        """The checked collection an upload or ingest names (registered), or none."""
        if not name:
            return ()
        collections = (label(name, "collection name"),)
        self.collections.ensure(collections)
        return collections

    def open_job(self, label: str) -> str:
        """A job that several `accept(..., job_id)` calls add to, until `seal_job`."""
        return self.jobs.create(kind="folder", sealed=False, path=label)

    def seal_job(self, job_id: str, counts: ClientCounts | None = None) -> Job:
        """No more images will come: the job completes when the queued ones are done. `counts`: what the
        client found on its side without uploading (duplicates count as done)."""
        self.job(job_id)
        counts = counts or ClientCounts()
        self.jobs.add_found(job_id, seen=counts.seen, skipped=counts.skipped, duplicates=counts.duplicates,
                            reasons=counts.skipped_reasons, seal=True)
        return self.job(job_id)

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id[:64]!r}")
        return job

    # --- folder ingest -------------------------------------------------------------------------------

    def ingest_folder(self, folder: Path, job_id: str, *, recursive: bool, batch_size: int | None = None,
                      roots: Sequence[Path] | None = None, on_progress: Callable[[WalkStats], None] | None = None,
                      stop: threading.Event | None = None, collection: str | None = None) -> WalkStats:
        """Walk `folder` here, queue its new images as path batches of the open job `job_id`, seal it."""
        return walk_folder(folder, job_id, recursive=recursive, collections=self._collections(collection),
                           batch_size=batch_size or self.settings.effective_batch_size, jobs=self.jobs,
                           backend=self.backend, manifest=self.manifest, enqueue=self.send_ingest,
                           queue_depth=self.queue.depth, max_queued=self.settings.ingest_max_queued, roots=roots,
                           on_progress=on_progress or (lambda stats: None), stop=stop)

    def start_folder_ingest(self, path: str, recursive: bool = True,
                            collection: str | None = None) -> tuple[str, Path]:
        """Walk a folder under INGEST_ROOTS in a background thread; returns (job id, resolved folder).
        Raises Forbidden (disabled, outside the roots, a symlink out of them) or NotFound."""
        roots = self.settings.ingest_roots
        if not roots:
            raise Forbidden("folder ingest through the API is disabled: set INGEST_ROOTS on the server")
        folder = resolve_under(path, roots)
        if not folder.is_dir():
            raise NotFound(f"{path!r} is not a folder on the server")
        self._collections(collection)  # checked before the job starts
        job_id = self.open_job(str(folder))
        stop = threading.Event()
        self.walks[job_id] = stop
        threading.Thread(target=self._walk, args=(folder, job_id, recursive, stop, collection),
                         name=f"walk-{job_id[:8]}", daemon=True).start()
        return job_id, folder

    def _walk(self, folder: Path, job_id: str, recursive: bool, stop: threading.Event,
              collection: str | None) -> None:
        try:
            self.ingest_folder(folder, job_id, recursive=recursive, roots=self.settings.ingest_roots, stop=stop,
                               collection=collection)
        except InterruptedError:
            log.warning("folder ingest %s stopped before the walk ended; run it again to finish", job_id)
        except Exception:
            log.exception("folder ingest %s failed", job_id)
        finally:
            self.walks.pop(job_id, None)

    # --- searches and images -----------------------------------------------------------------------

    def search_image(self, data: bytes, page: Page = FIRST_PAGE) -> list[Hit]:
        return pipeline.search_image(data, page, embedder=self.model, backend=self.backend,
                                     max_pixels=self.settings.max_image_pixels)

    def search_text(self, text: str, page: Page = FIRST_PAGE) -> list[Hit]:
        return pipeline.search_text(text, page, embedder=self.model, backend=self.backend)

    def similar(self, image_id: str, page: Page = FIRST_PAGE) -> list[Hit]:
        hits = pipeline.search_similar(image_id, page, backend=self.backend) if is_image_id(image_id) else None
        if hits is None:
            raise NotFound(f"no indexed image with id {image_id[:80]!r}")
        return hits

    # --- metadata, collections and tags ------------------------------------------------------------------

    def record(self, image_id: str) -> ImageRecord:
        """The metadata of an indexed image; NotFound otherwise."""
        record = self.backend.get([image_id]).get(image_id) if is_image_id(image_id) else None
        if record is None:
            raise NotFound(f"no indexed image with id {image_id[:80]!r}")
        return record

    def relabel(self, image_id: str, *, add_collections: Sequence[str] = (), remove_collections: Sequence[str] = (),
                tags: Sequence[str] | None = None, add_tags: Sequence[str] = (),
                remove_tags: Sequence[str] = ()) -> ImageRecord:
        """Change an image's collections and tags (`tags` replaces them all; the others add or remove); names
        are checked, new collections registered. Returns the updated record."""
        record = self.record(image_id)
        add_collections = labels(add_collections, "collection name")
        self.collections.ensure(add_collections)
        gone_collections = set(labels(remove_collections, "collection name"))
        collections = [c for c in dict.fromkeys([*record.collections, *add_collections]) if c not in gone_collections]
        base = labels(tags, "tag") if tags is not None else record.tags
        gone_tags = set(labels(remove_tags, "tag"))
        new_tags = [t for t in dict.fromkeys([*base, *labels(add_tags, "tag")]) if t not in gone_tags]
        if len(collections) > MAX_LABELS or len(new_tags) > MAX_LABELS:
            raise BadInput(f"an image is in at most {MAX_LABELS} collections and has at most {MAX_LABELS} tags")
        if self.backend.set_labels({image_id: (collections, new_tags)}) == 0:
            raise NotFound(f"no indexed image with id {image_id[:80]!r}")
        return record.with_labels(collections, new_tags)

    def create_collection(self, name: str, description: str = "") -> tuple[Collection, bool]:
        return self.collections.create(name, description)

    def collection_size(self, name: str) -> int | None:
        """How many indexed images a collection holds (None while the backend is down)."""
        try:
            return self.backend.count(SearchFilter(collections=(name,)))
        except BackendUnavailable:
            return None

    def list_collections(self) -> list[tuple[Collection, int | None]]:
        """Every collection with how many indexed images it holds."""
        return [(c, self.collection_size(c.name)) for c in self.collections.all()]

    def stored_path(self, image_id: str) -> Path:
        """The stored file of an image; NotFound for a malformed or unknown id."""
        if not is_image_id(image_id):
            raise NotFound("no such image (ids are 64 lowercase hex characters)")
        path = self.images.path(image_id)
        if not path.is_file():
            raise NotFound(f"no image with id {image_id}")
        return path

    def thumbnail(self, image_id: str) -> Path:
        self.stored_path(image_id)
        try:
            return self.images.thumbnail(image_id)
        except FileNotFoundError:
            raise NotFound(f"no image with id {image_id}") from None

    def delete(self, image_id: str) -> None:
        """Delete the vector and the stored file; NotFound if neither existed."""
        if not is_image_id(image_id) or not pipeline.delete_image(image_id, images=self.images,
                                                                  backend=self.backend):
            raise NotFound(f"no image with id {image_id[:80]!r}")

    # --- operations ------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Backend, model identity and capabilities (text search or not), number of vectors and queue depth;
        `status` is `degraded` if a service is down."""
        problems: list[str] = []
        vectors = queue_depth = None
        try:
            vectors = self.backend.count()
        except BackendError as exc:
            problems.append(f"vector backend: {exc}")
        try:
            queue_depth = self.queue.depth()
        except redis.RedisError as exc:
            problems.append(f"redis: {exc}")
        info = self.model.info
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "backend": self.backend.name,
            "model": {"extractor": info.extractor, "name": info.name, "pretrained": info.pretrained, "dim": info.dim,
                      "random": info.is_random, "runtime": self.model.runtime, "precision": self.model.precision},
            "capabilities": {"image_search": True, "text_search": self.model.has_text},
            "vectors": vectors,
            "queue_depth": queue_depth,
        }

    def reconcile(self, *, requeue: bool = True, delete_orphans: bool = False,
                  on_progress: Callable[[ReconcileReport], None] | None = None) -> ReconcileReport:
        """Stored images without a vector are queued again (one job); vectors without a file are reported
        (deleted with `delete_orphans`)."""
        return reconcile(images=self.images, backend=self.backend, jobs=self.jobs, enqueue=self.send_embed,
                         batch_size=self.settings.effective_batch_size, requeue=requeue,
                         delete_orphans=delete_orphans, on_progress=on_progress)

    def backfill_metadata(self, on_progress: Callable[[BackfillReport], None] | None = None) -> BackfillReport:
        """EXIF metadata for images indexed before it was read, from their stored files (no re-embedding)."""
        return backfill_metadata(self.backend, self.images, on_progress=on_progress or (lambda report: None))

    def last_reconcile(self) -> str | None:
        """The JSON report of the last reconcile a worker finished."""
        raw = self.redis.get(RECONCILE_REPORT_KEY)
        return raw.decode() if isinstance(raw, bytes) else raw

    def save_reconcile(self, report_json: str) -> None:
        self.redis.set(RECONCILE_REPORT_KEY, report_json)


class JobTarget(Protocol):
    """Where `upload_files` sends files: a `Proxima` in-process, or a `shared.client.ApiClient` over HTTP."""

    def open_job(self, label: str) -> str: ...
    def accept(self, uploads: Sequence[Upload], job_id: str | None = None,
               collection: str | None = None) -> tuple[str, list[Accepted]]: ...
    def seal_job(self, job_id: str, counts: ClientCounts | None = None) -> Job: ...


def upload_files(target: JobTarget, paths: Iterable[Path], *, label: str, chunk: int = 64,
                 collection: str | None = None) -> str:
    """Add files to one new open job, `chunk` at a time (bounded memory, steady progress), then seal it."""
    paths = list(paths)
    job_id = target.open_job(label)
    for start in range(0, len(paths), chunk):
        target.accept([Upload.from_path(p) for p in paths[start:start + chunk]], job_id, collection)
    target.seal_job(job_id)
    return job_id
