"""What the routes and the mounted UI need, built once in the lifespan and kept on `app.state`."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import redis
from celery import Celery
from fastapi import Depends, Request

from shared.backends import BackendError, VectorBackend
from shared.config import Settings
from shared.embedder import Embedder
from shared.imagestore import ImageStore
from shared.ingest import RedisManifest, resolve_under, walk_folder
from shared.jobs import JobStore
from shared.pipeline import Accepted, Upload, accept_uploads
from workers.celery_app import EMBED_BATCH, INGEST_FILES, QUEUE, send_batch

log = logging.getLogger(__name__)


class IngestDisabled(Exception):
    """Folder ingest through the API is off (INGEST_ROOTS is empty)."""


@dataclass
class Services:
    settings: Settings
    images: ImageStore
    backend: VectorBackend
    embedder: Embedder
    jobs: JobStore
    redis: redis.Redis
    celery: Celery
    manifest: RedisManifest
    walks: dict[str, threading.Event] = field(default_factory=dict)  # running folder walks → stop flag

    def enqueue(self, job_id: str, batch_key: str, items: list[dict[str, str]]) -> None:
        send_batch(self.celery, EMBED_BATCH, job_id, batch_key, items)

    def enqueue_paths(self, job_id: str, batch_key: str, items: list[dict]) -> None:
        send_batch(self.celery, INGEST_FILES, job_id, batch_key, items)

    def accept(self, uploads: list[Upload], job_id: str | None = None) -> tuple[str, list[Accepted]]:
        """Store uploads and queue them for indexing (a new job, or the open job `job_id`)."""
        return accept_uploads(uploads, images=self.images, backend=self.backend, jobs=self.jobs,
                              enqueue=self.enqueue, batch_size=self.settings.effective_batch_size,
                              max_pixels=self.settings.max_image_pixels, job_id=job_id)

    def queue_depth(self) -> int:
        return int(self.redis.llen(QUEUE))

    def health(self) -> dict[str, Any]:
        """Backend, model identity, number of vectors and queue depth; `status` is `degraded` if a service is down."""
        info = self.embedder.info
        problems: list[str] = []
        vectors = queue_depth = None
        try:
            vectors = self.backend.count()
        except BackendError as exc:
            problems.append(f"vector backend: {exc}")
        try:
            queue_depth = self.queue_depth()
        except redis.RedisError as exc:
            problems.append(f"redis: {exc}")
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "backend": self.backend.name,
            "model": {"name": info.name, "pretrained": info.pretrained, "dim": info.dim, "random": info.is_random},
            "vectors": vectors,
            "queue_depth": queue_depth,
        }

    def start_folder_ingest(self, path: str, recursive: bool = True) -> tuple[str, Path]:
        """Start walking a folder under INGEST_ROOTS in a background thread; returns (job id, resolved folder).

        Raises IngestDisabled, PathNotAllowed (outside the roots, or a symlink out of them) or
        NotADirectoryError.
        """
        roots = self.settings.ingest_roots
        if not roots:
            raise IngestDisabled("folder ingest through the API is disabled: set INGEST_ROOTS on the server")
        folder = resolve_under(path, roots)
        if not folder.is_dir():
            raise NotADirectoryError(f"{path!r} is not a folder on the server")
        job_id = self.jobs.create(kind="folder", sealed=False, path=str(folder))
        stop = threading.Event()
        self.walks[job_id] = stop
        threading.Thread(target=self._walk, args=(job_id, folder, recursive, stop),
                         name=f"walk-{job_id[:8]}", daemon=True).start()
        return job_id, folder

    def _walk(self, job_id: str, folder: Path, recursive: bool, stop: threading.Event) -> None:
        try:
            walk_folder(folder, job_id, recursive=recursive, batch_size=self.settings.effective_batch_size,
                        jobs=self.jobs, backend=self.backend, manifest=self.manifest,
                        enqueue=self.enqueue_paths, queue_depth=self.queue_depth,
                        max_queued=self.settings.ingest_max_queued, roots=self.settings.ingest_roots, stop=stop)
        except InterruptedError:
            log.warning("folder ingest %s stopped before the walk ended; run it again to finish", job_id)
        except Exception:
            log.exception("folder ingest %s failed", job_id)
        finally:
            self.walks.pop(job_id, None)


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
