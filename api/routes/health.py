from __future__ import annotations

import redis
from fastapi import APIRouter

from api.deps import ServicesDep
from shared.backends import BackendError
from workers.celery_app import QUEUE

router = APIRouter(tags=["health"])


@router.get("/health")
def health(services: ServicesDep) -> dict:
    """Backend, model identity, number of vectors and queue depth; `status` is `degraded` if a service is down."""
    info = services.embedder.info
    problems: list[str] = []
    vectors = queue_depth = None
    try:
        vectors = services.backend.count()
    except BackendError as exc:
        problems.append(f"vector backend: {exc}")
    try:
        queue_depth = int(services.redis.llen(QUEUE))
    except redis.RedisError as exc:
        problems.append(f"redis: {exc}")
    return {
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "backend": services.backend.name,
        "model": {"name": info.name, "pretrained": info.pretrained, "dim": info.dim, "random": info.is_random},
        "vectors": vectors,
        "queue_depth": queue_depth,
    }
