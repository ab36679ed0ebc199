"""Celery tasks: message handling, retries and job accounting only; the work is in shared/pipeline.py."""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import redis
from celery import Task
from celery.signals import worker_ready

from shared.backends import BackendUnavailable, VectorBackend, make_backend
from shared.config import Settings, get_settings
from shared.decode import Decoder, StageTimes, decode_mode
from shared.embedder import Embedder, load_embedder
from shared.imagestore import ImageStore
from shared.ingest import RedisManifest, ingest_files
from shared.jobs import FileError, JobStore
from shared.pipeline import BatchResult, embed_batch
from shared.reconcile import reconcile
from workers.celery_app import EMBED_BATCH, INGEST_FILES, RECONCILE, RECONCILE_REPORT_KEY, app, send_batch

log = logging.getLogger(__name__)

# Errors after which the whole batch is tried again later (the upsert and the accounting are idempotent).
RETRYABLE = (BackendUnavailable, redis.ConnectionError, redis.TimeoutError)


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    images: ImageStore
    backend: VectorBackend
    embedder: Embedder
    jobs: JobStore
    manifest: RedisManifest
    decoder: Decoder


_context_lock = threading.Lock()


def context() -> WorkerContext:
    """Everything a worker process needs, built once (the model loads here); shared by its task threads."""
    with _context_lock:
        return _build_context()


@cache
def _build_context() -> WorkerContext:
    settings = get_settings()
    embedder = load_embedder(settings)
    backend = make_backend(settings)
    backend.ensure_schema(embedder.info)
    threads = settings.decode_threads or os.cpu_count() or 1
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")
    return WorkerContext(
        settings=settings,
        images=ImageStore(settings.images_dir),
        backend=backend,
        embedder=embedder,
        jobs=JobStore(client, ttl_s=settings.job_ttl_days * 86400),
        manifest=RedisManifest(client),
        decoder=Decoder(pool, size=embedder.image_size, max_pixels=settings.max_image_pixels,
                        mode=decode_mode(settings.decode, str(embedder.device)), device=str(embedder.device),
                        pool_threads=threads),
    )


@worker_ready.connect
def _load_on_start(**_: object) -> None:
    # Load the model and check the index before taking work, so a bad configuration fails at start-up.
    context()


@app.task(name=EMBED_BATCH, bind=True, max_retries=get_settings().task_max_retries)
def embed_batch_task(self: Task, job_id: str, batch_key: str, items: list[dict[str, str]]) -> dict[str, int]:
    """Embed one batch of uploaded images (already in the store) for job `job_id`."""
    ctx = context()
    return _run(self, ctx, job_id, batch_key, items, lambda times: embed_batch(
        items, images=ctx.images, backend=ctx.backend, embedder=ctx.embedder, decoder=ctx.decoder, times=times))


@app.task(name=INGEST_FILES, bind=True, max_retries=get_settings().task_max_retries)
def ingest_files_task(self: Task, job_id: str, batch_key: str, items: list[dict]) -> dict[str, int]:
    """Read, store, embed one batch of files given by path (a folder ingest) for job `job_id`."""
    ctx = context()
    return _run(self, ctx, job_id, batch_key, items, lambda times: ingest_files(
        items, images=ctx.images, backend=ctx.backend, embedder=ctx.embedder, manifest=ctx.manifest,
        decoder=ctx.decoder, times=times))


@app.task(name=RECONCILE, acks_late=False)
def reconcile_task(delete_orphans: bool = False) -> dict:
    """Re-queue stored images that have no vector, report (or delete) vectors whose file is gone."""
    ctx = context()
    report = reconcile(images=ctx.images, backend=ctx.backend, jobs=ctx.jobs,
                       batch_size=ctx.settings.effective_batch_size,
                       enqueue=lambda j, key, items: send_batch(app, EMBED_BATCH, j, key, items),
                       delete_orphans=delete_orphans).as_dict()
    report["finished_at"] = time.time()
    ctx.jobs.redis.set(RECONCILE_REPORT_KEY, json.dumps(report))
    return report


def _run(task: Task, ctx: WorkerContext, job_id: str, batch_key: str, items: list[dict],
         work: Callable[[StageTimes], BatchResult]) -> dict[str, int]:
    """Do the work, report it to the job once, retry the whole batch with backoff on outages."""
    try:
        ctx.jobs.mark_running(job_id)
        times = StageTimes()
        result = work(times)
        ctx.jobs.add_stage_times(job_id, times.as_dict())
        ctx.jobs.finish_batch(job_id, batch_key, done=result.done, errors=result.errors,
                              duplicates=result.duplicates)
        log.info("batch %s/%s: %d done, %d failed; seconds %s", job_id, batch_key, result.done,
                 len(result.errors), times.as_dict())
    except RETRYABLE as exc:
        if task.request.retries >= task.max_retries:
            _fail_batch(ctx, job_id, batch_key, items, f"gave up after {task.max_retries} retries: {exc}")
            raise
        delay = min(300, 2 ** task.request.retries) * (0.5 + random.random())
        log.warning("batch %s/%s: %s; retrying in %.0f s", job_id, batch_key, exc, delay)
        raise task.retry(exc=exc, countdown=delay) from exc
    except Exception as exc:
        log.exception("batch %s/%s failed", job_id, batch_key)
        _fail_batch(ctx, job_id, batch_key, items, f"internal error: {exc}")
        raise
    return {"done": result.done, "failed": len(result.errors)}


def _fail_batch(ctx: WorkerContext, job_id: str, batch_key: str, items: list[dict[str, str]], why: str) -> None:
    try:
        ctx.jobs.finish_batch(job_id, batch_key, done=0,
                              errors=[FileError(i.get("id"), i.get("filename") or i["path"], why) for i in items])
    except redis.RedisError:
        log.exception("could not record the failure of batch %s/%s", job_id, batch_key)
