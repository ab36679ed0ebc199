from __future__ import annotations

import logging
import threading

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from api.deps import Services, ServicesDep
from shared.ingest import PathNotAllowed, resolve_under, walk_folder

router = APIRouter(tags=["ingest"])
log = logging.getLogger(__name__)


class IngestRequest(BaseModel):
    path: str = Field(min_length=1, max_length=4096, description="a folder under one of INGEST_ROOTS")
    recursive: bool = True


class IngestStarted(BaseModel):
    job_id: str
    path: str


@router.post("/ingest", status_code=202, response_model=IngestStarted)
def start_ingest(request: IngestRequest, services: ServicesDep) -> IngestStarted:
    """Index every image in a folder the server can read. Follow it with `GET /jobs/{job_id}`."""
    roots = services.settings.ingest_roots
    if not roots:
        raise HTTPException(403, "folder ingest through the API is disabled: set INGEST_ROOTS on the server")
    try:
        folder = resolve_under(request.path, roots)
    except PathNotAllowed as exc:
        raise HTTPException(403, str(exc)) from None
    if not folder.is_dir():
        raise HTTPException(404, f"{request.path!r} is not a folder on the server")
    job_id = services.jobs.create(kind="folder", sealed=False, path=str(folder))
    stop = threading.Event()
    services.walks[job_id] = stop
    threading.Thread(target=_walk, args=(services, job_id, folder, request.recursive, stop),
                     name=f"walk-{job_id[:8]}", daemon=True).start()
    return IngestStarted(job_id=job_id, path=str(folder))


def _walk(services: Services, job_id: str, folder, recursive: bool, stop: threading.Event) -> None:
    try:
        walk_folder(folder, job_id, recursive=recursive, batch_size=services.settings.batch_size,
                    jobs=services.jobs, backend=services.backend, manifest=services.manifest,
                    enqueue=services.enqueue_paths, queue_depth=services.queue_depth,
                    max_queued=services.settings.ingest_max_queued, roots=services.settings.ingest_roots,
                    stop=stop)
    except InterruptedError:
        log.warning("folder ingest %s stopped before the walk ended; run it again to finish", job_id)
    except Exception:
        log.exception("folder ingest %s failed", job_id)
    finally:
        services.walks.pop(job_id, None)
