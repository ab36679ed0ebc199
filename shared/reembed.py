"""Re-embed every stored image with another model, into that model's own index, while searches go on.

    walk_store      the image store, 1 batch at a time: ids the new index already has are skipped (so a
                    re-embed cut short resumes where it stopped), the others are queued as batches of a
                    `reembed` job (back-pressure: at most `max_queued` batches waiting)
    reembed_batch   (a worker) decodes the stored files, embeds them with the new model and upserts them
                    into the new index, keeping what the active index knew of each image (name, ingest
                    time, folder path, collections, tags)
    check_complete  the new index holds exactly the stored images (count equal, none missing): the
                    condition for activating it (`shared.catalog.ModelCatalog.activate`)

Images uploaded meanwhile are written to both indexes by the workers (`Proxima.write_to_building`); the
completeness check catches any that slipped between (they are queued again by `catch_up`).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from shared.backends import VectorBackend
from shared.decode import Decoder
from shared.embedder import Embedder
from shared.imagestore import ImageStore
from shared.jobs import JobStore, wait_to_send
from shared.pipeline import Enqueue, Pending, embed_pending
from shared.types import BatchResult, FileError, StageTimes

log = logging.getLogger(__name__)
CHUNK = 1000  # ids per existence check while comparing the store with an index


def batch_items(ids: Sequence[str], slug: str) -> list[dict[str, str]]:
    """A re-embed batch's items: the stored image and the identity it is embedded for."""
    return [{"id": image_id, "model": slug} for image_id in ids]


@dataclass
class ReembedStats:
    seen: int = 0  # stored images looked at
    queued: int = 0  # sent to the workers
    present: int = 0  # already in the new index (an earlier, interrupted re-embed)


def walk_store(*, images: ImageStore, target: VectorBackend, jobs: JobStore, job_id: str, slug: str,
               enqueue: Enqueue, batch_size: int, queue_depth: Callable[[], int], max_queued: int,
               stop: threading.Event | None = None,
               on_progress: Callable[[ReembedStats], None] = lambda stats: None) -> ReembedStats:
    """Queue every stored image missing from `target` as batches of the open job `job_id`, then seal it.

    The store is counted first, so the job's total (and its ETA) is known from the start; images already in
    `target` count as done at once (`duplicates`). Memory stays flat: one batch of ids at a time."""
    planned = sum(1 for _ in images.iter_ids())
    jobs.add(job_id, counts={"total": planned})
    stats, run = ReembedStats(), uuid.uuid4().hex[:8]
    for n, chunk in enumerate(images.iter_id_batches(batch_size)):
        # the workers are behind, or the job is paused: wait (JobCancelled ends the walk)
        wait_to_send(jobs, job_id, queue_depth=queue_depth, max_queued=max_queued, stop=stop)
        present = set(target.get(chunk))
        todo = [image_id for image_id in chunk if image_id not in present]
        jobs.add(job_id, counts={"seen": len(chunk), "duplicates": len(present), "done": len(present)})
        if todo:
            enqueue(job_id, f"{run}-b{n}", batch_items(todo, slug))
        stats.seen += len(chunk)
        stats.queued += len(todo)
        stats.present += len(present)
        on_progress(stats)
    # images uploaded (or deleted) since the count: the total becomes what was walked
    jobs.add(job_id, counts={"total": stats.seen - planned}, seal=True)
    return stats


def reembed_batch(items: Sequence[dict[str, str]], *, images: ImageStore, target: VectorBackend,
                  source: VectorBackend | None, embedder: Embedder, decoder: Decoder,
                  times: StageTimes | None = None) -> BatchResult:
    """Embed stored images with `embedder` into `target`, keeping what `source` (the active index) records of
    them. A file that cannot be read fails alone and stays in the store (the active index may still use it)."""
    ids = [item["id"] for item in items]
    kept = source.get(ids) if source is not None else {}
    pending, errors = [], []
    for image_id in ids:
        path = images.path(image_id)
        record = kept.get(image_id)
        name = record.filename if record else f"recovered-{image_id[:12]}"
        try:
            pending.append(Pending(image_id, name, path, path.stat().st_size))
        except FileNotFoundError:
            errors.append(FileError(image_id, name, "image file missing from the store (deleted meanwhile?)"))
    done, failed = embed_pending(pending, backend=target, embedder=embedder, decoder=decoder, times=times,
                                 kept=kept)
    errors += [FileError(p.id, p.filename, failed[p.id]) for p in pending if p.id in failed]
    return BatchResult(done=done, errors=errors, embedded=tuple(p.id for p in pending if p.id not in failed))


@dataclass
class Completeness:
    stored: int = 0  # images in the store
    indexed: int = 0  # vectors in the index
    missing: int = 0  # stored images the index lacks
    examples_missing: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Every stored image has exactly one vector (ids are unique in an index, so equal counts with none
        missing also means no vector without a file)."""
        return self.missing == 0 and self.indexed == self.stored

    def as_dict(self) -> dict:
        return {**asdict(self), "examples_missing": list(self.examples_missing), "complete": self.complete}


def check_complete(images: ImageStore, index: VectorBackend, *, examples: int = 20,
                   missing_ids: list[str] | None = None) -> Completeness:
    """Compare the store with `index` (1,000 ids per lookup); `missing_ids`, when given, collects every
    missing id (for `catch_up`)."""
    report = Completeness()
    found: list[str] = []
    for chunk in images.iter_id_batches(CHUNK):
        report.stored += len(chunk)
        present = index.get(chunk)
        for image_id in chunk:
            if image_id not in present:
                report.missing += 1
                if len(found) < examples:
                    found.append(image_id)
                if missing_ids is not None:
                    missing_ids.append(image_id)
    report.indexed = index.count()
    report.examples_missing = tuple(found)
    return report
