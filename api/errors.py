"""What an error answer looks like, and which ones each route documents.

Every error we answer has one body shape, `ErrorBody` ({"detail", "kind"}); request validation errors
keep FastAPI's shape (`HTTPValidationError`, a list under `detail`), so a 422 is documented as either.
The handlers here turn our exceptions (`shared.types.ERRORS`), Starlette's own HTTP errors (400 for a
body that cannot be parsed, 404, 405) and anything else into those bodies; a 405 lists every method the
path has in `Allow`, not just those of the first route that matched.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, Field, StrictBool
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.types import ErrorInfo, ErrorKind, describe, kind_of_status

log = logging.getLogger("api")


def not_a_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("expected an integer, not a boolean")
    return value


# JSON request fields that take what their schema says: an integer (3 or 3.0, not true), a boolean (true or
# false, not 1 or "yes"). Pydantic's lax mode would take more than the document promises.
JsonInt = Annotated[int, BeforeValidator(not_a_bool)]
JsonBool = StrictBool


class ErrorBody(BaseModel):
    detail: str = Field(description="what went wrong, for a person")
    kind: ErrorKind = Field(description="bad_input, forbidden, not_found, unavailable or error")


_DESCRIPTIONS = {
    400: "the request body could not be parsed",
    401: "missing or wrong API key (send X-API-Key; only when API_KEY is set)",
    403: "not allowed (e.g. a folder outside INGEST_ROOTS, or folder ingest disabled)",
    404: "no such image, job or folder",
    409: "not possible in this state: the job is sealed (no more images can be added), or text search on an "
         "index built with an image-only extractor",
    413: "the request body is larger than MAX_UPLOAD_MB, or has more files than MAX_FILES_PER_REQUEST",
    422: "a value out of range (FastAPI's validation errors), or a file that is not a usable image",
    500: "the vector database refused the operation",
    503: "Redis or the vector database is unreachable: try again after Retry-After seconds",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route (or router) for these error statuses."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        if status == 422:
            schema = {"anyOf": [{"$ref": "#/components/schemas/ErrorBody"},
                                {"$ref": "#/components/schemas/HTTPValidationError"}]}
            out[422] = {"description": _DESCRIPTIONS[422], "content": {"application/json": {"schema": schema}}}
        else:
            out[status] = {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
    return out


def error_response(status: int, kind: ErrorKind, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(detail=detail, kind=kind).model_dump(), status_code=status, headers=headers)


async def ours(_: Request, exc: Exception) -> JSONResponse:
    """One of our exceptions (or Redis being down), by the table in shared.types."""
    info, message = describe(exc) or (ErrorInfo("error", 500), str(exc))
    if info.status >= 500 and info.status != 503:
        log.error("%s", message)
    return error_response(info.status, info.kind, message, info.headers)


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    import redis

    from shared.types import ProximaError

    for error in (ProximaError, redis.ConnectionError, redis.TimeoutError):
        app.add_exception_handler(error, ours)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # all the methods of the path (Starlette names only those of the first route that matched it)
            headers["Allow"] = ", ".join(_methods(app, request.url.path)) or headers.get("Allow", "")
        return error_response(exc.status_code, kind_of_status(exc.status_code), str(exc.detail), headers)

    app.add_exception_handler(StarletteHTTPException, http_error)


def _methods(app: FastAPI, path: str) -> list[str]:
    """Every method the OpenAPI document lists for `path` (routes of included routers are not flat in
    `app.routes`, and the document is what clients read)."""
    methods: set[str] = set()
    for template, operations in app.openapi().get("paths", {}).items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            methods.update(m.upper() for m in operations)
    return sorted(methods)
