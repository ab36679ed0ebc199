"""Flower, as `make up` and Compose run it: same broker, basic auth, batches shown with readable arguments."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from scripts.devservices import REPO, child_env, free_port, stop, wait_for
from scripts.synthetic import jpeg

AUTH = ("admin", "s3cret")


@pytest.fixture(scope="module")
def flower(stack_env, worker, tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("logs") / "flower.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower", "--address=127.0.0.1",
         f"--port={port}", f"--basic-auth={AUTH[0]}:{AUTH[1]}"],
        cwd=REPO, env=child_env(stack_env), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/healthcheck", timeout=5).status_code == 200, 60, "flower")
    yield url
    stop(proc)
    log.close()


def test_flower_requires_basic_auth(flower):
    assert httpx.get(f"{flower}/").status_code == 401
    assert httpx.get(f"{flower}/", auth=AUTH).status_code == 200


def test_batches_appear_with_readable_arguments(flower, client):
    files = [("files", (f"flower-{n}.jpg", jpeg(62_000 + n))) for n in range(3)]
    job_id = client.post("/images", files=files).json()["job_id"]

    def task_of_job() -> dict | None:
        tasks = httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=5).json()
        return next((t for t in tasks.values() if job_id in (t.get("args") or "")), None)

    wait_for(lambda: (task_of_job() or {}).get("state") == "SUCCESS", 60, "the batch in Flower")
    task = task_of_job()
    assert task["name"] == "proxima.embed_batch"
    assert "images=3" in task["args"] and "flower-0.jpg" in task["args"]
    assert len(task["args"]) < 300  # a summary, not the item list (and never image bytes)
