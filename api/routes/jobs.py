from __future__ import annotations

from typing import Annotated, Literal

from annotated_types import Ge, Le
from fastapi import APIRouter, Query
from pydantic import BaseModel, BeforeValidator, Field

from api.deps import ProximaDep
from api.errors import JsonInt, errors, not_a_bool
from api.security import WriteAccess
from shared.types import ClientCounts

router = APIRouter(tags=["jobs"], dependencies=WriteAccess, responses=errors(401, 503))
BODY = errors(400, 413, 422)
MAX_COUNT = 10**12  # a trillion files; Redis counters are 64-bit
Count = Annotated[int, Ge(0), Le(MAX_COUNT), BeforeValidator(not_a_bool)]  # constraints first: in the schema


class OpenJob(BaseModel):
    label: str = Field("", max_length=1024, description="what is being ingested, shown in the job record")


class SealJob(BaseModel):
    """What the client found in its folder without uploading it (all optional)."""

    seen: JsonInt = Field(0, ge=0, le=MAX_COUNT, description="files walked but not uploaded")
    skipped: JsonInt = Field(0, ge=0, le=MAX_COUNT, description="files that are not images")
    duplicates: JsonInt = Field(0, ge=0, le=MAX_COUNT,
                                description="files indexed by an earlier run (they count as done)")
    skipped_reasons: dict[str, Count] = Field(default_factory=dict, description="skipped files by reason")


Kind = Literal["upload", "folder", "reembed", "duplicates"]


class JobsPage(BaseModel):
    jobs: list[dict] = Field(description="newest first; each as `GET /jobs/{job_id}` shows it, without `errors`")
    total: int
    offset: int
    next_offset: int | None


@router.get("/jobs", responses=errors(400, 422))
def list_jobs(proxima: ProximaDep, offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
              limit: Annotated[int, Query(ge=1, le=200)] = 20,
              kind: Annotated[Kind | None, Query(description="only jobs of this kind")] = None) -> JobsPage:
    """Recent jobs (kept for 30 days), newest first: kind, state, counts, rate and ETA, a page at a time."""
    total, jobs = proxima.list_jobs(offset, limit, kind)
    summaries = []
    for job in jobs:
        summary = job.as_dict()
        del summary["errors"]  # `GET /jobs/{job_id}` has them
        summaries.append(summary)
    return JobsPage(jobs=summaries, total=total, offset=offset,
                    next_offset=offset + limit if offset + limit < total else None)


@router.get("/jobs/{job_id}", responses=errors(404))
def get_job(job_id: str, proxima: ProximaDep) -> dict:
    """Progress of an upload or folder ingest: state, counts, rate, ETA, and one error entry per failed file."""
    return proxima.job(job_id).as_dict()


@router.post("/jobs", status_code=201, responses=BODY)
def open_job(request: OpenJob, proxima: ProximaDep) -> dict:
    """An open job that several `POST /images` requests (with `job_id`) add to, until it is sealed.

    Used by `scripts/ingest_folder.py --api` and the page to track many uploads as one job.
    """
    return {"job_id": proxima.open_job(request.label)}


@router.post("/jobs/{job_id}/seal", responses={**BODY, **errors(404)})
def seal_job(job_id: str, proxima: ProximaDep, request: SealJob | None = None) -> dict:
    """No more images will be added: the job completes when the queued ones are done."""
    counts = ClientCounts(**request.model_dump()) if request is not None else None
    return proxima.seal_job(job_id, counts).as_dict()


CONTROL = errors(404, 409)


@router.post("/jobs/{job_id}/pause", responses=CONTROL)
def pause_job(job_id: str, proxima: ProximaDep) -> dict:
    """Pause a job: no new batch of it starts (batches already running finish), a folder or re-embed walk
    stops feeding it, a duplicates run stops after its current batch. State `paused`. Pausing a paused job
    changes nothing; a finished one is 409."""
    return proxima.pause_job(job_id).as_dict()


@router.post("/jobs/{job_id}/resume", responses=CONTROL)
def resume_job(job_id: str, proxima: ProximaDep) -> dict:
    """Go on with a paused job where it stopped: nothing done is done again. A job not paused is left as it
    is; a finished one is 409."""
    return proxima.resume_job(job_id).as_dict()


@router.post("/jobs/{job_id}/cancel", responses=CONTROL)
def cancel_job(job_id: str, proxima: ProximaDep) -> dict:
    """Cancel a job: its remaining batches are dropped (batches already running finish and are counted) and
    its walk stops. State `cancelled`, with `done`, `failed` and `dropped` counts; what was indexed stays.
    A finished job is 409."""
    return proxima.cancel_job(job_id).as_dict()
