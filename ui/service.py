"""What the page can ask of Proxima, in-process or over HTTP.

`LocalService` calls the process's `shared.services.Proxima` (the page mounted at /ui in the API);
`RemoteService` talks to an API elsewhere through `shared.client.ApiClient` (`python -m ui --api URL`).
Both raise `shared.types.ServiceError` with a kind the page turns into a readable, translated message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis

from shared.backends import Hit, ImageRecord
from shared.client import ApiClient, path_segment
from shared.duplicates import DEFAULT_THRESHOLD, Group
from shared.imagestore import ImageStore
from shared.pipeline import Page
from shared.services import Proxima, upload_files
from shared.types import ImageError, Job, ProximaError, ServiceError, describe

__all__ = ["FIRST", "Copy", "DuplicateGroup", "Found", "LocalService", "ProximaService", "Query", "RemoteService",
           "Result", "ServiceError"]

UPLOAD_CHUNK = 64  # files per call when adding many images: bounded memory, steady progress
T = TypeVar("T")


@dataclass(frozen=True)
class Query:
    """Which results of a search: those matching `filters` (the API's filter fields, e.g.
    `{"collection": ["Trip"], "captured_from": "2024-06-01", "min_score": 0.2}`), from `offset` on."""

    filters: dict[str, Any] = field(default_factory=dict)
    offset: int = 0


FIRST = Query()


@dataclass(frozen=True)
class Result:
    id: str
    score: float
    filename: str
    image: str  # its thumbnail: a local file path, or a URL the browser can load
    captured_at: datetime | None = None  # when the photo was taken (EXIF), UTC
    collections: tuple[str, ...] = ()


@dataclass(frozen=True)
class Found:
    results: list[Result]
    took_ms: float
    next_offset: int | None = None  # the offset of the next page of the same query; None when there is none


@dataclass(frozen=True)
class Copy:
    """One image of a group of near-duplicates, with what tells the copies apart."""

    id: str
    score: float  # cosine similarity to the group's suggested keeper (1.0 for the keeper)
    keeper: bool  # the suggested keeper (shared.duplicates.KEEP_RULE)
    filename: str
    image: str  # its thumbnail: a local file path, or a URL the browser can load
    width: int
    height: int
    size_bytes: int
    captured_at: datetime | None = None


@dataclass(frozen=True)
class DuplicateGroup:
    id: str  # the group's id (its keeper's image id)
    members: tuple[Copy, ...]  # the keeper first, then by score

    @property
    def rest(self) -> list[str]:
        """The ids of every member but the keeper."""
        return [m.id for m in self.members if not m.keeper]


class ProximaService(Protocol):
    flower_url: str

    def search_image(self, data: bytes, k: int, query: Query = FIRST) -> Found: ...
    def search_text(self, text: str, k: int, query: Query = FIRST) -> Found: ...
    def similar(self, image_id: str, k: int, query: Query = FIRST) -> Found: ...
    def collections(self) -> list[str]: ...
    def upload(self, files: Iterable[Path], collection: str | None = None) -> str: ...
    def ingest_folder(self, path: str, recursive: bool, collection: str | None = None) -> str: ...
    def job(self, job_id: str) -> Job: ...
    def jobs(self, offset: int, limit: int) -> tuple[int, list[Job]]: ...
    def pause(self, job_id: str) -> Job: ...
    def resume(self, job_id: str) -> Job: ...
    def cancel(self, job_id: str) -> Job: ...
    def status(self) -> dict[str, Any]: ...
    def models(self) -> list[dict[str, Any]]: ...
    def activate(self, slug: str) -> None: ...
    def find_duplicates(self, threshold: float | None = None) -> str: ...
    def duplicates(self, offset: int, limit: int) -> tuple[int, list[DuplicateGroup]]: ...
    def resolve_duplicates(self, group_id: str, delete: list[str],
                           ungroup: list[str]) -> tuple[int, DuplicateGroup | None]: ...


def _label(files: list[Path]) -> str:
    return f"{len(files)} uploaded files"


def _captured(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _picture(images: ImageStore, image_id: str) -> str:
    """A stored image's thumbnail file (made on first use), or the image's own path when it cannot be made
    (file gone or undecodable: the page shows it missing)."""
    try:
        return str(images.thumbnail(image_id))
    except (OSError, ImageError):
        return str(images.path(image_id))


def page_of(k: int, query: Query) -> Page:
    """The `Page` the API builds from the same filter fields; BadInput naming the field for a bad value."""
    return Page.from_fields(query.filters, top_k=k, offset=query.offset)


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

    def _search(self, k: int, query: Query, search: Callable[[Proxima, Page], list[Hit]]) -> Found:
        started = time.perf_counter()

        def run() -> tuple[Page, list[Hit]]:
            page = page_of(k, query)
            return page, search(self._proxima(), page)

        page, hits = self._run(run)
        images = self._proxima().images
        return Found([Result(h.id, h.score, h.record.filename, _picture(images, h.id), h.record.captured_at,
                             tuple(h.record.collections)) for h in hits],
                     (time.perf_counter() - started) * 1000, page.next_offset(len(hits)))

    def search_image(self, data: bytes, k: int, query: Query = FIRST) -> Found:
        return self._search(k, query, lambda proxima, page: proxima.search_image(data, page))

    def search_text(self, text: str, k: int, query: Query = FIRST) -> Found:
        return self._search(k, query, lambda proxima, page: proxima.search_text(text, page))

    def similar(self, image_id: str, k: int, query: Query = FIRST) -> Found:
        return self._search(k, query, lambda proxima, page: proxima.similar(image_id, page))

    def collections(self) -> list[str]:
        return self._run(lambda: [c.name for c, _ in self._proxima().list_collections()])

    def upload(self, files: Iterable[Path], collection: str | None = None) -> str:
        paths = list(files)
        return self._run(lambda: upload_files(self._proxima(), paths, label=_label(paths), chunk=UPLOAD_CHUNK,
                                              collection=collection or None))

    def ingest_folder(self, path: str, recursive: bool, collection: str | None = None) -> str:
        return self._run(lambda: self._proxima().start_folder_ingest(path, recursive, collection or None)[0])

    def job(self, job_id: str) -> Job:
        return self._run(lambda: self._proxima().job(job_id))

    def jobs(self, offset: int, limit: int) -> tuple[int, list[Job]]:
        """(jobs in all, a page of them without their error lists), newest first."""
        return self._run(lambda: self._proxima().list_jobs(offset, limit))

    def pause(self, job_id: str) -> Job:
        """No new batch of the job starts until it is resumed; ServiceError (bad_input) once it is finished."""
        return self._run(lambda: self._proxima().pause_job(job_id))

    def resume(self, job_id: str) -> Job:
        """Go on with a paused job (one not paused is left as it is); ServiceError once it is finished."""
        return self._run(lambda: self._proxima().resume_job(job_id))

    def cancel(self, job_id: str) -> Job:
        """Drop what is left of the job (what is done stays); ServiceError once it is finished."""
        return self._run(lambda: self._proxima().cancel_job(job_id))

    def status(self) -> dict[str, Any]:
        return self._proxima().health()

    def models(self) -> list[dict[str, Any]]:
        """Every model identity with its index, vector count and re-embed job (`Proxima.model_indexes`)."""
        return self._run(lambda: self._proxima().model_indexes())

    def activate(self, slug: str) -> None:
        """Serve searches with `slug`'s index; ServiceError (bad_input) unless it holds every stored image."""
        self._run(lambda: self._proxima().activate(slug))

    def find_duplicates(self, threshold: float | None = None) -> str:
        """Start a near-duplicates run over the whole collection (a worker's job); its job id."""
        return self._run(lambda: self._proxima().start_duplicates(
            DEFAULT_THRESHOLD if threshold is None else threshold))

    def _group(self, group: Group, records: dict[str, ImageRecord]) -> DuplicateGroup:
        images = self._proxima().images
        return DuplicateGroup(group.id, tuple(
            Copy(m.id, m.score, m.id == group.keeper, r.filename, _picture(images, m.id), r.width, r.height,
                 r.size_bytes, r.captured_at)
            for m in group.members if (r := records.get(m.id)) is not None))

    def duplicates(self, offset: int, limit: int) -> tuple[int, list[DuplicateGroup]]:
        """(groups in all, a page of them), the largest first (the last finished run's)."""
        total, page = self._run(lambda: self._proxima().duplicate_groups(offset, limit))
        return total, [self._group(group, records) for group, records in page]

    def resolve_duplicates(self, group_id: str, delete: list[str],
                           ungroup: list[str]) -> tuple[int, DuplicateGroup | None]:
        """Delete members of a group (a write) and/or take them out of it: (how many were deleted, what is left
        of the group; None when fewer than two remain)."""
        def run() -> tuple[int, DuplicateGroup | None]:
            proxima = self._proxima()
            deleted, left = proxima.resolve_duplicates(group_id, delete=delete, ungroup=ungroup)
            records = proxima.backend.get([m.id for m in left.members]) if left else {}
            return deleted, self._group(left, records) if left else None

        return self._run(run)


class RemoteService:
    """Against a running API over HTTP; result images are loaded by the browser from the API's URLs."""

    def __init__(self, api_url: str, flower_url: str = "", api_key: str = "", timeout: float = 60) -> None:
        self.client = ApiClient(api_url, api_key=api_key, timeout=timeout)
        self.flower_url = flower_url

    def _found(self, body: dict[str, Any]) -> Found:
        return Found([Result(r["id"], r["score"], r["filename"], self.client.api_url + r["thumbnail_url"],
                             _captured(r.get("captured_at")), tuple(r.get("collections") or ()))
                      for r in body["results"]], body["took_ms"], body.get("next_offset"))

    @staticmethod
    def _filters(query: Query) -> dict[str, Any]:
        return {**query.filters, **({"offset": query.offset} if query.offset else {})}

    def search_image(self, data: bytes, k: int, query: Query = FIRST) -> Found:
        return self._found(self.client.search_image(data, k, self._filters(query)))

    def search_text(self, text: str, k: int, query: Query = FIRST) -> Found:
        return self._found(self.client.search_text(text, k, self._filters(query)))

    def similar(self, image_id: str, k: int, query: Query = FIRST) -> Found:
        return self._found(self.client.similar(image_id, k, self._filters(query)))

    def collections(self) -> list[str]:
        return [str(c["name"]) for c in self.client.collections()]

    def upload(self, files: Iterable[Path], collection: str | None = None) -> str:
        paths = list(files)
        return upload_files(self.client, paths, label=_label(paths), chunk=UPLOAD_CHUNK,
                            collection=collection or None)

    def ingest_folder(self, path: str, recursive: bool, collection: str | None = None) -> str:
        return self.client.ingest(path, recursive, collection or None)

    def job(self, job_id: str) -> Job:
        return self.client.job(job_id)

    def jobs(self, offset: int, limit: int) -> tuple[int, list[Job]]:
        """GET /jobs: behind the API key when the API has one (--api-key), like every /jobs route."""
        return self.client.list_jobs(offset, limit)

    # POST /jobs/{id}/pause|resume|cancel: writes (--api-key); ApiClient quotes the id (it may be typed)
    def pause(self, job_id: str) -> Job:
        return self.client.pause_job(job_id)

    def resume(self, job_id: str) -> Job:
        return self.client.resume_job(job_id)

    def cancel(self, job_id: str) -> Job:
        return self.client.cancel_job(job_id)

    def status(self) -> dict[str, Any]:
        return self.client.health()

    def models(self) -> list[dict[str, Any]]:
        return list(self.client.call("GET", "/admin/models")["models"])

    def activate(self, slug: str) -> None:
        self.client.call("POST", f"/admin/models/{path_segment(slug)}/activate")

    def find_duplicates(self, threshold: float | None = None) -> str:
        """POST /admin/duplicates: a write, so it needs the API key when the API has one (--api-key)."""
        body = {} if threshold is None else {"threshold": threshold}
        return str(self.client.call("POST", "/admin/duplicates", json=body)["job_id"])

    def _group(self, body: dict[str, Any]) -> DuplicateGroup:
        return DuplicateGroup(str(body["id"]), tuple(
            Copy(m["id"], m["score"], bool(m["keeper"]), m["filename"], self.client.api_url + m["thumbnail_url"],
                 m["width"], m["height"], m["size_bytes"], _captured(m.get("captured_at")))
            for m in body["members"]))

    def duplicates(self, offset: int, limit: int) -> tuple[int, list[DuplicateGroup]]:
        body = self.client.call("GET", "/duplicates", params={"offset": offset, "limit": limit})
        return int(body["total"]), [self._group(g) for g in body["groups"]]

    def resolve_duplicates(self, group_id: str, delete: list[str],
                           ungroup: list[str]) -> tuple[int, DuplicateGroup | None]:
        """POST /duplicates/{id}/resolve: a write, so it needs the API key when the API has one (--api-key)."""
        body = self.client.call("POST", f"/duplicates/{path_segment(group_id)}/resolve",
                                json={"delete": list(delete), "ungroup": list(ungroup)})
        return int(body["deleted"]), self._group(body["group"]) if body.get("group") else None
