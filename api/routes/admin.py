from __future__ import annotations

import json

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import ProximaDep
from api.errors import JsonBool, errors
from api.security import WriteAccess
from shared.types import NotFound

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=WriteAccess, responses=errors(401, 503))


class ReconcileRequest(BaseModel):
    delete_orphans: JsonBool = False


@router.post("/reconcile", status_code=202, responses=errors(400, 413, 422))
def start_reconcile(request: ReconcileRequest, proxima: ProximaDep) -> dict:
    """Have a worker compare the image store with the index: stored images without a vector are queued
    again (as a job), vectors whose file is gone are reported (deleted with `delete_orphans`).
    Read the outcome with `GET /admin/reconcile`; `scripts/reconcile.py` does the same from a shell."""
    return {"task_id": proxima.queue.reconcile(delete_orphans=request.delete_orphans)}


@router.get("/reconcile", responses=errors(404))
def last_reconcile(proxima: ProximaDep) -> dict:
    """The report of the last reconcile a worker finished (its `job_id` follows the re-queued images)."""
    raw = proxima.last_reconcile()
    if raw is None:
        raise NotFound("no reconcile has run yet: POST /admin/reconcile")
    return json.loads(raw)
