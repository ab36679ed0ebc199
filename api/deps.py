"""What a route needs, built once in the lifespan and kept on `app.state`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated

import redis
from celery import Celery
from fastapi import Depends, Request

from shared.backends import VectorBackend
from shared.config import Settings
from shared.embedder import Embedder
from shared.imagestore import ImageStore
from shared.ingest import RedisManifest
from shared.jobs import JobStore
from workers.celery_app import EMBED_BATCH, INGEST_FILES, QUEUE


@dataclass
class Services:
    settings: Settings
    images: ImageStore
    backend: VectorBackend
    embedder: Embedder
    jobs: JobStore
    redis: redis.Redis
    celery: Celery
    manifest: RedisManifest
    walks: dict[str, threading.Event] = field(default_factory=dict)  # running folder walks → stop flag

    def enqueue(self, job_id: str, batch_key: str, items: list[dict[str, str]]) -> None:
        self.celery.send_task(EMBED_BATCH, args=[job_id, batch_key, items])

    def enqueue_paths(self, job_id: str, batch_key: str, items: list[dict]) -> None:
        self.celery.send_task(INGEST_FILES, args=[job_id, batch_key, items])

    def queue_depth(self) -> int:
        return int(self.redis.llen(QUEUE))


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
