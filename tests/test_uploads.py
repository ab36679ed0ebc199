"""Upload hygiene: size limits before the body is read, file names never reach a path."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from scripts.synthetic import jpeg
from shared.pipeline import clean_filename


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("../../etc/passwd", "passwd"), ("/abs/path/x.jpg", "x.jpg"), ("a\x00b.jpg", "ab.jpg"),
     ("C:\\Users\\me\\p.png", "p.png"), ("", "unnamed"), (None, "unnamed"), ("..", ".."),
     ("x" * 1000 + ".jpg", "x" * 255), ("caf\u0065\u0301.jpg", "café.jpg")],
)
def test_clean_filename(raw, clean):
    assert clean_filename(raw) == clean


@pytest.fixture(scope="module")
def small_client(stack_settings):
    settings = stack_settings.model_copy(update={"max_upload_mb": 1, "max_files_per_request": 20})
    with TestClient(create_app(settings)) as c:
        yield c


def test_body_over_limit_is_413(small_client):
    response = small_client.post("/images", files=[("files", ("big.jpg", os.urandom(2 * 2**20)))])
    assert response.status_code == 413
    assert "MAX_UPLOAD_MB" in response.json()["detail"]


def test_streamed_body_over_limit_is_413(small_client):
    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    response = small_client.post("/search", content=chunks(),
                                 headers={"content-type": "multipart/form-data; boundary=abc"})
    assert response.status_code == 413


def test_too_many_files_is_refused(small_client):
    files = [("files", (f"{i}.jpg", b"x")) for i in range(21)]
    response = small_client.post("/images", files=files)
    assert response.status_code == 413 and "MAX_FILES_PER_REQUEST" in response.json()["detail"]


def test_hostile_names_do_not_reach_the_store(client, stack_settings):
    data = jpeg(99)
    names = ["../../../../tmp/evil.jpg", "/etc/cron.d/x.jpg", "a\x00.jpg", "é" * 300 + ".jpg"]
    body = client.post("/images", files=[("files", (n, data)) for n in names]).json()
    assert [i["filename"] for i in body["images"]][:2] == ["evil.jpg", "x.jpg"]
    assert not os.path.exists("/tmp/evil.jpg")
    stored = [p for p in stack_settings.images_dir.rglob("*")
              if p.is_file() and not {".tmp", ".thumbs"} & set(p.parts)]  # ours: temp files, thumbnails
    assert stored and all(len(p.name) == 64 for p in stored)
