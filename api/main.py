"""FastAPI application: `uvicorn api.main:app`. Routes are thin; the work is in shared/pipeline.py."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse

from api.deps import Services
from api.limits import BodySizeLimit
from api.routes import admin, health, images, ingest, jobs, search
from api.security import key_matches
from shared.backends import BackendError, BackendUnavailable, make_backend
from shared.batching import BatchingEmbedder
from shared.config import Settings, get_settings
from shared.embedder import load_embedder
from shared.imagestore import ImageStore
from shared.imaging import ImageError
from shared.ingest import RedisManifest
from shared.jobs import JobStore
from ui.app import mount as mount_ui
from ui.service import LocalService
from workers.celery_app import make_celery

log = logging.getLogger("api")
UI_PATH = "/ui"


def build_services(settings: Settings) -> Services:
    embedder = BatchingEmbedder(load_embedder(settings))  # concurrent searches share model calls
    backend = make_backend(settings)
    try:
        backend.ensure_schema(embedder.info)
    except BackendUnavailable as exc:
        # Start anyway: searches answer 503 until the database is back, and workers create the schema.
        log.warning("vector backend unavailable at start-up: %s", exc)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=10)
    return Services(
        settings=settings,
        images=ImageStore(settings.images_dir),
        backend=backend,
        embedder=embedder,
        jobs=JobStore(client, ttl_s=settings.job_ttl_days * 86400),
        redis=client,
        celery=make_celery(settings),
        manifest=RedisManifest(client),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings)
        app.state.services = services
        yield
        for stop in services.walks.values():
            stop.set()  # running folder walks seal their jobs and end
        services.backend.close()
        services.redis.close()

    app = FastAPI(
        title="Proxima",
        summary="Self-hosted image similarity search",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes, exempt=(f"{UI_PATH}/",))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["X-API-Key", "Content-Type"])
    for module in (images, search, ingest, jobs, admin, health):
        app.include_router(module.router)
    app.add_api_route("/", lambda: RedirectResponse(f"{UI_PATH}/"), include_in_schema=False)

    @app.exception_handler(ImageError)
    async def _image_error(_: Request, exc: ImageError) -> JSONResponse:
        return JSONResponse({"detail": f"not a usable image: {exc}"}, status_code=422)

    @app.exception_handler(BackendUnavailable)
    async def _backend_down(_: Request, exc: BackendUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"vector database unavailable, try again shortly: {exc}"},
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(BackendError)
    async def _backend_error(_: Request, exc: BackendError) -> JSONResponse:
        log.error("backend error: %s", exc)
        return JSONResponse({"detail": f"vector database error: {exc}"}, status_code=500)

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def _redis_down(_: Request, exc: redis.RedisError) -> JSONResponse:
        return JSONResponse({"detail": f"job queue (Redis) unavailable, try again shortly: {exc}"},
                            status_code=503, headers={"Retry-After": "5"})

    flower = settings.flower_url or f":{settings.flower_port}"
    # The page calls the services directly, so with API_KEY set it asks for the key itself (as the password).
    auth = (lambda _user, password: key_matches(settings, password)) if settings.api_key.get_secret_value() else None
    return mount_ui(app, LocalService(lambda: app.state.services, flower_url=flower), path=UI_PATH, auth=auth,
                    allowed_paths=[str(settings.images_dir)], max_file_size=f"{settings.max_upload_mb}mb")


app = create_app()
