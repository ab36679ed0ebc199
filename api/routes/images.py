from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel

from api.deps import ProximaDep
from api.errors import errors
from api.security import SearchAccess, WriteAccess
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


async def _accept(proxima: Proxima, files: list[UploadFile],
                  job_id: str | None = None) -> tuple[str, list[Accepted]]:
    uploads = []
    for f in files:
        uploads.append(Upload(filename=f.filename or "", data=await f.read()))
        await f.close()
    return await run_in_threadpool(proxima.accept, uploads, job_id)


@router.post("/images", status_code=202, response_model=UploadResponse, dependencies=WriteAccess,
             responses={**UPLOAD, **errors(404, 409)})
async def upload_images(
    files: Annotated[list[UploadFile], File(description="one or more images", min_length=1)],
    proxima: ProximaDep,
    job_id: Annotated[str | None, Form(description="add to this open job (see POST /jobs)")] = None,
) -> UploadResponse:
    """Store the images and queue them for indexing. Poll `/jobs/{job_id}` for progress."""
    job_id, accepted = await _accept(proxima, files, job_id)
    return UploadResponse(job_id=job_id, images=[ImageStatus(**vars(a)) for a in accepted])


@router.post("/index_image", status_code=202, response_model=IndexImageResponse, dependencies=WriteAccess,
             responses=UPLOAD)
async def index_image(file: Annotated[UploadFile, File()], proxima: ProximaDep) -> IndexImageResponse:
    """One image (the design document's endpoint); same as `POST /images` with a single file."""
    job_id, (accepted,) = await _accept(proxima, [file])
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
