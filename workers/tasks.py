"""Celery tasks: message handling, retries and job accounting only; the work is in shared/.

Each worker process builds one `shared.services.Proxima` (with the model) and one `Decoder` when it starts
(`context()`); its task threads share them. Retries are Celery's own (`BatchTask`): a batch that meets an
outage (database or Redis unreachable) is tried again with exponential backoff and jitter, up to
TASK_MAX_RETRIES times (set through `task_annotations` in `shared.queue.celery_config`); the give-up
accounting lives in `BatchTask.on_failure`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Any, cast

import redis
from celery import Task
from celery.exceptions import Reject, Retry
from celery.signals import worker_init
from prometheus_client.metrics_core import Metric

from shared import metrics
from shared.backends import VectorBackend
from shared.catalog import BUILDING, IndexEntry
from shared.config import get_settings
from shared.decode import Decoder, decode_mode
from shared.embedder import Embedder, load_embedder, load_model
from shared.ingest import ingest_files
from shared.pipeline import embed_batch
from shared.queue import EMBED_BATCH, FIND_DUPLICATES, INGEST_FILES, RECONCILE, REEMBED_BATCH
from shared.reembed import batch_items, check_complete, reembed_batch
from shared.services import Proxima
from shared.types import (
    BackendUnavailable,
    BatchResult,
    FileError,
    JobState,
    ModelLoadError,
    NotFound,
    ProximaError,
    StageTimes,
)
from workers.celery_app import app

log = logging.getLogger(__name__)

# Errors after which the whole batch is tried again later (the upsert and the accounting are idempotent).
RETRYABLE = (BackendUnavailable, redis.ConnectionError, redis.TimeoutError)
# The `source` label of a batch task's metrics (shared.metrics.SOURCES)
SOURCES = {EMBED_BATCH: "upload", INGEST_FILES: "folder", REEMBED_BATCH: "reembed"}


@dataclass(frozen=True)
class WorkerContext:
    proxima: Proxima
    embedder: Embedder  # the settings' model; `model()` gives the one a batch needs
    decoder: Decoder
    ready: set[str] = field(default_factory=set)  # model indexes whose schema this process has checked

    def model(self, entry: IndexEntry) -> tuple[VectorBackend, Embedder]:
        """`entry`'s index (schema checked once per process) and its model (loaded on first use)."""
        embedder = cast(Embedder, self.proxima.encoder_for(entry.model))
        if embedder.info.slug != entry.slug:
            raise ModelLoadError(f"this worker's settings load {entry.model.label()} as {embedder.info.label()} "
                                 f"({embedder.info.slug}, not {entry.slug}); check EMBED_PRECISION")
        view = self.proxima.catalog.view(entry)
        if entry.slug not in self.ready:
            view.ensure_schema(embedder.info)
            self.ready.add(entry.slug)
        return view, embedder


_context_lock = threading.Lock()


def context() -> WorkerContext:
    """Everything a worker process needs, built once (the model loads here); shared by its task threads."""
    with _context_lock:
        return _build_context()


@cache
def _build_context() -> WorkerContext:
    settings = get_settings()
    embedder = load_embedder(settings)
    proxima = Proxima.from_settings(settings, encoder=embedder, load_encoder=lambda model: load_model(settings, model))
    proxima.check_index()
    threads = settings.decode_threads or os.cpu_count() or 1
    pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")
    device = str(embedder.device)
    decoder = Decoder(pool, size=embedder.image_size, max_pixels=settings.max_image_pixels,
                      mode=decode_mode(settings.decode, device), device=device, pool_threads=threads)
    return WorkerContext(proxima=proxima, embedder=embedder, decoder=decoder)


@worker_init.connect
def _load_on_start(**_: object) -> None:
    """Load the model and check the index before taking any work: a worker with a bad configuration (a model
    that cannot load, an index built by another model) exits at once with the reason. A database that is
    down only delays this: the first batch builds the context, retrying until the database is back.
    With METRICS_PORT set, the process's metrics are served there first (shared.metrics.serve)."""
    port = get_settings().metrics_port
    if port:
        metrics.serve(port, _metrics_facts)
    try:
        context()
    except BackendUnavailable as exc:
        log.warning("vector database unavailable at start-up (%s); batches will retry until it is back", exc)
    except ProximaError as exc:
        log.critical("the worker cannot start: %s", exc)
        raise SystemExit(1) from exc
    threading.Thread(target=_sweep_lost_batches, name="lost-batches", daemon=True).start()


def _metrics_facts() -> Iterator[Metric]:
    """proxima_build_info of this worker, once its context is built (never waits for the model to load)."""
    if _build_context.cache_info().currsize:
        ctx = _build_context()
        yield metrics.build_info("worker", ctx.embedder, ctx.proxima.settings.vector_backend,
                                 device=str(ctx.embedder.device))


SWEEP_S = 15.0


def _sweep_lost_batches() -> None:
    """Every SWEEP_S, while the queue is idle, send again the batches the queue lost (see
    `Proxima.resend_lost_batches`); one worker at a time (a Redis lock)."""
    suspects: set[tuple[str, str]] = set()
    while True:
        time.sleep(SWEEP_S)
        try:
            proxima = context().proxima
            if proxima.redis.set("proxima:lost-batch-sweep", 1, nx=True, ex=int(SWEEP_S) - 1):
                suspects = proxima.resend_lost_batches(suspects)
        except Exception:  # noqa: BLE001 - Redis down, say: look again next time
            log.debug("lost-batch sweep skipped", exc_info=True)


class BatchTask(Task):
    """A batch of images of one job: args (job id, batch key, items). Retried through outages with
    exponential backoff (1 s, 2 s, 4 s, ... at most 300 s, full jitter); when it gives up, or fails for any
    other reason, every image of the batch is reported failed with the reason."""

    autoretry_for = RETRYABLE
    retry_backoff = 1
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 8  # TASK_MAX_RETRIES replaces it (task_annotations)

    @property
    def source(self) -> str:
        """The `source` label of this task's metrics: upload, folder or reembed."""
        return SOURCES.get(self.name, "other")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The task, timed (proxima_batch_seconds counts the batches that finished), unless its job is paused
        (the batch is parked in the job, to be sent again on resume) or cancelled (dropped)."""
        job_id, batch_key, items = args
        try:
            held = context().proxima.jobs.hold(job_id, batch_key, self.name, items)
        except RETRYABLE:  # Redis or the database is down: the task itself meets it again, and retries
            held = "run"
        if held != "run":
            log.info("batch %s/%s %s: its job is %s", job_id, batch_key, held,
                     "paused" if held == "parked" else "cancelled or paused")
            return {"done": 0, "failed": 0, held: len(items)}
        started = time.perf_counter()
        result = super().__call__(*args, **kwargs)
        metrics.BATCH_SECONDS.labels(self.source).observe(time.perf_counter() - started)
        return result

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's retry, except when the retry cannot be queued (Redis is unreachable): Celery would then
        reject the batch for good (`Reject(requeue=False)`, and its images would never be indexed). Here it
        is rejected with requeue instead: put back in the queue, or, with Redis down, left unacknowledged,
        so Redis hands it out again once it is back. Counted: the error (by kind) and the retry."""
        exc = kwargs.get("exc")
        if isinstance(exc, BaseException):
            metrics.record_error(exc)
        try:
            return super().retry(*args, **kwargs)
        except Retry:
            metrics.RETRIES.labels(self.source).inc()
            raise
        except Reject as rejected:
            metrics.RETRIES.labels(self.source).inc()
            log.warning("could not queue a retry (%s); the batch stays in the queue", rejected.reason)
            raise Reject(rejected.reason, requeue=True) from None

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job_id, batch_key, items = args
        if isinstance(exc, RETRYABLE):
            why = f"gave up after {self.max_retries} retries: {exc}"
        else:
            why = f"internal error: {exc}"
            log.error("batch %s/%s failed: %s", job_id, batch_key, einfo)
        errors = [FileError(i.get("id"), i.get("filename") or i.get("path") or i.get("id", "?"), why) for i in items]
        metrics.record_images(self.source, "failed", len(errors))
        if not isinstance(exc, RETRYABLE):  # the retryable ones were counted as they were retried
            metrics.record_error(exc)
        try:
            context().proxima.jobs.finish_batch(job_id, batch_key, done=0, errors=errors)
        except redis.RedisError:
            log.exception("could not record the failure of batch %s/%s", job_id, batch_key)


def _account(job_id: str, batch_key: str, times: StageTimes, result: BatchResult, source: str) -> dict[str, int]:
    """Report a finished batch to its job (counted once, however often the batch is delivered) and to the
    metrics (`source`: upload, folder, reembed)."""
    jobs = context().proxima.jobs
    jobs.add_stage_times(job_id, times.as_dict())
    jobs.finish_batch(job_id, batch_key, done=result.done, errors=result.errors, duplicates=result.duplicates)
    metrics.record_batch(source, times, ingested=result.done - result.duplicates, duplicates=result.duplicates,
                         failed=len(result.errors))
    log.info("batch %s/%s: %d done, %d failed; seconds %s", job_id, batch_key, result.done, len(result.errors),
             times.as_dict())
    return {"done": result.done, "failed": len(result.errors)}


def _active(ctx: WorkerContext) -> tuple[VectorBackend, Embedder, list[IndexEntry]]:
    """The active index (label changes and deletes mirrored to those being built), its model, and the
    identities being built, read together."""
    catalog = ctx.proxima.catalog
    active, building = catalog.snapshot()
    if active is None:
        return ctx.proxima.database, ctx.embedder, []
    _, embedder = ctx.model(active)
    return catalog.writable(active, building), embedder, building


def _write_to_building(ctx: WorkerContext, source: VectorBackend, building: list[IndexEntry],
                       result: BatchResult) -> None:
    """Images this batch indexed also go into the indexes being built, embedded with their models (dual
    write during a re-embed). A failure here is logged, not the batch's: the re-embed's completeness check
    finds what is missing and queues it again."""
    for entry in building:
        if not result.embedded:
            return
        try:
            view, embedder = ctx.model(entry)
            reembed_batch(batch_items(result.embedded, entry.slug), images=ctx.proxima.images, target=view,
                          source=source, embedder=embedder, decoder=ctx.decoder)
        except Exception as exc:  # noqa: BLE001 - the upload itself succeeded; see the docstring
            metrics.record_error(exc)
            log.warning("could not write %d new images to %s (being built); its re-embed will redo them",
                        len(result.embedded), entry.slug, exc_info=True)


@app.task(name=EMBED_BATCH, base=BatchTask)
def embed_batch_task(job_id: str, batch_key: str, items: list[dict[str, str]]) -> dict[str, int]:
    """Embed one batch of uploaded images (already in the store) for job `job_id`."""
    ctx, times = context(), StageTimes()
    p = ctx.proxima
    p.jobs.mark_running(job_id)
    backend, embedder, building = _active(ctx)
    result = embed_batch(items, images=p.images, backend=backend, embedder=embedder, decoder=ctx.decoder,
                         times=times)
    _write_to_building(ctx, backend, building, result)
    return _account(job_id, batch_key, times, result, "upload")


@app.task(name=INGEST_FILES, base=BatchTask)
def ingest_files_task(job_id: str, batch_key: str, items: list[dict]) -> dict[str, int]:
    """Read, store, embed one batch of files given by path (a folder ingest) for job `job_id`."""
    ctx, times = context(), StageTimes()
    p = ctx.proxima
    p.jobs.mark_running(job_id)
    backend, embedder, building = _active(ctx)
    result = ingest_files(items, images=p.images, backend=backend, embedder=embedder, manifest=p.manifest,
                          decoder=ctx.decoder, times=times)
    _write_to_building(ctx, backend, building, result)
    return _account(job_id, batch_key, times, result, "folder")


@app.task(name=REEMBED_BATCH, base=BatchTask)
def reembed_batch_task(job_id: str, batch_key: str, items: list[dict[str, str]]) -> dict[str, int]:
    """Embed stored images with the model `items[i]["model"]` names, into its index (a re-embed job)."""
    ctx, times = context(), StageTimes()
    p = ctx.proxima
    p.jobs.mark_running(job_id)
    try:
        entry = p.catalog.get(items[0]["model"])
    except NotFound as exc:  # retired while its batches were queued
        result = BatchResult(done=0, errors=[FileError(i["id"], i["id"], str(exc)) for i in items])
        return _account(job_id, batch_key, times, result, "reembed")
    view, embedder = ctx.model(entry)
    active = p.catalog.active()
    source = p.catalog.view(active) if active is not None and active.slug != entry.slug else None
    result = reembed_batch(items, images=p.images, target=view, source=source, embedder=embedder,
                           decoder=ctx.decoder, times=times)
    counts = _account(job_id, batch_key, times, result, "reembed")
    if entry.activate_when_done:
        _activate_when_complete(job_id, entry.slug)
    return counts


def _activate_when_complete(job_id: str, slug: str) -> None:
    """After a re-embed's last batch: activate its index if complete; images that slipped past it (uploaded
    as it started) are queued into the same job first, and the check runs again when they are done."""
    p = context().proxima
    job = p.jobs.get(job_id)
    if job is None or not job.finished or job.state is JobState.CANCELLED:
        return
    if not p.redis.set(f"proxima:activating:{slug}", 1, nx=True, ex=300):
        return
    try:
        entry = p.catalog.get(slug)
        if entry.state != BUILDING or not entry.activate_when_done:
            return
        missing: list[str] = []
        report = check_complete(p.images, p.catalog.view(entry), missing_ids=missing)
        if report.complete:
            p.activate(slug)
            return
        failed = {e.id for e in job.errors}
        todo = [image_id for image_id in missing if image_id not in failed]
        if not todo:
            log.error("re-embed %s: %s not activated: %s", job_id, slug, report.as_dict())
            return
        log.info("re-embed %s: %d images slipped past it; queueing them before activating", job_id, len(todo))
        p.jobs.add(job_id, counts={"total": len(todo), "seen": len(todo)})
        size = p.settings.effective_batch_size
        for n, start in enumerate(range(0, len(todo), size)):
            p.send_reembed(job_id, f"catch-up-{time.time_ns()}-{n}", batch_items(todo[start:start + size], slug))
    finally:
        p.redis.delete(f"proxima:activating:{slug}")


@app.task(name=FIND_DUPLICATES, acks_late=False)
def find_duplicates_task(job_id: str) -> dict[str, int]:
    """Search every image for its near-duplicates and publish the groups (resumed where a run stopped).
    Not acknowledged late: a run can outlast the visibility timeout; one cut short is resumed by starting
    the duplicates job again (`POST /admin/duplicates`), which goes on from its cursor."""
    groups = context().proxima.find_duplicates(job_id)
    return {"groups": len(groups)}


@app.task(name=RECONCILE, acks_late=False)
def reconcile_task(delete_orphans: bool = False) -> dict:
    """Re-queue stored images that have no vector, report (or delete) vectors whose file is gone."""
    proxima = context().proxima
    report = proxima.reconcile(delete_orphans=delete_orphans).as_dict()
    report["finished_at"] = time.time()
    proxima.save_reconcile(json.dumps(report))
    return report
