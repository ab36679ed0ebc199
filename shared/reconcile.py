"""Make the index match the image store after a crash: every stored image has a vector, every vector a file.

Two streaming passes, so memory stays flat at a million images: the store's files, 1,000 ids per
`backend.get`, then the backend's `scan`, one `stat` per vector. Stored images without a vector are
queued again as a job (upserts are idempotent, so one still in the queue is at worst embedded twice,
never lost); vectors whose file is gone are reported, and deleted on request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from shared.backends import VectorBackend
from shared.imagestore import ImageStore
from shared.jobs import JobStore
from shared.pipeline import Enqueue

log = logging.getLogger(__name__)
EXAMPLES = 20


@dataclass
class ReconcileReport:
    stored: int = 0  # image files in the store
    indexed: int = 0  # vectors in the backend
    missing_vectors: int = 0  # stored, not indexed
    orphan_vectors: int = 0  # indexed, file gone
    requeued: int = 0
    orphans_deleted: int = 0
    job_id: str | None = None
    examples_missing: list[str] = field(default_factory=list)
    examples_orphans: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def reconcile(*, images: ImageStore, backend: VectorBackend, jobs: JobStore, enqueue: Enqueue, batch_size: int,
              requeue: bool = True, delete_orphans: bool = False,
              on_progress: Callable[[ReconcileReport], None] | None = None) -> ReconcileReport:
    """Compare store and index; queue the missing (as one job) and optionally delete orphan vectors."""
    report = ReconcileReport()
    pending: list[dict[str, str]] = []
    orphans: list[str] = []
    batches = 0

    def flush_pending() -> None:
        nonlocal batches
        if not pending:
            return
        if report.job_id is None:
            report.job_id = jobs.create(kind="reconcile", sealed=False, path="reconcile")
        jobs.add(report.job_id, counts={"total": len(pending), "seen": len(pending)})
        enqueue(report.job_id, f"reconcile-b{batches}", list(pending))
        batches += 1
        report.requeued += len(pending)
        pending.clear()

    def flush_orphans() -> None:
        if orphans:
            report.orphans_deleted += backend.delete(orphans)
            orphans.clear()

    for chunk in images.iter_id_batches(1000):
        report.stored += len(chunk)
        present = backend.get(chunk)
        for image_id in chunk:
            if image_id in present:
                continue
            report.missing_vectors += 1
            if len(report.examples_missing) < EXAMPLES:
                report.examples_missing.append(image_id)
            if requeue:
                # The client's file name was metadata of the lost upload; the id keeps the image findable.
                pending.append({"id": image_id, "filename": f"recovered-{image_id[:12]}"})
                if len(pending) >= batch_size:
                    flush_pending()
        if on_progress:
            on_progress(report)
    for records, _ in backend.scan():
        report.indexed += len(records)
        for record in records:
            if images.exists(record.id):
                continue
            report.orphan_vectors += 1
            if len(report.examples_orphans) < EXAMPLES:
                report.examples_orphans.append(record.id)
            if delete_orphans:
                orphans.append(record.id)
        if on_progress:
            on_progress(report)
    flush_pending()
    flush_orphans()  # after the scan: deleting under a running scan could make it skip rows
    if report.job_id is not None:
        jobs.add(report.job_id, counts={}, seal=True)
    log.info("reconcile: %s", {k: v for k, v in report.as_dict().items() if not k.startswith("examples")})
    return report
