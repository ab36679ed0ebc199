"""Named collections (albums). Images join them at upload (`collection=`), at folder ingest, or one by one
(`PUT /images/{id}/collections/{name}`); searches filter on them (`collection=`)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from api.deps import ProximaDep
from api.errors import errors
from api.fields import Name
from api.security import SearchAccess, WriteAccess
from shared.labels import MAX_DESCRIPTION_CHARS, Collection

router = APIRouter(tags=["collections"], responses=errors(401, 503))


class NewCollection(BaseModel):
    name: Name = Field(description="1-64 characters, no control characters")
    description: str = Field("", max_length=MAX_DESCRIPTION_CHARS)


class CollectionInfo(BaseModel):
    name: str
    description: str
    created_at: float = Field(description="Unix time")
    images: int | None = Field(description="indexed images in it (null while the vector database is down)")

    @classmethod
    def of(cls, collection: Collection, images: int | None) -> CollectionInfo:
        return cls(**vars(collection), images=images)


class CollectionList(BaseModel):
    collections: list[CollectionInfo]


@router.post("/collections", response_model=CollectionInfo, status_code=201, dependencies=WriteAccess,
             responses={200: {"model": CollectionInfo, "description": "it existed already (its description is "
                                                                       "updated when one is given)"},
                        **errors(400, 422)})
def create_collection(new: NewCollection, proxima: ProximaDep, response: Response) -> CollectionInfo:
    """Create a collection (201), or return the existing one of that name (200)."""
    collection, created = proxima.create_collection(new.name, new.description)
    if not created:
        response.status_code = 200
    return CollectionInfo.of(collection, None if created else proxima.collection_size(collection.name))


@router.get("/collections", response_model=CollectionList, dependencies=SearchAccess)
def list_collections(proxima: ProximaDep) -> CollectionList:
    """Every collection, by name, with how many indexed images it holds."""
    return CollectionList(collections=[CollectionInfo.of(c, n) for c, n in proxima.list_collections()])
