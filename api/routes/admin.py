from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from api.deps import ProximaDep
from api.errors import JsonBool, errors
from api.security import WriteAccess
from shared.embedder import identify, settings_for
from shared.types import BadInput, ModelInfo, ModelLoadError, NotFound

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


SLUG = r"^[a-z0-9_]{1,64}$"


class ModelRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="the model: an open_clip architecture "
                      "(ViT-B-32, ViT-L-14, ...) or efficientnet-lite0/1/2")
    pretrained: str = Field(min_length=1, max_length=1000, description="a pretrained tag (laion2b_s34b_b79k) or "
                            "the path of a checkpoint file on the workers")
    extractor: Literal["open_clip", "efficientnet_lite"] = "open_clip"
    precision: Literal["", "int8"] = Field("", description="int8: quantized weights (another identity)")
    activate_when_done: JsonBool = Field(False, description="switch to it as soon as its index is complete")


@router.get("/models")
def list_models(proxima: ProximaDep) -> dict:
    """Every model identity with its index: `active` (serves searches), `building` (being re-embedded; new
    images are written to it too) or `retired`; vector counts and the re-embed job's progress."""
    return {"models": proxima.model_indexes()}


@router.post("/models", status_code=202, responses=errors(400, 409, 413, 422))
def start_reembed(request: ModelRequest, proxima: ProximaDep) -> dict:
    """Re-embed every stored image with another model into its own index, in the background; searches keep
    using the active model meanwhile. Follow it at `GET /jobs/{job_id}`; activate it with
    `POST /admin/models/{slug}/activate` (or `activate_when_done`). Posting the same model again resumes:
    only images its index lacks are embedded."""
    wanted = ModelInfo(request.name, request.pretrained, 0, precision=request.precision, extractor=request.extractor)
    try:
        model = identify(settings_for(proxima.settings, wanted))  # checks the model exists, gives its dimension
    except ModelLoadError as exc:
        raise BadInput(f"cannot use that model: {exc}") from None
    job_id, entry = proxima.start_reembed(model, activate_when_done=request.activate_when_done)
    return {"job_id": job_id, "slug": entry.slug, "model": model.label(), "dim": model.dim, "index": entry.index}


@router.post("/models/{slug}/activate", responses=errors(404, 409, 422))
def activate_model(proxima: ProximaDep, slug: str = Path(pattern=SLUG)) -> dict:
    """Serve searches with this model's index from now on (every API process and worker follows within a few
    seconds). Refused (409) unless its index holds exactly the stored images."""
    entry = proxima.activate(slug)
    return {"slug": entry.slug, "state": entry.state, "model": entry.model.label()}


@router.post("/models/{slug}/retire", responses=errors(404, 409, 422))
def retire_model(proxima: ProximaDep, slug: str = Path(pattern=SLUG)) -> dict:
    """Delete the index of a model that is not active (a retired one, or a re-embed to abandon)."""
    entry = proxima.retire(slug)
    return {"slug": entry.slug, "state": "deleted", "model": entry.model.label()}
