"""What a route needs, built once in the lifespan and kept on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis
from celery import Celery
from fastapi import Depends, Request

from shared.backends import VectorBackend
from shared.config import Settings
from shared.embedder import Embedder
from shared.imagestore import ImageStore
from shared.jobs import JobStore
from workers.celery_app import EMBED_BATCH


@dataclass
class Services:
    settings: Settings
    images: ImageStore
    backend: VectorBackend
    embedder: Embedder
    jobs: JobStore
    redis: redis.Redis
    celery: Celery

    def enqueue(self, job_id: str, batch_key: str, items: list[dict[str, str]]) -> None:
        self.celery.send_task(EMBED_BATCH, args=[job_id, batch_key, items])


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
