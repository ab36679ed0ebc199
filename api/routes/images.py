from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel

from api.deps import Services, ServicesDep
from api.security import SearchAccess, WriteAccess
from shared.imagestore import is_image_id
from shared.imaging import MIME_TYPES, ImageError, probe
from shared.pipeline import Accepted, Upload, delete_image

router = APIRouter(tags=["images"])


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


async def _accept(services: Services, files: list[UploadFile],
                  job_id: str | None = None) -> tuple[str, list[Accepted]]:
    if job_id is not None:
        job = services.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job with id {job_id[:64]!r}")
        if not job.get("walking"):
            raise HTTPException(409, f"job {job_id} is not open for more images")
    if len(files) > services.settings.max_files_per_request:
        raise HTTPException(413, f"{len(files)} files in one request; the limit is "
                                 f"{services.settings.max_files_per_request} (MAX_FILES_PER_REQUEST)")
    uploads = []
    for f in files:
        uploads.append(Upload(filename=f.filename or "", data=await f.read()))
        await f.close()
    return await run_in_threadpool(services.accept, uploads, job_id)


@router.post("/images", status_code=202, response_model=UploadResponse, dependencies=WriteAccess)
async def upload_images(
    files: Annotated[list[UploadFile], File(description="one or more images")],
    services: ServicesDep,
    job_id: Annotated[str | None, Form(description="add to this open job (see POST /jobs)")] = None,
) -> UploadResponse:
    """Store the images and queue them for indexing. Poll `/jobs/{job_id}` for progress."""
    job_id, accepted = await _accept(services, files, job_id)
    return UploadResponse(job_id=job_id, images=[ImageStatus(**vars(a)) for a in accepted])


@router.post("/index_image", status_code=202, response_model=IndexImageResponse, dependencies=WriteAccess)
async def index_image(file: Annotated[UploadFile, File()], services: ServicesDep) -> IndexImageResponse:
    """One image (the design document's endpoint); same as `POST /images` with a single file."""
    job_id, (accepted,) = await _accept(services, [file])
    if accepted.status == "rejected":
        raise HTTPException(422, f"not a usable image: {accepted.error}")
    return IndexImageResponse(id=accepted.id, job_id=job_id, status=accepted.status)


def _stored_path(services: Services, image_id: str):
    if not is_image_id(image_id):
        raise HTTPException(404, "no such image (ids are 64 lowercase hex characters)")
    path = services.images.path(image_id)
    if not path.is_file():
        raise HTTPException(404, f"no image with id {image_id}")
    return path


@router.get("/images/{image_id}", response_class=FileResponse, dependencies=SearchAccess,
            responses={200: {"content": {"image/*": {}}, "description": "the original bytes"}})
def get_image(image_id: str, services: ServicesDep) -> FileResponse:
    """The original file as uploaded, with its Content-Type."""
    path = _stored_path(services, image_id)
    try:
        media_type = MIME_TYPES.get(probe(path, max_pixels=2**62)[0], "application/octet-stream")
    except ImageError:
        media_type = "application/octet-stream"
    return FileResponse(path, media_type=media_type,
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})


@router.get("/images/{image_id}/thumbnail", response_class=FileResponse, dependencies=SearchAccess,
            responses={200: {"content": {"image/webp": {}}, "description": "a small WebP of the image"}})
def get_thumbnail(image_id: str, services: ServicesDep) -> FileResponse:
    """A WebP at most 320 pixels on its long side, made on first request (what result pages show)."""
    _stored_path(services, image_id)
    try:
        path = services.images.thumbnail(image_id)
    except FileNotFoundError:
        raise HTTPException(404, f"no image with id {image_id}") from None
    return FileResponse(path, media_type="image/webp",
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})


router.add_api_route("/image/{image_id}", get_image, methods=["GET"], include_in_schema=False,
                     dependencies=SearchAccess)


@router.delete("/images/{image_id}", status_code=204, dependencies=WriteAccess)
def remove_image(image_id: str, services: ServicesDep) -> Response:
    """Delete the vector and the stored file."""
    if not is_image_id(image_id) or not delete_image(image_id, images=services.images,
                                                     backend=services.backend):
        raise HTTPException(404, f"no image with id {image_id[:80]!r}")
    return Response(status_code=204)
