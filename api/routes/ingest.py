from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import ProximaDep
from api.errors import JsonBool, errors
from api.fields import Name
from api.security import WriteAccess

router = APIRouter(tags=["ingest"], dependencies=WriteAccess, responses=errors(401, 503))


class IngestRequest(BaseModel):
    path: str = Field(min_length=1, max_length=4096, description="a folder under one of INGEST_ROOTS")
    recursive: JsonBool = True
    collection: Name | None = Field(None, description="put the folder's images into this collection (created if new)")


class IngestStarted(BaseModel):
    job_id: str
    path: str


@router.post("/ingest", status_code=202, response_model=IngestStarted, responses=errors(400, 403, 404, 413, 422))
def start_ingest(request: IngestRequest, proxima: ProximaDep) -> IngestStarted:
    """Index every image in a folder the server can read. Follow it with `GET /jobs/{job_id}`."""
    job_id, folder = proxima.start_folder_ingest(request.path, request.recursive, request.collection)
    return IngestStarted(job_id=job_id, path=str(folder))
