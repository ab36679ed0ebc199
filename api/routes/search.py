"""Searches by image, by text and by an indexed image, with the same filters and paging everywhere.

Filters are form fields of `POST /search` (beside the file), JSON fields of `POST /search/text`, and query
parameters of `GET /images/{id}/similar`; list fields repeat (`format=JPEG&format=PNG`) or are JSON arrays.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, field_validator

from api.deps import ProximaDep
from api.errors import JsonBool, JsonInt, errors
from api.fields import IsoTime, JsonFloat, Names
from api.security import SearchAccess
from shared.backends import Hit
from shared.filters import MAX_DEPTH, MAX_PATH_CHARS
from shared.pipeline import MAX_QUERY_CHARS, Page, check_query_text

router = APIRouter(tags=["search"], dependencies=SearchAccess, responses=errors(401, 422, 500, 503))

BBOX_PATTERN = r"^\s*-?\d+(\.\d+)?(\s*,\s*-?\d+(\.\d+)?){3}\s*$"  # four numbers; their ranges are checked after
TIME = "ISO 8601: a date (`2024-06-30`, the whole day) or a time (`2024-06-30T18:00:00+02:00`; UTC if no offset)"


class Filters(BaseModel):
    """What to search among, and which page of the results (every field optional)."""

    captured_from: IsoTime = Field(None, description=f"taken at or after; {TIME}")
    captured_to: IsoTime = Field(None, description=f"taken at or before; {TIME}")
    ingested_from: IsoTime = Field(None, description=f"indexed at or after; {TIME}")
    ingested_to: IsoTime = Field(None, description=f"indexed at or before; {TIME}")
    format: Names = Field(default_factory=list, description="any of these formats (JPEG, PNG, WEBP, HEIF, ...)")
    min_width: JsonInt = Field(0, ge=0, le=1_000_000, description="at least this many pixels wide")
    min_height: JsonInt = Field(0, ge=0, le=1_000_000, description="at least this many pixels high")
    camera: Names = Field(default_factory=list, description="camera make or model, exactly (any of)")
    has_gps: bool | None = Field(None, description="true: only images with a GPS position; false: only without")
    bbox: str | None = Field(None, max_length=100, pattern=BBOX_PATTERN,
                             description="`south,west,north,east` in degrees: taken inside this area")
    collection: Names = Field(default_factory=list, description="in any of these collections")
    tag: Names = Field(default_factory=list, description="has every one of these tags")
    any_tag: Names = Field(default_factory=list, description="has at least one of these tags")
    path_prefix: str | None = Field(None, max_length=MAX_PATH_CHARS, pattern=r"^[^\x00-\x1f\x7f]*$",
                                    description="folder ingests: path (relative to the ingest root) starts with this")
    min_score: JsonFloat | None = Field(None, ge=-1, le=1, allow_inf_nan=False,
                                    description="leave out results less similar than this (cosine)")
    offset: JsonInt = Field(0, ge=0, lt=MAX_DEPTH,
                            description=f"skip this many results (paging; offset + top_k ≤ {MAX_DEPTH})")
    top_k: JsonInt | None = Field(None, ge=1, le=1000, description="how many results (default 10)")

    def page(self, top_k: int | None = None) -> Page:
        """The page these fields ask for (BadInput, a 422 naming the field, for a bad value)."""
        return Page.from_fields(self.model_dump(), top_k=self.top_k or top_k or 10, offset=self.offset)


class SearchResult(BaseModel):
    id: str
    score: float  # cosine similarity, higher is more similar
    filename: str
    image_url: str
    thumbnail_url: str
    format: str
    width: int
    height: int
    captured_at: datetime | None = Field(description="when the photo was taken (EXIF), UTC")
    camera: str = Field(description="camera make and model (EXIF), empty if unknown")
    has_gps: bool
    collections: list[str]
    tags: list[str]
    path: str = Field(description="folder ingests: the path relative to the ingest root")


class SearchResponse(BaseModel):
    results: list[SearchResult]
    took_ms: float
    offset: int = 0
    next_offset: int | None = Field(None, description="the offset of the next page; null when there is none")


def camera(make: str, model: str) -> str:
    """`Canon EOS 5D`, not `Canon Canon EOS 5D`."""
    return model if model.startswith(make) else f"{make} {model}".strip()


def to_response(hits: list[Hit], started: float, page: Page | None = None) -> SearchResponse:
    page = page or Page()
    return SearchResponse(
        results=[SearchResult(id=h.id, score=round(h.score, 6), filename=h.record.filename,
                              image_url=f"/images/{h.id}", thumbnail_url=f"/images/{h.id}/thumbnail",
                              format=h.record.format, width=h.record.width, height=h.record.height,
                              captured_at=h.record.captured_at, camera=camera(h.record.camera_make,
                                                                              h.record.camera_model),
                              has_gps=h.record.has_gps, collections=list(h.record.collections),
                              tags=list(h.record.tags), path=h.record.path) for h in hits],
        took_ms=round((time.perf_counter() - started) * 1000, 2),
        offset=page.offset, next_offset=page.next_offset(len(hits)),
    )


@router.post("/search", response_model=SearchResponse, responses=errors(400, 413))
async def search(file: Annotated[UploadFile, File(description="the query image")],
                 filters: Annotated[Filters, Form()], proxima: ProximaDep,
                 top_k: Annotated[int | None, Query(ge=1, le=1000, description="also as a query parameter")] = None,
                 ) -> SearchResponse:
    """The indexed images most similar to the uploaded one, best first, among those matching the filters."""
    started = time.perf_counter()
    page = filters.page(top_k)
    data = await file.read()
    hits = await run_in_threadpool(proxima.search_image, data, page)
    return to_response(hits, started, page)


class TextQuery(Filters):
    text: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S",
                      description="a description of the images to find (not only spaces)")
    has_gps: JsonBool | None = Field(None, description="true: only images with a GPS position; false: only without")

    @field_validator("text")
    @classmethod
    def _usable(cls, value: str) -> str:
        return check_query_text(value)


@router.post("/search/text", response_model=SearchResponse, responses=errors(400, 409, 413))
async def search_by_text(query: TextQuery, proxima: ProximaDep) -> SearchResponse:
    """Images matching a text, through CLIP's text encoder (same model, same result shape and filters as
    `/search`). CLIP reads about the first 75 words' tokens; longer texts are refused. `409` when the index
    was built with an image-only extractor (`/health` → `capabilities.text_search` is false)."""
    started = time.perf_counter()
    page = query.page()
    hits = await run_in_threadpool(proxima.search_text, query.text, page)
    return to_response(hits, started, page)


@router.get("/images/{image_id}/similar", response_model=SearchResponse, responses=errors(404))
def more_like_this(image_id: str, filters: Annotated[Filters, Query()], proxima: ProximaDep) -> SearchResponse:
    """Images like an indexed one, from its stored vector (no re-embedding); the image itself is left out."""
    started = time.perf_counter()
    page = filters.page()
    return to_response(proxima.similar(image_id, page), started, page)


router.add_api_route("/search_image", search, methods=["POST"], response_model=SearchResponse,
                     summary="Search (the design document's name)", responses=errors(400, 413))
