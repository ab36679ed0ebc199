"""The HTTP calls the command-line scripts make to a Proxima API (`find_similar.py`, `find_duplicates.py`):
every failure ends the script with a readable message instead of a traceback."""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import httpx


class Api:
    """The few calls made here; every failure ends the script with a readable message."""

    def __init__(self, url: str, api_key: str = "") -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers={"X-API-Key": api_key} if api_key else {},
                                 timeout=120)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            sys.exit(f"the API at {self.url} is not reachable; is it running (`make up`), or is --api wrong?")
        except httpx.HTTPError as exc:
            sys.exit(f"request to {self.url}{path} failed: {exc}")
        if response.status_code == 401:
            sys.exit(f"the API at {self.url} wants an API key: pass --api-key or set PROXIMA_API_KEY")
        if response.status_code in (400, 409, 422):
            sys.exit(f"the request was refused ({method} {path}): {_detail(response)}")
        if response.is_error:
            sys.exit(f"the API answered {response.status_code} to {method} {path}: {response.text[:500]}")
        return response.json()

    def thumbnail(self, url: str) -> str:
        """A member's thumbnail as a data: URI ("" when it cannot be had: the image went since)."""
        try:
            response = self.http.get(url, timeout=30)
            response.raise_for_status()
        except httpx.HTTPError:
            return ""
        kind = response.headers.get("content-type", "image/webp").split(";")[0]
        return f"data:{kind};base64," + base64.b64encode(response.content).decode()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else json.dumps(detail)
