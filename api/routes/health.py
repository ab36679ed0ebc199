from __future__ import annotations

from fastapi import APIRouter

from api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(services: ServicesDep) -> dict:
    """Backend, model identity, number of vectors and queue depth; `status` is `degraded` if a service is down."""
    return services.health()
