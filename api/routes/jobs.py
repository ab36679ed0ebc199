from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from api.deps import ServicesDep
from api.security import WriteAccess

router = APIRouter(tags=["jobs"], dependencies=WriteAccess)


class OpenJob(BaseModel):
    label: str = Field("", max_length=1024, description="what is being ingested, shown in the job record")


@router.get("/jobs/{job_id}")
def get_job(job_id: str, services: ServicesDep) -> dict:
    """Progress of an upload or folder ingest: state, counts, rate, ETA, and one error entry per failed file."""
    job = services.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job with id {job_id[:64]!r}")
    return job


@router.post("/jobs", status_code=201)
def open_job(request: OpenJob, services: ServicesDep) -> dict:
    """An open job that several `POST /images` requests (with `job_id`) add to, until it is sealed.

    Used by `scripts/ingest_folder.py --api` to track a whole client-side folder ingest as one job.
    """
    return {"job_id": services.jobs.create(kind="folder", sealed=False, path=request.label)}


@router.post("/jobs/{job_id}/seal")
def seal_job(job_id: str, services: ServicesDep) -> dict:
    """No more images will be added: the job completes when the queued ones are done."""
    if services.jobs.get(job_id) is None:
        raise HTTPException(404, f"no job with id {job_id[:64]!r}")
    services.jobs.add(job_id, counts={}, seal=True)
    return services.jobs.get(job_id)
