from __future__ import annotations

from fastapi import APIRouter

from api.deps import ProximaDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(proxima: ProximaDep) -> dict:
    """Backend, model identity, number of vectors and queue depth; `status` is `degraded` if a service is down."""
    return proxima.health()
