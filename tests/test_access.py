"""API_KEY, PUBLIC_SEARCH and CORS_ORIGINS on a real stack."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from scripts.devservices import wait_for
from scripts.synthetic import jpeg

KEY = "s3cret-key"
GOOD, BAD = {"X-API-Key": KEY}, {"X-API-Key": "wrong"}


def app_with(settings, **update):
    return TestClient(create_app(settings.model_copy(update=update)))


@pytest.fixture(scope="module")
def keyed(backend_client):
    """An API with API_KEY set, on a stack of each backend (its worker included): every read and write of
    the vector database sits behind the key whichever database it is."""
    with app_with(backend_client[1], api_key=SecretStr(KEY)) as c:
        yield c


@pytest.fixture(scope="module")
def public(backend_client):
    with app_with(backend_client[1], api_key=SecretStr(KEY), public_search=True) as c:
        yield c


@pytest.fixture(scope="module")
def indexed(keyed) -> str:
    body = keyed.post("/images", files={"files": ("key.jpg", jpeg(64_000))}, headers=GOOD).json()
    wait_for(lambda: keyed.get(f"/jobs/{body['job_id']}", headers=GOOD).json()["state"] == "completed", 60, "job")
    return body["images"][0]["id"]


def _calls(image_id: str):
    """(name, kind, method, url, kwargs) for every endpoint but /health."""
    return [
        ("upload", "write", "POST", "/images", {"files": {"files": ("a.jpg", jpeg(64_001))}}),
        ("index_image", "write", "POST", "/index_image", {"files": {"file": ("a.jpg", jpeg(64_001))}}),
        ("delete", "write", "DELETE", f"/images/{'0' * 64}", {}),
        ("ingest", "write", "POST", "/ingest", {"json": {"path": "/tmp"}}),
        ("job", "write", "GET", f"/jobs/{'0' * 32}", {}),
        ("open job", "write", "POST", "/jobs", {"json": {}}),
        ("jobs", "write", "GET", "/jobs", {}),
        ("pause", "write", "POST", f"/jobs/{'0' * 32}/pause", {}),
        ("resume", "write", "POST", f"/jobs/{'0' * 32}/resume", {}),
        ("cancel", "write", "POST", f"/jobs/{'0' * 32}/cancel", {}),
        ("search", "search", "POST", "/search", {"files": {"file": ("q.jpg", jpeg(64_000))}}),
        ("search_image", "search", "POST", "/search_image", {"files": {"file": ("q.jpg", jpeg(64_000))}}),
        ("text", "search", "POST", "/search/text", {"json": {"text": "a photo"}}),
        ("similar", "search", "GET", f"/images/{image_id}/similar", {}),
        ("image", "search", "GET", f"/images/{image_id}", {}),
        ("thumbnail", "search", "GET", f"/images/{image_id}/thumbnail", {}),
        ("image (seed name)", "search", "GET", f"/image/{image_id}", {}),
        ("models", "write", "GET", "/admin/models", {}),
        ("re-embed", "write", "POST", "/admin/models", {"json": {"name": "no-such-model", "pretrained": "x"}}),
        ("activate", "write", "POST", "/admin/models/no_such_slug/activate", {}),
        ("retire", "write", "POST", "/admin/models/no_such_slug/retire", {}),
        ("find duplicates", "write", "POST", "/admin/duplicates", {"json": {"k": 0}}),  # 422 with the key
        ("duplicates", "search", "GET", "/duplicates", {}),
        ("resolve", "write", "POST", f"/duplicates/{'0' * 64}/resolve", {"json": {}}),
    ]


def test_every_endpoint_needs_the_key(keyed, indexed):
    for name, _, method, url, kwargs in _calls(indexed):
        for headers in ({}, BAD):
            response = keyed.request(method, url, headers=headers, **kwargs)
            assert response.status_code == 401, (name, headers, response.text)
            assert "X-API-Key" in response.json()["detail"]
        assert keyed.request(method, url, headers=GOOD, **kwargs).status_code != 401, name
    assert keyed.get("/health").status_code == 200  # health checks need no key
    assert keyed.get("/metrics").status_code == 200  # nor Prometheus' scrapes


def test_public_search_opens_searches_only(public, indexed):
    for name, kind, method, url, kwargs in _calls(indexed):
        status = public.request(method, url, **kwargs).status_code
        assert (status == 401) == (kind == "write"), (name, status)


def test_page_asks_for_the_key(keyed):
    assert keyed.get("/ui/config").status_code == 401
    login = keyed.post("/ui/login", data={"username": "anyone", "password": KEY})
    assert login.status_code == 200 and keyed.get("/ui/config").status_code == 200
    assert keyed.post("/ui/login", data={"username": "anyone", "password": "nope"}).status_code == 400


def test_no_key_configured_means_open(client):
    assert client.get("/jobs/" + "0" * 32).status_code == 404  # not 401


def test_cors_only_for_configured_origins(stack_settings, client):
    preflight = {"Origin": "https://photos.example.org", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/search", headers=preflight).headers
    with app_with(stack_settings, cors_origins=["https://photos.example.org"]) as c:
        allowed = c.options("/search", headers={**preflight, "Access-Control-Request-Headers": "X-API-Key"})
        assert allowed.headers["access-control-allow-origin"] == "https://photos.example.org"
        other = c.options("/search", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
