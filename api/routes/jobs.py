from __future__ import annotations

from fastapi import APIRouter, HTTPException

from api.deps import ServicesDep

router = APIRouter(tags=["jobs"])


@router.get("/jobs/{job_id}")
def get_job(job_id: str, services: ServicesDep) -> dict:
    """Progress of an upload: state, total, done, failed, and one error entry per failed file."""
    job = services.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job with id {job_id[:64]!r}")
    return job
