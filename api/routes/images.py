from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from api.deps import ProximaDep
from api.errors import errors
from api.fields import Names
from api.security import SearchAccess, WriteAccess
from shared.backends import ImageRecord
from shared.filters import LABEL_PATTERN, MAX_LABEL_CHARS
from shared.imaging import MIME_TYPES, probe
from shared.services import Proxima
from shared.types import Accepted, ImageError, Upload

router = APIRouter(tags=["images"], responses=errors(401))
UPLOAD = errors(400, 413, 422, 500, 503)


class ImageStatus(BaseModel):
    id: str | None
    filename: str
    status: str  # queued | duplicate | rejected
    error: str | None = None


class UploadResponse(BaseModel):
    job_id: str
    images: list[ImageStatus]


class IndexImageResponse(BaseModel):
    id: str
    job_id: str
    status: str


async def _accept(proxima: Proxima, files: list[UploadFile], job_id: str | None = None,
                  collection: str | None = None) -> tuple[str, list[Accepted]]:
    uploads = []
    for f in files:
        uploads.append(Upload(filename=f.filename or "", data=await f.read()))
        await f.close()
    return await run_in_threadpool(proxima.accept, uploads, job_id, collection)


CollectionField = Annotated[str | None, Form(min_length=1, max_length=MAX_LABEL_CHARS, pattern=LABEL_PATTERN,
                                             description="put the images into this collection (created if new)")]


@router.post("/images", status_code=202, response_model=UploadResponse, dependencies=WriteAccess,
             responses={**UPLOAD, **errors(404, 409)})
async def upload_images(
    files: Annotated[list[UploadFile], File(description="one or more images", min_length=1)],
    proxima: ProximaDep,
    job_id: Annotated[str | None, Form(description="add to this open job (see POST /jobs)")] = None,
    collection: CollectionField = None,
) -> UploadResponse:
    """Store the images and queue them for indexing. Poll `/jobs/{job_id}` for progress. With `collection`,
    they go into that collection (images indexed before are added to it at once)."""
    job_id, accepted = await _accept(proxima, files, job_id, collection)
    return UploadResponse(job_id=job_id, images=[ImageStatus(**vars(a)) for a in accepted])


@router.post("/index_image", status_code=202, response_model=IndexImageResponse, dependencies=WriteAccess,
             responses=UPLOAD)
async def index_image(file: Annotated[UploadFile, File()], proxima: ProximaDep,
                      collection: CollectionField = None) -> IndexImageResponse:
    """One image (the design document's endpoint); same as `POST /images` with a single file."""
    job_id, (accepted,) = await _accept(proxima, [file], collection=collection)
    if accepted.id is None:  # rejected
        raise ImageError(accepted.error or "rejected")
    return IndexImageResponse(id=accepted.id, job_id=job_id, status=accepted.status)


@router.get("/images/{image_id}", response_class=FileResponse, dependencies=SearchAccess,
            responses={200: {"content": {"image/*": {}}, "description": "the original bytes"}, **errors(404)})
def get_image(image_id: str, proxima: ProximaDep) -> FileResponse:
    """The original file as uploaded, with its Content-Type."""
    path = proxima.stored_path(image_id)
    try:
        media_type = MIME_TYPES.get(probe(path, max_pixels=2**62)[0], "application/octet-stream")
    except ImageError:
        media_type = "application/octet-stream"
    return FileResponse(path, media_type=media_type,
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})


@router.get("/images/{image_id}/thumbnail", response_class=FileResponse, dependencies=SearchAccess,
            responses={200: {"content": {"image/webp": {}}, "description": "a small WebP of the image"},
                       **errors(404, 422)})
def get_thumbnail(image_id: str, proxima: ProximaDep) -> FileResponse:
    """A WebP at most 320 pixels on its long side, made on first request (what result pages show)."""
    return FileResponse(proxima.thumbnail(image_id), media_type="image/webp",
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})


router.add_api_route("/image/{image_id}", get_image, methods=["GET"], include_in_schema=False,
                     dependencies=SearchAccess)


@router.delete("/images/{image_id}", status_code=204, dependencies=WriteAccess, responses=errors(404, 500, 503))
def remove_image(image_id: str, proxima: ProximaDep) -> Response:
    """Delete the vector and the stored file."""
    proxima.delete(image_id)
    return Response(status_code=204)


# --- metadata, collections and tags ---------------------------------------------------------------------


class ImageInfo(BaseModel):
    """Everything stored beside an image's vector."""

    id: str
    filename: str
    size_bytes: int
    format: str
    width: int
    height: int
    model: str = Field(description="the model that embedded it")
    created_at: datetime = Field(description="when it was indexed (UTC)")
    captured_at: datetime | None = Field(description="when it was taken (EXIF DateTimeOriginal), UTC")
    camera_make: str
    camera_model: str
    latitude: float | None
    longitude: float | None
    orientation: int = Field(description="EXIF orientation of the file (1-8); the image is indexed upright")
    path: str = Field(description="folder ingests: the path relative to the ingest root")
    collections: list[str]
    tags: list[str]

    @classmethod
    def of(cls, record: ImageRecord) -> ImageInfo:
        return cls(**{**vars(record), "collections": list(record.collections), "tags": list(record.tags)})


class TagChange(BaseModel):
    """`tags` replaces every tag; `add_tags` / `remove_tags` change some (applied after `tags`)."""

    tags: Names | None = None
    add_tags: Names = Field(default_factory=list)
    remove_tags: Names = Field(default_factory=list)


CollectionName = Annotated[str, Path(max_length=MAX_LABEL_CHARS, pattern=LABEL_PATTERN, description="the collection")]


@router.get("/images/{image_id}/metadata", response_model=ImageInfo, dependencies=SearchAccess,
            responses=errors(404, 503))
def image_metadata(image_id: str, proxima: ProximaDep) -> ImageInfo:
    """What is stored beside an indexed image: file facts, EXIF capture time, camera and GPS, its path,
    collections and tags."""
    return ImageInfo.of(proxima.record(image_id))


@router.patch("/images/{image_id}", response_model=ImageInfo, dependencies=WriteAccess,
              responses=errors(400, 404, 422, 503))
def change_tags(image_id: str, change: TagChange, proxima: ProximaDep) -> ImageInfo:
    """Set, add or remove free tags of an indexed image (no re-embedding)."""
    return ImageInfo.of(proxima.relabel(image_id, tags=change.tags, add_tags=change.add_tags,
                                        remove_tags=change.remove_tags))


@router.put("/images/{image_id}/collections/{name}", response_model=ImageInfo, dependencies=WriteAccess,
            responses=errors(404, 422, 503))
def add_to_collection(image_id: str, name: CollectionName, proxima: ProximaDep) -> ImageInfo:
    """Put an indexed image into a collection (created if new); idempotent."""
    return ImageInfo.of(proxima.relabel(image_id, add_collections=[name]))


@router.delete("/images/{image_id}/collections/{name}", response_model=ImageInfo, dependencies=WriteAccess,
               responses=errors(404, 422, 503))
def remove_from_collection(image_id: str, name: CollectionName, proxima: ProximaDep) -> ImageInfo:
    """Take an image out of a collection (the image stays indexed); idempotent."""
    return ImageInfo.of(proxima.relabel(image_id, remove_collections=[name]))
