"""What the page can ask of Proxima, in-process or over HTTP.

`LocalService` calls the process's `shared.services.Proxima` (the page mounted at /ui in the API);
`RemoteService` talks to an API elsewhere through `shared.client.ApiClient` (`python -m ui --api URL`).
Both raise `shared.types.ServiceError` with a kind the page turns into a readable, translated message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis

from shared.backends import Hit
from shared.client import ApiClient
from shared.services import Proxima, upload_files
from shared.types import ImageError, Job, ProximaError, ServiceError, describe

__all__ = ["Found", "LocalService", "ProximaService", "RemoteService", "Result", "ServiceError"]

UPLOAD_CHUNK = 64  # files per call when adding many images: bounded memory, steady progress
T = TypeVar("T")


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
    def job(self, job_id: str) -> Job: ...
    def status(self) -> dict[str, Any]: ...


def _label(files: list[Path]) -> str:
    return f"{len(files)} uploaded files"


class LocalService:
    """In the API process: `proxima()` returns the API's Proxima (built in its lifespan)."""

    def __init__(self, proxima: Callable[[], Proxima], flower_url: str = "") -> None:
        self._proxima = proxima
        self.flower_url = flower_url

    @staticmethod
    def _run(call: Callable[[], T]) -> T:
        try:
            return call()
        except (ProximaError, redis.ConnectionError, redis.TimeoutError) as exc:
            info, message = describe(exc) or (None, str(exc))
            raise ServiceError(info.kind if info else "error", message) from None

    def _found(self, hits: list[Hit], started: float) -> Found:
        images = self._proxima().images

        def picture(image_id: str) -> str:
            try:
                return str(images.thumbnail(image_id))
            except (OSError, ImageError):  # file gone or undecodable: the tile shows it is missing
                return str(images.path(image_id))

        return Found([Result(h.id, h.score, h.record.filename, picture(h.id)) for h in hits],
                     (time.perf_counter() - started) * 1000)

    def search_image(self, data: bytes, k: int) -> Found:
        started = time.perf_counter()
        return self._found(self._run(lambda: self._proxima().search_image(data, k)), started)

    def search_text(self, text: str, k: int) -> Found:
        started = time.perf_counter()
        return self._found(self._run(lambda: self._proxima().search_text(text, k)), started)

    def similar(self, image_id: str, k: int) -> Found:
        started = time.perf_counter()
        return self._found(self._run(lambda: self._proxima().similar(image_id, k)), started)

    def upload(self, files: Iterable[Path]) -> str:
        paths = list(files)
        return self._run(lambda: upload_files(self._proxima(), paths, label=_label(paths), chunk=UPLOAD_CHUNK))

    def ingest_folder(self, path: str, recursive: bool) -> str:
        return self._run(lambda: self._proxima().start_folder_ingest(path, recursive)[0])

    def job(self, job_id: str) -> Job:
        return self._run(lambda: self._proxima().job(job_id))

    def status(self) -> dict[str, Any]:
        return self._proxima().health()


class RemoteService:
    """Against a running API over HTTP; result images are loaded by the browser from the API's URLs."""

    def __init__(self, api_url: str, flower_url: str = "", api_key: str = "", timeout: float = 60) -> None:
        self.client = ApiClient(api_url, api_key=api_key, timeout=timeout)
        self.flower_url = flower_url

    def _found(self, body: dict[str, Any]) -> Found:
        return Found([Result(r["id"], r["score"], r["filename"], self.client.api_url + r["thumbnail_url"])
                      for r in body["results"]], body["took_ms"])

    def search_image(self, data: bytes, k: int) -> Found:
        return self._found(self.client.search_image(data, k))

    def search_text(self, text: str, k: int) -> Found:
        return self._found(self.client.search_text(text, k))

    def similar(self, image_id: str, k: int) -> Found:
        return self._found(self.client.similar(image_id, k))

    def upload(self, files: Iterable[Path]) -> str:
        paths = list(files)
        return upload_files(self.client, paths, label=_label(paths), chunk=UPLOAD_CHUNK)

    def ingest_folder(self, path: str, recursive: bool) -> str:
        return self.client.ingest(path, recursive)

    def job(self, job_id: str) -> Job:
        return self.client.job(job_id)

    def status(self) -> dict[str, Any]:
        return self.client.health()
