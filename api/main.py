"""The FastAPI application: `uvicorn --factory api.main:create_app`. Nothing is built at import time.

Routes are thin: each parses its input and calls one `shared.services.Proxima` method. Errors are ours
(`shared.types`) and become HTTP answers through the handlers in `api/errors.py`, which read the table
`shared.types.ERRORS`; every route documents the errors it can give.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse

from api import errors
from api.limits import BodySizeLimit
from api.routes import admin, duplicates, health, images, ingest, jobs, search
from api.routes import collections as albums
from api.routes import metrics as metrics_route
from api.security import key_matches
from shared.batching import BatchingEmbedder
from shared.config import Settings, get_settings
from shared.embedder import load_embedder, load_model
from shared.metrics import VERSION
from shared.services import Proxima
from ui.app import mount as mount_ui
from ui.service import LocalService

log = logging.getLogger("api")
UI_PATH = "/ui"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for `settings` (default: read from the environment now, when the process starts)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # concurrent searches share model calls (shared/batching.py)
        proxima = Proxima.from_settings(
            settings, encoder=BatchingEmbedder(load_embedder(settings)),
            load_encoder=lambda model: BatchingEmbedder(load_model(settings, model)))
        proxima.check_index(tolerate_outage=True, start_reembed=True)
        app.state.proxima = proxima
        yield
        proxima.close()

    app = FastAPI(title="Proxima", summary="Self-hosted image similarity search", version=VERSION,
                  lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes, exempt=(f"{UI_PATH}/",))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["X-API-Key", "Content-Type"])
    for module in (images, search, albums, duplicates, ingest, jobs, admin, health):
        app.include_router(module.router)
    app.add_api_route("/", lambda: RedirectResponse(f"{UI_PATH}/"), include_in_schema=False)
    errors.install(app)
    # GET /metrics (not in the OpenAPI document) and the request counts; the page's requests count as /ui
    metrics_route.install(app, groups=(UI_PATH,))

    flower = settings.flower_url or f":{settings.flower_port}"
    # The page calls the services directly, so with API_KEY set it asks for the key itself (as the password).
    auth = (lambda _user, password: key_matches(settings, password)) if settings.api_key.get_secret_value() else None
    return mount_ui(app, LocalService(lambda: app.state.proxima, flower_url=flower), path=UI_PATH, auth=auth,
                    allowed_paths=[str(settings.images_dir)], max_file_size=f"{settings.max_upload_mb}mb")
