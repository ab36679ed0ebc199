"""Near-duplicates: start a run (`POST /admin/duplicates`), page through its groups, resolve one."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from api.deps import ProximaDep
from api.errors import JsonInt, errors
from api.fields import JsonFloat
from api.security import SearchAccess, WriteAccess
from shared.duplicates import DEFAULT_NEIGHBOURS, DEFAULT_THRESHOLD, KEEP_RULE, Group
from shared.imagestore import is_image_id
from shared.types import NotFound

router = APIRouter(tags=["duplicates"], responses=errors(401, 503))
IMAGE_ID = r"^[0-9a-f]{64}$"
Ids = Annotated[list[Annotated[str, Field(pattern=IMAGE_ID)]], Field(max_length=1000)]


class DuplicatesRequest(BaseModel):
    threshold: JsonFloat = Field(DEFAULT_THRESHOLD, gt=0.0, le=1.0,
                                 description="two images are near-duplicates at this cosine similarity or above")
    k: JsonInt = Field(DEFAULT_NEIGHBOURS, ge=1, le=100, description="neighbours looked at per image")


class Started(BaseModel):
    job_id: str


@router.post("/admin/duplicates", status_code=202, response_model=Started, dependencies=WriteAccess,
             responses=errors(400, 409, 413, 422))
def start_duplicates(request: DuplicatesRequest, proxima: ProximaDep) -> Started:
    """Have a worker look for near-duplicates across the whole collection (each image's nearest neighbours
    from the index, pairs at or above `threshold` joined into groups). Follow it at `GET /jobs/{job_id}`;
    the groups replace the previous run's when it finishes. A run cut short is resumed by posting again (409
    while a worker runs one with another threshold or k)."""
    return Started(job_id=proxima.start_duplicates(request.threshold, request.k))


class Member(BaseModel):
    id: str
    score: float = Field(description="cosine similarity to the group's suggested keeper")
    keeper: bool
    filename: str
    format: str
    width: int
    height: int
    size_bytes: int
    captured_at: datetime | None
    image_url: str
    thumbnail_url: str


class GroupOut(BaseModel):
    id: str = Field(description="the group's id (its keeper's image id)")
    size: int
    members: list[Member]


class DuplicatesPage(BaseModel):
    groups: list[GroupOut]
    total: int = Field(description="groups in all")
    offset: int
    next_offset: int | None
    keep_rule: str = Field(description="how the suggested keeper is chosen")
    run: dict | None = Field(description="the run these groups come from: threshold, k, when, job_id")


def _group(group: Group, records: dict) -> GroupOut:
    members = [Member(id=m.id, score=m.score, keeper=m.id == group.keeper, filename=r.filename, format=r.format,
                      width=r.width, height=r.height, size_bytes=r.size_bytes, captured_at=r.captured_at,
                      image_url=f"/images/{m.id}", thumbnail_url=f"/images/{m.id}/thumbnail")
               for m in group.members if (r := records.get(m.id)) is not None]
    return GroupOut(id=group.id, size=len(members), members=members)


@router.get("/duplicates", response_model=DuplicatesPage, dependencies=SearchAccess, responses=errors(422))
def list_duplicates(proxima: ProximaDep, offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
                    limit: Annotated[int, Query(ge=1, le=200)] = 20) -> DuplicatesPage:
    """Groups of near-duplicates from the last run, the largest first, each with its suggested keeper first
    and every member's score to it."""
    total, page = proxima.duplicate_groups(offset, limit)
    return DuplicatesPage(groups=[_group(g, records) for g, records in page], total=total, offset=offset,
                          next_offset=offset + limit if offset + limit < total else None, keep_rule=KEEP_RULE,
                          run=proxima.duplicates.info())


class Resolve(BaseModel):
    delete: Ids = Field(default_factory=list, description="members to delete (vector and stored file)")
    ungroup: Ids = Field(default_factory=list, description="members to take out of the group, kept")


class Resolved(BaseModel):
    deleted: int = Field(description="members deleted (those already gone are not counted)")
    group: GroupOut | None = Field(description="what is left of the group; null when fewer than two remain")


@router.post("/duplicates/{group_id}/resolve", response_model=Resolved, dependencies=WriteAccess,
             responses=errors(400, 404, 413, 422))
def resolve_duplicates(request: Resolve, proxima: ProximaDep,
                       group_id: str = Path(pattern=IMAGE_ID)) -> Resolved:
    """Delete chosen members of a group and/or take them out of it ("keep all": ungroup every member but the
    keeper; "delete the rest": delete them)."""
    if not is_image_id(group_id):
        raise NotFound(f"no duplicate group {group_id[:80]!r}")
    deleted, left = proxima.resolve_duplicates(group_id, delete=request.delete, ungroup=request.ungroup)
    records = proxima.backend.get([m.id for m in left.members]) if left else {}
    return Resolved(deleted=deleted, group=_group(left, records) if left else None)
