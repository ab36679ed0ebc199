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

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis

from shared import pipeline
from shared.backends import Hit, ImageRecord, VectorBackend, make_backend
from shared.backfill import BackfillReport, backfill_metadata
from shared.catalog import ACTIVE, IndexEntry, ModelCatalog, model_change_message
from shared.config import Settings
from shared.duplicates import (
    DEFAULT_NEIGHBOURS,
    DEFAULT_THRESHOLD,
    DuplicateStore,
    Group,
    RunState,
    RunTakenOver,
    make_group,
)
from shared.duplicates import run as find_duplicate_groups
from shared.filters import MAX_LABELS, SearchFilter, label, labels
from shared.imagestore import ImageStore, is_image_id
from shared.ingest import RedisManifest, WalkStats, resolve_under, walk_folder
from shared.jobs import JobCancelled, JobPaused, JobStore
from shared.labels import Collection, CollectionRegistry
from shared.pipeline import FIRST_PAGE, Page
from shared.queue import EMBED_BATCH, INGEST_FILES, RECONCILE_REPORT_KEY, REEMBED_BATCH, TaskQueue
from shared.reconcile import ReconcileReport, reconcile
from shared.reembed import Completeness, ReembedStats, check_complete, walk_store
from shared.types import (
    Accepted,
    BackendError,
    BackendUnavailable,
    BadInput,
    ClientCounts,
    Conflict,
    Encoder,
    Forbidden,
    Job,
    JobClosed,
    JobState,
    ModelInfo,
    NotFound,
    SchemaMismatch,
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
    database: VectorBackend  # bound to the base index; the model indexes are its views (shared/catalog.py)
    catalog: ModelCatalog
    jobs: JobStore
    manifest: RedisManifest
    queue: TaskQueue
    redis: redis.Redis
    collections: CollectionRegistry
    duplicates: DuplicateStore
    encoder: Encoder | None = None  # the model the settings name (loaded at start by the API and the workers)
    load_encoder: Callable[[ModelInfo], Encoder] | None = None  # loads another identity's model on demand
    walks: dict[str, threading.Event] = field(default_factory=dict)  # walks running here → stop flag
    _encoders: dict[str, Encoder] = field(default_factory=dict)  # slug → model loaded on demand
    _encoder_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings, *, encoder: Encoder | None = None,
                      load_encoder: Callable[[ModelInfo], Encoder] | None = None) -> Proxima:
        client = connect_redis(settings)
        database = make_backend(settings)
        return cls(settings=settings, images=ImageStore(settings.images_dir), database=database,
                   catalog=ModelCatalog(database), jobs=JobStore(client, ttl_s=settings.job_ttl_days * 86400),
                   manifest=RedisManifest(client), queue=TaskQueue.from_settings(settings, client), redis=client,
                   collections=CollectionRegistry(client), duplicates=DuplicateStore(client), encoder=encoder,
                   load_encoder=load_encoder)

    def close(self) -> None:
        for stop in list(self.walks.values()):
            stop.set()  # running walks seal their jobs and end
        self.database.close()
        self.queue.close()
        self.redis.close()

    # --- the active model and its index ----------------------------------------------------------------

    @property
    def backend(self) -> VectorBackend:
        """The active model's index; label changes and deletes also reach the indexes being built."""
        active, building = self.catalog.snapshot()
        return self.catalog.writable(active, building) if active is not None else self.database

    @property
    def model(self) -> Encoder:
        """The active identity's model (loaded on first need after a switch); the settings' model while the
        catalogue cannot be read (the database is down since this process started)."""
        try:
            active = self.catalog.active()
        except BackendUnavailable:
            active = None
        return self.encoder_for(active.model) if active is not None else self._settings_model()

    def _settings_model(self) -> Encoder:
        if self.encoder is None:
            raise RuntimeError("this process was built without a model (Proxima.from_settings(encoder=...))")
        return self.encoder

    def encoder_for(self, model: ModelInfo) -> Encoder:
        """The model of identity `model`: the settings' one, or loaded once with `load_encoder`."""
        if self.encoder is not None and self.encoder.info.slug == model.slug:
            return self.encoder
        with self._encoder_lock:
            if model.slug not in self._encoders:
                if self.load_encoder is None:
                    raise RuntimeError(f"this process cannot load model {model.label()} (no load_encoder)")
                log.info("loading model %s (%s)", model.label(), model.slug)
                self._encoders[model.slug] = self.load_encoder(model)
            return self._encoders[model.slug]

    def serving(self) -> tuple[VectorBackend, Encoder]:
        """The active index (as `backend`) and its model, read together: a switch between two reads could
        pair one model's vectors with the other's index."""
        active, building = self.catalog.snapshot()
        if active is None:
            return self.database, self._settings_model()
        return self.catalog.writable(active, building), self.encoder_for(active.model)

    def check_index(self, *, tolerate_outage: bool = False, start_reembed: bool = False) -> None:
        """Make sure the settings' model is the active one: the first start creates its index (or adopts the
        index an earlier release made); an index made by an earlier release gains new metadata fields.
        If another model is active: SchemaMismatch saying what to run, or, with MODEL_CHANGE=reembed, a
        re-embed into the settings' model that activates it when complete (started where `start_reembed`:
        the API). With `tolerate_outage`, a database that is down is only logged (the API starts anyway and
        answers 503 until it is back; the workers create the index)."""
        self.check_identity(self._settings_model().info, tolerate_outage=tolerate_outage, start_reembed=start_reembed)

    def check_identity(self, wanted: ModelInfo, *, tolerate_outage: bool = False, start_reembed: bool = False) -> None:
        """`check_index` for the model identity `wanted` (`make up` checks it before starting the API)."""
        try:
            active = self.catalog.bootstrap(wanted)
            self.catalog.view(active).ensure_schema(active.model)
        except BackendUnavailable as exc:
            if not tolerate_outage:
                raise
            log.warning("vector backend unavailable at start-up: %s", exc)
            return
        if active.slug == wanted.slug:
            return
        if self.settings.model_change != "reembed":
            raise SchemaMismatch(model_change_message(active, wanted, self.catalog.find(wanted)))
        log.warning("MODEL_CHANGE=reembed: %s stays active while every image is re-embedded with %s",
                    active.model.label(), wanted.label())
        if start_reembed:
            self.start_reembed(wanted, activate_when_done=True, if_idle=True)

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

    def list_jobs(self, offset: int = 0, limit: int = 20, kind: str | None = None) -> tuple[int, list[Job]]:
        """(number of jobs, a page of them without their error lists), newest first."""
        return self.jobs.page(offset, limit, kind)

    def pause_job(self, job_id: str) -> Job:
        """No new batch of the job starts (running ones finish); its walk waits. Conflict once it is final."""
        return self.jobs.pause(job_id)

    def resume_job(self, job_id: str) -> Job:
        """Go on with a paused job: its parked batches are queued again (a duplicates run is restarted from
        its cursor); its walk, still waiting, goes on by itself."""
        job, parked = self.jobs.resume(job_id)
        for batch_key, task, items in parked:
            self.queue.send_batch(task, job_id, batch_key, items)
        if job.kind == "duplicates" and not self.duplicates.running(job_id):
            self.queue.find_duplicates(job_id)
        return job

    def cancel_job(self, job_id: str) -> Job:
        """Drop what is left of a job; done work stays. A duplicates run's saved progress is discarded."""
        job = self.jobs.cancel(job_id)
        if job.kind == "duplicates" and not self.duplicates.running(job_id):
            self.duplicates.discard(job_id)  # (a worker on it discards it when it sees the cancel)
        if job_id in self.walks:
            self.walks[job_id].set()
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
        self._in_background(job_id, "folder ingest", stop, lambda: self.ingest_folder(
            folder, job_id, recursive=recursive, roots=self.settings.ingest_roots, stop=stop, collection=collection))
        return job_id, folder

    def _in_background(self, job_id: str, what: str, stop: threading.Event, walk: Callable[[], object]) -> None:
        """Run a job's walk in a thread of this process (stopped through `stop` when the process closes)."""
        def run() -> None:
            try:
                walk()
            except JobCancelled:
                log.info("%s %s cancelled; its walk stopped", what, job_id)
            except InterruptedError:
                log.warning("%s %s stopped before its walk ended; run it again to finish", what, job_id)
            except Exception:
                log.exception("%s %s failed", what, job_id)
            finally:
                self.walks.pop(job_id, None)

        self.walks[job_id] = stop
        threading.Thread(target=run, name=f"walk-{job_id[:8]}", daemon=True).start()

    # --- searches and images -----------------------------------------------------------------------

    def search_image(self, data: bytes, page: Page = FIRST_PAGE) -> list[Hit]:
        backend, model = self.serving()
        return pipeline.search_image(data, page, embedder=model, backend=backend,
                                     max_pixels=self.settings.max_image_pixels)

    def search_text(self, text: str, page: Page = FIRST_PAGE) -> list[Hit]:
        backend, model = self.serving()
        return pipeline.search_text(text, page, embedder=model, backend=backend)

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
        models: list[dict[str, Any]] = []
        try:
            models = self.model_indexes()
            vectors = next((m["vectors"] for m in models if m["state"] == ACTIVE), None)
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
            "models": models,
        }

    # --- model changes: re-embed, activate, retire -------------------------------------------------------

    def model_indexes(self) -> list[dict[str, Any]]:
        """Every model identity with its state, index, vector count and re-embed job (the active one first)."""
        out = []
        for entry in self.catalog.entries(fresh=True):
            job = self.jobs.get(entry.job_id) if entry.job_id else None
            out.append({"slug": entry.slug, "state": entry.state, "model": entry.model.label(),
                        "name": entry.model.name, "pretrained": entry.model.pretrained,
                        "extractor": entry.model.extractor, "dim": entry.model.dim, "index": entry.index,
                        "vectors": self.catalog.view(entry).count(), "created_at": entry.created_at,
                        "activated_at": entry.activated_at, "activate_when_done": entry.activate_when_done,
                        "job": job.as_dict() if job else None})
        return out

    def start_reembed(self, model: ModelInfo, *, activate_when_done: bool = False,
                      if_idle: bool = True) -> tuple[str, IndexEntry]:
        """Re-embed every stored image with `model` into its own index, in the background (a walk here, the
        batches on the workers); returns (job id, catalogue entry). Run again after a crash, it re-does only
        the images the new index lacks. `if_idle`: a re-embed to `model` already running is returned as it
        is (else Conflict)."""
        current = self.catalog.find(model)
        if if_idle and current is not None and current.job_id:
            job = self.jobs.get(current.job_id)
            if job is not None and not job.finished and not job.interrupted:
                return current.job_id, current
        job_id, entry = self.begin_reembed(model, activate_when_done=activate_when_done)
        stop = threading.Event()
        self._in_background(job_id, "re-embed", stop, lambda: self.reembed_walk(entry, job_id, stop))
        return job_id, entry

    def begin_reembed(self, model: ModelInfo, *, activate_when_done: bool = False) -> tuple[str, IndexEntry]:
        """The open job and the building index of a re-embed to `model` (`reembed_walk` then fills the job)."""
        if not model.dim:
            raise BadInput(f"the identity of {model.label()} has no dimension: identify the model first")
        current = self.catalog.find(model)
        if current is not None and current.job_id:
            running = self.jobs.get(current.job_id)
            if running is not None and not running.finished and not running.interrupted:
                raise Conflict(f"a re-embed to {model.label()} is already running: job {current.job_id}")
        job_id = self.jobs.create(kind="reembed", sealed=False, path=model.label(), planned="1")
        entry = self.catalog.add_building(model, job_id=job_id, activate_when_done=activate_when_done)
        self.catalog.view(entry).ensure_schema(entry.model)
        return job_id, entry

    def reembed_walk(self, entry: IndexEntry, job_id: str, stop: threading.Event | None = None,
                     on_progress: Callable[[ReembedStats], None] | None = None) -> ReembedStats:
        """Queue the stored images `entry`'s index lacks, as batches of the open job `job_id`, then seal it."""
        return walk_store(images=self.images, target=self.catalog.view(entry), jobs=self.jobs,
                          job_id=job_id, slug=entry.slug, enqueue=self.send_reembed,
                          batch_size=self.settings.effective_batch_size, queue_depth=self.queue.depth,
                          max_queued=self.settings.ingest_max_queued, stop=stop,
                          on_progress=on_progress or (lambda stats: None))

    def send_reembed(self, job_id: str, batch_key: str, items: list[dict]) -> None:
        self.queue.send_batch(REEMBED_BATCH, job_id, batch_key, items)
        self.jobs.record_sent(job_id, batch_key, REEMBED_BATCH, items)

    def completeness(self, slug: str) -> Completeness:
        """How far `slug`'s index is from holding exactly the stored images."""
        entry = self.catalog.get(slug)
        return check_complete(self.images, self.catalog.view(entry))

    def activate(self, slug: str, *, force: bool = False) -> IndexEntry:
        """Serve searches from `slug`'s index from now on (every process within seconds). Refused (Conflict)
        unless it holds exactly the stored images; `force` skips that check."""
        entry = self.catalog.get(slug)
        if entry.state != ACTIVE and not force:
            report = self.completeness(slug)
            if not report.complete:
                raise Conflict(f"{slug} is not complete: {report.indexed} vectors for {report.stored} stored "
                               f"images, {report.missing} missing; let its re-embed finish, or start it again "
                               f"(POST /admin/models with the same model re-does only the missing ones)")
        active = self.catalog.activate(slug)
        log.info("model %s (%s) is now active", active.model.label(), slug)
        return active

    def retire(self, slug: str) -> IndexEntry:
        """Delete a building or retired identity's index (its re-embed, if running, stops)."""
        entry = self.catalog.get(slug)
        if entry.job_id in self.walks:
            self.walks[entry.job_id].set()
        return self.catalog.remove(slug)

    # --- near-duplicates -------------------------------------------------------------------------------

    def start_duplicates(self, threshold: float = DEFAULT_THRESHOLD, k: int = DEFAULT_NEIGHBOURS) -> str:
        """Have a worker find near-duplicate groups across the collection (a `duplicates` job). An unfinished
        run with the same threshold and k (its worker died, say) is resumed where it stopped instead; one with
        other settings is dropped and a new run starts, unless a worker is on it (Conflict)."""
        if not 0.0 < threshold <= 1.0 or not 1 <= k <= 100:
            raise BadInput("threshold is a cosine in (0, 1] and k between 1 and 100")
        for job_id in self.duplicates.unfinished():
            job, state = self.jobs.get(job_id), self.duplicates.run_state(job_id)
            running = self.duplicates.running(job_id)
            if job is None or job.finished or state is None:  # its job expired: the run will never go on
                self.duplicates.discard(job_id)
                continue
            if (state.threshold, state.k) != (threshold, k):
                if running:
                    raise Conflict(f"a duplicates run with threshold {state.threshold} and k {state.k} is going on "
                                   f"(job {job_id}): wait for it (or cancel it), then start another")
                self.cancel_job(job_id)  # replaced by the new run
                continue
            if job.state is JobState.PAUSED:
                self.resume_job(job_id)
            elif not running:  # not while a worker holds it: that would run it twice
                self.queue.find_duplicates(job_id)
            return job_id
        job_id = self.jobs.create(kind="duplicates", sealed=False, path="duplicates", planned="1")
        self.jobs.add(job_id, counts={"total": self.backend.count()})
        self.duplicates.begin(RunState(job_id=job_id, threshold=threshold, k=k))
        self.queue.find_duplicates(job_id)
        return job_id

    def find_duplicates(self, job_id: str, *, threads: int = 4) -> list[Group]:
        """Run (or resume) the duplicates job `job_id` here; its groups replace the previous run's. Nothing
        happens (an empty list) while another worker holds the run, or once it has finished."""
        holder, paused = uuid.uuid4().hex, False
        if not self.duplicates.claim(job_id, holder):
            log.info("duplicates run %s is held by another worker", job_id)
            return []
        try:  # holding the run: no other worker searches, publishes or closes its job meanwhile
            state = self.duplicates.run_state(job_id)
            if state is None:  # published already (a second request for it), or never begun
                job = self.jobs.get(job_id)
                if job is None:
                    raise NotFound(f"no duplicates run {job_id[:64]!r} to go on with")
                info = self.duplicates.info() or {}
                if not job.finished and info.get("job_id") == job_id:  # its worker died before closing it
                    self._close_duplicates_job(job_id, int(info.get("searched", 0)))
                return []

            def progress(state: RunState | None = None, searched: int = 0) -> None:
                """After each batch (and before the first): count it, renew the lease, stop when paused or
                cancelled (the cursor is saved: a resume goes on from it)."""
                if state is not None:
                    self.jobs.finish_batch(job_id, f"after-{state.searched}", done=searched, errors=[])
                self.jobs.touch(job_id)  # alive (a job not touched for a while is shown as interrupted)
                if not self.duplicates.renew(job_id, holder):
                    raise RunTakenOver(f"duplicates run {job_id} was taken over by another worker")
                self.jobs.check_going(job_id)

            try:
                progress()
                self.jobs.mark_running(job_id)
                groups = find_duplicate_groups(self.backend, self.duplicates, state, on_batch=progress,
                                               threads=threads)
            except JobCancelled:
                self.duplicates.discard(job_id)
                log.info("duplicates run %s cancelled", job_id)
                return []
            except JobPaused:
                log.info("duplicates run %s paused after %d images", job_id, state.searched)
                paused = True
                return []
            self._close_duplicates_job(job_id, state.searched)
            return groups
        finally:
            self.duplicates.release(job_id, holder)
            if paused and self.jobs.control(job_id) is None:  # resumed while this worker held it: go on
                self.queue.find_duplicates(job_id)

    def _close_duplicates_job(self, job_id: str, searched: int) -> None:
        """Seal a duplicates job with total and done = the images searched (a batch may have been recorded by
        a run that died before counting it, and images come and go while a run goes on)."""
        job = self.job(job_id)
        self.jobs.add(job_id, counts={"total": searched - job.total, "done": searched - job.done}, seal=True)

    def duplicate_groups(self, offset: int = 0,
                         limit: int = 20) -> tuple[int, list[tuple[Group, dict[str, ImageRecord]]]]:
        """(number of groups, a page of them with their members' records), the largest first; members no
        longer indexed are left out, and a group left with one member is dropped."""
        groups = self.duplicates.page(offset, limit)
        records = self.backend.get([m.id for g in groups for m in g.members])
        page = []
        for group in groups:
            present = {m.id: records[m.id] for m in group.members if m.id in records}
            if len(present) < 2:  # its copies were deleted since the run (through DELETE /images/{id}, say)
                self.duplicates.replace(group, None)
                continue
            page.append((group, present))
        return self.duplicates.count(), page

    def resolve_duplicates(self, group_id: str, *, delete: Sequence[str] = (),
                           ungroup: Sequence[str] = ()) -> tuple[int, Group | None]:
        """Delete members of a group (vector and file) and/or take them out of it; returns how many were
        deleted and what is left of the group (None when fewer than two remain). The keeper is chosen again
        if it went."""
        group = self.duplicates.get(group_id) if is_image_id(group_id) else None
        if group is None:
            raise NotFound(f"no duplicate group {group_id[:80]!r}")
        members = {m.id for m in group.members}
        strangers = sorted((set(delete) | set(ungroup)) - members)
        if strangers:
            raise BadInput(f"not in group {group_id}: {', '.join(s[:80] for s in strangers[:5])}")
        deleted = 0
        for image_id in dict.fromkeys(delete):
            with contextlib.suppress(NotFound):  # already gone
                self.delete(image_id)
                deleted += 1
        gone = set(delete) | set(ungroup)
        self.duplicates.keep_apart(list(dict.fromkeys(ungroup)), list(members))  # not joined again by a later run
        left = [m for m in group.members if m.id not in gone]
        remade = make_group([m.id for m in left], self.backend.get([m.id for m in left]),
                            self.backend.get_vectors([m.id for m in left])) if len(left) >= 2 else None
        return deleted, self.duplicates.replace(group, remade)

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
