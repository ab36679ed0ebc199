"""What the UI can ask of Proxima, in-process or over HTTP.

`LocalService` calls the same service functions as the API routes (the UI mounted at /ui); `RemoteService`
talks to an API elsewhere (`python -m ui --api URL`). Both raise ServiceError with a kind the page turns
into a readable, translated message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
import redis

from shared.backends import BackendError, BackendUnavailable, Hit
from shared.imagestore import is_image_id
from shared.imaging import ImageError
from shared.ingest import PathNotAllowed
from shared.pipeline import Upload, search_image, search_similar, search_text

ErrorKind = Literal["bad_input", "unavailable", "not_found", "forbidden", "error"]
UPLOAD_CHUNK = 64  # files per call when adding many images: bounded memory, steady progress


class ServiceError(Exception):
    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class Result:
    id: str
    score: float
    filename: str
    image: str  # its thumbnail: a local file path, or a URL the browser can load


@dataclass(frozen=True)
class Found:
    results: list[Result]
    took_ms: float


class ProximaService(Protocol):
    flower_url: str

    def search_image(self, data: bytes, k: int) -> Found: ...
    def search_text(self, text: str, k: int) -> Found: ...
    def similar(self, image_id: str, k: int) -> Found: ...
    def upload(self, files: Iterable[Path]) -> str: ...
    def ingest_folder(self, path: str, recursive: bool) -> str: ...
    def job(self, job_id: str) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...
    def allowed_paths(self) -> list[str]: ...


def _upload(path: Path) -> Upload:
    return Upload(filename=path.name, data=path.read_bytes())


class LocalService:
    """In the API process: `services()` returns the API's Services (built in its lifespan)."""

    def __init__(self, services: Callable[[], Any], flower_url: str = "") -> None:
        self._services = services
        self.flower_url = flower_url

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PathNotAllowed as exc:
            raise ServiceError("forbidden", str(exc)) from None
        except ImageError as exc:
            raise ServiceError("bad_input", f"not a usable image: {exc}") from None
        except ValueError as exc:
            raise ServiceError("bad_input", str(exc)) from None
        except NotADirectoryError as exc:
            raise ServiceError("not_found", str(exc)) from None
        except BackendUnavailable as exc:
            raise ServiceError("unavailable", f"vector database: {exc}") from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ServiceError("unavailable", f"job queue (Redis): {exc}") from None
        except BackendError as exc:
            raise ServiceError("error", f"vector database: {exc}") from None

    def _found(self, hits: list[Hit], started: float) -> Found:
        images = self._services().images

        def picture(image_id: str) -> str:
            try:
                return str(images.thumbnail(image_id))
            except (OSError, ImageError):  # file gone or undecodable: the tile shows it is missing
                return str(images.path(image_id))

        return Found([Result(h.id, h.score, h.record.filename, picture(h.id)) for h in hits],
                     (time.perf_counter() - started) * 1000)

    def search_image(self, data: bytes, k: int) -> Found:
        s, started = self._services(), time.perf_counter()
        hits = self._run(search_image, data, k, embedder=s.embedder, backend=s.backend,
                         max_pixels=s.settings.max_image_pixels)
        return self._found(hits, started)

    def search_text(self, text: str, k: int) -> Found:
        s, started = self._services(), time.perf_counter()
        return self._found(self._run(search_text, text, k, embedder=s.embedder, backend=s.backend), started)

    def similar(self, image_id: str, k: int) -> Found:
        s, started = self._services(), time.perf_counter()
        hits = self._run(search_similar, image_id, k, backend=s.backend) if is_image_id(image_id) else None
        if hits is None:
            raise ServiceError("not_found", f"no indexed image with id {image_id[:80]}")
        return self._found(hits, started)

    def upload(self, files: Iterable[Path]) -> str:
        s, files = self._services(), list(files)
        job_id = self._run(s.jobs.create, kind="folder", sealed=False, path=f"{len(files)} uploaded files")
        for start in range(0, len(files), UPLOAD_CHUNK):
            self._run(s.accept, [_upload(p) for p in files[start:start + UPLOAD_CHUNK]], job_id)
        self._run(s.jobs.add, job_id, counts={}, seal=True)
        return job_id

    def ingest_folder(self, path: str, recursive: bool) -> str:
        from api.deps import IngestDisabled  # the API's service layer; imported late to keep ui light

        try:
            return self._run(self._services().start_folder_ingest, path, recursive)[0]
        except IngestDisabled as exc:
            raise ServiceError("forbidden", str(exc)) from None

    def job(self, job_id: str) -> dict[str, Any]:
        job = self._run(self._services().jobs.get, job_id)
        if job is None:
            raise ServiceError("not_found", f"no job with id {job_id[:64]}")
        return job

    def status(self) -> dict[str, Any]:
        return self._services().health()

    def allowed_paths(self) -> list[str]:
        return [str(self._services().images.root)]


class RemoteService:
    """Against a running API over HTTP; result images are loaded by the browser from the API's URLs."""

    def __init__(self, api_url: str, flower_url: str = "", api_key: str = "", timeout: float = 60) -> None:
        self.api_url = api_url.rstrip("/")
        self.flower_url = flower_url
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout)

    def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceError("unavailable", f"the API at {self.api_url} does not answer ({exc})") from None
        if response.is_success:
            return response.json()
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        if isinstance(detail, list):  # FastAPI validation errors
            detail = "; ".join(str(d.get("msg", d)) for d in detail)
        kind: ErrorKind = {400: "bad_input", 401: "forbidden", 403: "forbidden", 404: "not_found",
                           409: "bad_input", 413: "bad_input", 422: "bad_input",
                           503: "unavailable"}.get(response.status_code, "error")
        raise ServiceError(kind, f"{detail} (HTTP {response.status_code})")

    def _found(self, body: dict[str, Any]) -> Found:
        return Found([Result(r["id"], r["score"], r["filename"], self.api_url + r["thumbnail_url"])
                      for r in body["results"]], body["took_ms"])

    def search_image(self, data: bytes, k: int) -> Found:
        return self._found(self._call("POST", "/search", files={"file": ("query", data)}, data={"top_k": k}))

    def search_text(self, text: str, k: int) -> Found:
        return self._found(self._call("POST", "/search/text", json={"text": text, "top_k": k}))

    def similar(self, image_id: str, k: int) -> Found:
        return self._found(self._call("GET", f"/images/{image_id}/similar", params={"top_k": k}))

    def upload(self, files: Iterable[Path]) -> str:
        files = list(files)
        job_id = self._call("POST", "/jobs", json={"label": f"{len(files)} uploaded files"})["job_id"]
        for start in range(0, len(files), UPLOAD_CHUNK):
            chunk = [("files", (p.name, p.read_bytes())) for p in files[start:start + UPLOAD_CHUNK]]
            self._call("POST", "/images", files=chunk, data={"job_id": job_id})
        self._call("POST", f"/jobs/{job_id}/seal")
        return job_id

    def ingest_folder(self, path: str, recursive: bool) -> str:
        return self._call("POST", "/ingest", json={"path": path, "recursive": recursive})["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{job_id}")

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def allowed_paths(self) -> list[str]:
        return []
