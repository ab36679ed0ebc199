"""The Celery application: broker settings and the name of every task.

This module stays light (no torch, no database drivers) because the API imports it to enqueue work.
"""

from __future__ import annotations

from celery import Celery

from shared.config import Settings, get_settings

QUEUE = "proxima"
EMBED_BATCH = "proxima.embed_batch"  # args: job id, batch key, [{"id", "filename"}] of stored uploads
INGEST_FILES = "proxima.ingest_files"  # args: job id, batch key, [{"path", "size", "mtime_ns"}] of a folder
RECONCILE = "proxima.reconcile"  # kwargs: delete_orphans; the report is kept at RECONCILE_REPORT_KEY
RECONCILE_REPORT_KEY = "proxima:reconcile:last"


def send_batch(app: Celery, task: str, job_id: str, batch_key: str, items: list[dict]) -> None:
    """Queue one batch. Flower and the logs show a one-line summary (job, batch, count, first file), not the
    whole item list."""
    first = items[0].get("filename") or items[0].get("path", "") if items else ""
    app.send_task(task, args=[job_id, batch_key, items],
                  argsrepr=f"job={job_id} batch={batch_key} images={len(items)} first={str(first)[-80:]!r}")


def make_celery(settings: Settings) -> Celery:
    app = Celery("proxima", broker=settings.redis_url, include=["workers.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # outcomes live in the job records (shared/jobs.py)
        task_default_queue=QUEUE,
        task_create_missing_queues=False,
        # A batch is acknowledged only after its vectors are stored; if the worker dies mid-batch the
        # message goes back to the queue (after the visibility timeout) and the idempotent upsert and
        # job accounting make the replay harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Take one batch at a time: a prefetched batch would sit invisible to other workers.
        worker_prefetch_multiplier=1,
        # Must exceed the longest batch (including retries' countdowns), or Redis redelivers a batch
        # that is still being worked on.
        # Kombu looks for such batches every 10 s (unacked_restore_throttle=1; its default, 10, means every
        # 100 s), so a crashed worker's batches are back in the queue soon after the timeout.
        broker_transport_options={"visibility_timeout": settings.task_visibility_timeout_s,
                                  "unacked_restore_throttle": 1},
        broker_connection_retry_on_startup=True,
        # Events let Flower show each batch (its argsrepr summary, state, runtime) as it happens.
        worker_send_task_events=True,
        task_send_sent_event=True,
        # One process per device, the model loaded once. Tasks run in WORKER_THREADS threads of that process
        # (default 2), so one batch is decoded while another is on the model or being upserted.
        worker_pool="threads",
        worker_concurrency=settings.worker_threads,
    )
    return app


app = make_celery(get_settings())
