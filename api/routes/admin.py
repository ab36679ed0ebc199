from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from api.deps import ServicesDep
from api.security import WriteAccess
from workers.celery_app import RECONCILE, RECONCILE_REPORT_KEY

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=WriteAccess)


class ReconcileRequest(BaseModel):
    delete_orphans: bool = False


@router.post("/reconcile", status_code=202)
def start_reconcile(request: ReconcileRequest, services: ServicesDep) -> dict:
    """Have a worker compare the image store with the index: stored images without a vector are queued
    again (as a job), vectors whose file is gone are reported (deleted with `delete_orphans`).
    Read the outcome with `GET /admin/reconcile`; `scripts/reconcile.py` does the same from a shell."""
    task = services.celery.send_task(RECONCILE, kwargs={"delete_orphans": request.delete_orphans})
    return {"task_id": task.id}


@router.get("/reconcile")
def last_reconcile(services: ServicesDep) -> dict:
    """The report of the last reconcile a worker finished (its `job_id` follows the re-queued images)."""
    raw = services.redis.get(RECONCILE_REPORT_KEY)
    if raw is None:
        raise HTTPException(404, "no reconcile has run yet: POST /admin/reconcile")
    return json.loads(raw)
