from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, field_validator

from api.deps import ProximaDep
from api.errors import JsonInt, errors
from api.security import SearchAccess
from shared.backends import Hit
from shared.pipeline import MAX_QUERY_CHARS, check_query_text

router = APIRouter(tags=["search"], dependencies=SearchAccess, responses=errors(401, 422, 500, 503))


class SearchResult(BaseModel):
    id: str
    score: float  # cosine similarity, higher is more similar
    filename: str
    image_url: str
    thumbnail_url: str


class SearchResponse(BaseModel):
    results: list[SearchResult]
    took_ms: float


def top_k_param(
    top_k_form: Annotated[int | None, Form(alias="top_k", ge=1, le=1000)] = None,
    top_k_query: Annotated[int | None, Query(alias="top_k", ge=1, le=1000)] = None,
) -> int:
    """`top_k` as a form field or a query parameter; 10 if neither."""
    return top_k_form or top_k_query or 10


TopK = Annotated[int, Depends(top_k_param)]


def to_response(hits: list[Hit], started: float) -> SearchResponse:
    return SearchResponse(
        results=[SearchResult(id=h.id, score=round(h.score, 6), filename=h.record.filename,
                              image_url=f"/images/{h.id}", thumbnail_url=f"/images/{h.id}/thumbnail") for h in hits],
        took_ms=round((time.perf_counter() - started) * 1000, 2),
    )


@router.post("/search", response_model=SearchResponse, responses=errors(400, 413))
async def search(file: Annotated[UploadFile, File(description="the query image")], top_k: TopK,
                 proxima: ProximaDep) -> SearchResponse:
    """The `top_k` indexed images most similar to the uploaded one, best first."""
    started = time.perf_counter()
    data = await file.read()
    hits = await run_in_threadpool(proxima.search_image, data, top_k)
    return to_response(hits, started)


class TextQuery(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S",
                      description="a description of the images to find (not only spaces)")
    top_k: JsonInt = Field(10, ge=1, le=1000)

    @field_validator("text")
    @classmethod
    def _usable(cls, value: str) -> str:
        return check_query_text(value)


@router.post("/search/text", response_model=SearchResponse, responses=errors(400, 409, 413))
async def search_by_text(query: TextQuery, proxima: ProximaDep) -> SearchResponse:
    """Images matching a text, through CLIP's text encoder (same model, same result shape as `/search`).
    CLIP reads about the first 75 words' tokens; longer texts are refused. `409` when the index was built
    with an image-only extractor (`/health` → `capabilities.text_search` is false)."""
    started = time.perf_counter()
    hits = await run_in_threadpool(proxima.search_text, query.text, query.top_k)
    return to_response(hits, started)


@router.get("/images/{image_id}/similar", response_model=SearchResponse, responses=errors(404))
def more_like_this(image_id: str, proxima: ProximaDep,
                   top_k: Annotated[int, Query(ge=1, le=1000)] = 10) -> SearchResponse:
    """Images like an indexed one, from its stored vector (no re-embedding); the image itself is left out."""
    started = time.perf_counter()
    return to_response(proxima.similar(image_id, top_k), started)


router.add_api_route("/search_image", search, methods=["POST"], response_model=SearchResponse,
                     summary="Search (the design document's name)", responses=errors(400, 413))
