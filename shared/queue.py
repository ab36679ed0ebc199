"""The task queue between the API (or a script) and the workers: Celery over Redis.

Here are the queue's contract (task names and their arguments), the Celery configuration every process
shares, and `TaskQueue`, the producer side: send a batch, read the queue depth. The workers' Celery app
(`workers/celery_app.py`) is configured from the same `celery_config`, and nothing here imports the task
code, torch or a decoder, so the API stays light.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery

from shared.config import Settings

QUEUE = "proxima"
EMBED_BATCH = "proxima.embed_batch"  # args: job id, batch key, [{"id", "filename"}] of stored uploads
INGEST_FILES = "proxima.ingest_files"  # args: job id, batch key, [{"path", "size", "mtime_ns"}] of a folder
REEMBED_BATCH = "proxima.reembed_batch"  # args: job id, batch key, [{"id", "model"}]: stored images, model slug
FIND_DUPLICATES = "proxima.find_duplicates"  # args: job id of a begun run (shared.duplicates.DuplicateStore)
RECONCILE = "proxima.reconcile"  # kwargs: delete_orphans; the report is kept at RECONCILE_REPORT_KEY
RECONCILE_REPORT_KEY = "proxima:reconcile:last"
BATCH_TASKS = f"{QUEUE}.*"  # task_annotations pattern for the batch tasks' retry settings
UNACKED = "unacked"  # kombu's Redis transport: its hash of delivered, unacknowledged messages


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings of every process (producers and workers); why each is set is said beside it."""
    return {
        "broker_url": settings.redis_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # outcomes live in the job records (shared/jobs.py)
        "task_default_queue": QUEUE,
        "task_create_missing_queues": False,
        # A batch is acknowledged only after its vectors are stored; if the worker dies mid-batch the
        # message goes back to the queue (after the visibility timeout) and the idempotent upsert and
        # job accounting make the replay harmless.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Take one batch at a time: a prefetched batch would sit invisible to other workers.
        "worker_prefetch_multiplier": 1,
        # Must exceed the longest batch (including retries' countdowns), or Redis redelivers a batch
        # that is still being worked on. Kombu looks for such batches every 10 s (unacked_restore_throttle=1;
        # its default, 10, means every 100 s), so a crashed worker's batches are back in the queue soon after.
        "broker_transport_options": {"visibility_timeout": settings.task_visibility_timeout_s,
                                     "unacked_restore_throttle": 1},
        "broker_connection_retry_on_startup": True,
        # Events let Flower show each batch (its argsrepr summary, state, runtime) as it happens.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # One process per device, the model loaded once. Tasks run in WORKER_THREADS threads of that process
        # (default 2), so one batch is decoded while another is on the model or being upserted.
        "worker_pool": "threads",
        "worker_concurrency": settings.worker_threads,
        # How many times a batch is retried through an outage (workers/tasks.py: BatchTask).
        "task_annotations": {BATCH_TASKS: {"max_retries": settings.task_max_retries}},
    }


class TaskQueue:
    """Send work to the workers and see how much is waiting."""

    def __init__(self, celery: Celery, client: redis.Redis) -> None:
        self.celery = celery
        self.redis = client

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis) -> TaskQueue:
        celery = Celery("proxima", set_as_current=False)
        celery.conf.update(celery_config(settings))
        return cls(celery, client)

    def send_batch(self, task: str, job_id: str, batch_key: str, items: list[dict]) -> None:
        """Queue one batch. Flower and the logs show a one-line summary (job, batch, count, first file), not
        the whole item list."""
        first = (items[0].get("filename") or items[0].get("path", "")) if items else ""
        self.celery.send_task(task, args=[job_id, batch_key, items],
                              argsrepr=f"job={job_id} batch={batch_key} images={len(items)} first={str(first)[-80:]!r}")

    def embed(self, job_id: str, batch_key: str, items: list[dict]) -> None:
        """A batch of stored uploads ({"id", "filename"})."""
        self.send_batch(EMBED_BATCH, job_id, batch_key, items)

    def ingest(self, job_id: str, batch_key: str, items: list[dict]) -> None:
        """A batch of a folder's files ({"path", "size", "mtime_ns"})."""
        self.send_batch(INGEST_FILES, job_id, batch_key, items)

    def reconcile(self, *, delete_orphans: bool) -> str:
        """Have a worker reconcile the store with the index; returns the task id."""
        return str(self.celery.send_task(RECONCILE, kwargs={"delete_orphans": delete_orphans}).id)

    def find_duplicates(self, job_id: str) -> None:
        """Have a worker run (or resume) the near-duplicates run of job `job_id`."""
        self.celery.send_task(FIND_DUPLICATES, args=[job_id], argsrepr=f"job={job_id}")

    def depth(self) -> int:
        """Batches waiting in the queue (not counting those a worker holds)."""
        return int(self.redis.llen(QUEUE))

    def in_flight(self) -> int:
        """Messages delivered to a worker and not yet acknowledged (kombu's Redis transport keeps them in the
        `unacked` hash until the worker acks)."""
        return int(self.redis.hlen(UNACKED))

    def workers_alive(self, timeout: float = 2.0) -> bool:
        return bool(self.celery.control.ping(timeout=timeout))

    def close(self) -> None:
        self.celery.close()
