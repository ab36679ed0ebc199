"""A small HTTP client of the Proxima API, for the page run on its own (`python -m ui --api URL`),
`scripts/ingest_folder.py --api` and `scripts/load_test.py`.

It speaks the same calls as `shared.services.Proxima` for jobs (`open_job`, `accept`, `seal_job`, `job`,
`list_jobs`, `pause_job`, `resume_job`, `cancel_job`),
so `shared.services.upload_files` works with either, and turns every failure into a `ServiceError` whose
kind follows the API's status code (`shared.types.ERRORS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import quote

import httpx

from shared.types import Accepted, ClientCounts, Job, ServiceError, Upload, kind_of_status


def path_segment(value: str) -> str:
    """`value` as one segment of a URL path: an id typed by a person cannot name another route."""
    return quote(value, safe="")


class ApiClient:
    def __init__(self, api_url: str, *, api_key: str = "", timeout: float = 60) -> None:
        self.api_url = api_url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=self.api_url, headers=headers, timeout=httpx.Timeout(timeout, connect=10))

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, url: str, **kwargs: Any) -> Any:
        """One request; its JSON body, or ServiceError (unavailable when the API does not answer)."""
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceError("unavailable", f"the API at {self.api_url} does not answer ({exc})") from None
        if response.is_success:
            return response.json() if response.content else None
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):
            detail = response.text
        if isinstance(detail, list):  # FastAPI's validation errors
            detail = "; ".join(str(d.get("msg", d)) for d in detail)
        raise ServiceError(kind_of_status(response.status_code), f"{detail} (HTTP {response.status_code})")

    # --- jobs: the same calls as shared.services.Proxima -------------------------------------------

    def open_job(self, label: str) -> str:
        return str(self.call("POST", "/jobs", json={"label": label})["job_id"])

    def accept(self, uploads: Sequence[Upload], job_id: str | None = None,
               collection: str | None = None) -> tuple[str, list[Accepted]]:
        files = [("files", (u.filename, u.data)) for u in uploads]
        data = {k: v for k, v in (("job_id", job_id), ("collection", collection)) if v}
        body = self.call("POST", "/images", files=files, data=data)
        return body["job_id"], [Accepted(**image) for image in body["images"]]

    def seal_job(self, job_id: str, counts: ClientCounts | None = None) -> Job:
        body = self.call("POST", f"/jobs/{path_segment(job_id)}/seal", json=asdict(counts or ClientCounts()))
        return Job.from_dict(body)

    def job(self, job_id: str) -> Job:
        return Job.from_dict(self.call("GET", f"/jobs/{path_segment(job_id)}"))

    def list_jobs(self, offset: int = 0, limit: int = 20, kind: str | None = None) -> tuple[int, list[Job]]:
        params: dict[str, Any] = {"offset": offset, "limit": limit, **({"kind": kind} if kind else {})}
        body = self.call("GET", "/jobs", params=params)
        return int(body["total"]), [Job.from_dict(job) for job in body["jobs"]]

    def pause_job(self, job_id: str) -> Job:
        return Job.from_dict(self.call("POST", f"/jobs/{path_segment(job_id)}/pause"))

    def resume_job(self, job_id: str) -> Job:
        return Job.from_dict(self.call("POST", f"/jobs/{path_segment(job_id)}/resume"))

    def cancel_job(self, job_id: str) -> Job:
        return Job.from_dict(self.call("POST", f"/jobs/{path_segment(job_id)}/cancel"))

    # --- the rest ----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return dict(self.call("GET", "/health"))

    def ingest(self, path: str, recursive: bool, collection: str | None = None) -> str:
        body = {"path": path, "recursive": recursive, **({"collection": collection} if collection else {})}
        return str(self.call("POST", "/ingest", json=body)["job_id"])

    # Searches take the API's filter fields as a dict (`{"collection": ["Trip"], "offset": 10}`).

    def search_image(self, data: bytes, k: int, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        return dict(self.call("POST", "/search", files={"file": ("query", data)}, data={**(filters or {}), "top_k": k}))

    def search_text(self, text: str, k: int, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        return dict(self.call("POST", "/search/text", json={**(filters or {}), "text": text, "top_k": k}))

    def similar(self, image_id: str, k: int, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        return dict(self.call("GET", f"/images/{image_id}/similar", params={**(filters or {}), "top_k": k}))

    def collections(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/collections")["collections"])
