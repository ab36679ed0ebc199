"""`GET /metrics` (Prometheus' text format; not in the OpenAPI document) and the middleware that counts every
request by route template, method and status. The metrics themselves are defined in `shared.metrics`.

The endpoint is open like /health (a Prometheus server scrapes it without a key): it shows counts and
timings, the model's slug and the database's name, never ids, file names or queries.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import redis
from fastapi import FastAPI, Request, Response
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import metrics
from shared.types import ProximaError


def install(app: FastAPI, *, groups: tuple[str, ...] = ()) -> None:
    """Add `GET /metrics`, the request-counting middleware (outermost, so it also sees the answers other
    middleware gives, such as 413) and the count of backend errors (call it after `api.errors.install`).
    Requests under a prefix in `groups` (the mounted page) count as that prefix."""
    scrape = metrics.registry(lambda: _facts(app))

    def read_metrics(request: Request) -> Response:
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(scrape), headers={"Content-Type": content_type})

    # sync: the scrape reads Redis (queue depth) and the catalogue, in the thread pool, not the event loop
    app.add_api_route("/metrics", read_metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(HttpMetrics, groups=groups)
    # backend errors the API answers (503, 500) are counted by kind on their way to `api.errors`' handlers
    for error in (ProximaError, redis.ConnectionError, redis.TimeoutError):
        handler = app.exception_handlers.get(error)
        if handler is not None:
            app.add_exception_handler(error, _counting(handler))


def _counting(handler: Callable[[Request, Any], Response | Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    async def counted(request: Request, exc: Exception) -> Response:
        metrics.record_error(exc)
        answer = handler(request, exc)
        return await answer if inspect.isawaitable(answer) else answer

    return counted


def _facts(app: FastAPI) -> Iterator[Metric]:
    """What the API reads at scrape time: the queue depth and the model it serves (once the lifespan has run)."""
    proxima = getattr(app.state, "proxima", None)
    if proxima is None:
        return
    yield from metrics.queue_depth(proxima.queue)
    try:
        model = proxima.model
    except ProximaError as exc:
        metrics.record_error(exc)
        model = proxima.encoder
    if model is not None:
        yield metrics.build_info("api", model, proxima.settings.vector_backend)


class HttpMetrics:
    """A pure ASGI middleware: one count and one duration per HTTP request, labelled with the route's template
    (`/images/{image_id}`), never the raw path."""

    def __init__(self, app: ASGIApp, groups: tuple[str, ...] = ()) -> None:
        self.app = app
        self.groups = groups
        self._templates: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        app = scope.get("app")  # the FastAPI app (a mounted app puts itself here once routed to)
        status = 500  # what the server answers when the app raises before it starts a response

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - started
            metrics.record_request(scope["method"], self._route(path, scope, app), status, elapsed)

    def _route(self, path: str, scope: Scope, app: object) -> str:
        for prefix in self.groups:
            if path == prefix or path.startswith(prefix + "/"):
                return prefix
        template = getattr(scope.get("route"), "path", None)
        if isinstance(template, str) and template:
            return template
        return self._match(path, app)  # answered before routing (a 413), or by no route at all (a 404)

    def _match(self, path: str, app: object) -> str:
        """The OpenAPI template `path` falls under (the document lists every route of the included routers)."""
        if self._templates is None:
            if not isinstance(app, FastAPI):
                return metrics.UNMATCHED
            self._templates = [(re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(t)) + "$"), t)
                               for t in app.openapi().get("paths", {})]
        return next((t for pattern, t in self._templates if pattern.match(path)), metrics.UNMATCHED)
