"""Faults injected for real, on real processes: a worker SIGKILLed mid-batch, Redis restarted, the database
down for 30 s, the API restarted, a store/index mismatch repaired by reconcile, and a folder ingest paused,
its worker restarted, resumed, or cancelled. Every image given to the system ends up indexed exactly once.

The stack here is its own (Redis, PostgreSQL, workers and API are stopped and started by the tests). Like
`make up` (scripts/supervisor.py) and Compose's restart policy, it replaces a worker that exits on its
own: a Redis restart while a worker holds an unacknowledged batch can end the worker ("Unrecoverable
error: AttributeError" inside kombu 5.7 as it restores the batch on a dead connection), and without a
replacement every later job would wait forever. Each test starts from a stack it checks: Redis answers,
a worker answers a ping, and nothing is left in the queue from the test before.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import httpx
import pytest
import redis

from scripts.devservices import (
    REPO,
    Api,
    Postgres,
    Worker,
    child_env,
    data_dir_sharing_models,
    free_port,
    start_redis,
    stop,
    wait_for,
)
from scripts.synthetic import jpeg
from shared.backends import VectorBackend
from shared.backends.pgvector import PgVectorBackend
from shared.catalog import ModelCatalog
from shared.config import Settings
from shared.imagestore import ImageStore
from shared.queue import TaskQueue

FINAL = ("completed", "completed_with_errors", "failed")
pytestmark = pytest.mark.slow


class FaultStack:
    """Redis, PostgreSQL, workers and an API that the tests can kill and restart."""

    def __init__(self, directory, tiny_model) -> None:
        self.dir = directory
        self.redis_port = free_port()
        self.redis_proc, self.redis_url = start_redis(directory / "redis", port=self.redis_port)
        self.pg = Postgres(directory / "pg")
        config, checkpoint = tiny_model
        self.env = {
            "DATA_DIR": str(data_dir_sharing_models(directory / "data", directory.parent / "models-cache")),
            "REDIS_URL": self.redis_url, "DATABASE_URL": self.pg.url,
            "MODEL_NAME": str(config), "MODEL_PRETRAINED": str(checkpoint), "DEVICE": "cpu", "BATCH_SIZE": "4",
            "DECODE_THREADS": "2", "TASK_VISIBILITY_TIMEOUT_S": "10", "TASK_MAX_RETRIES": "10",
            # folders the API may ingest; its walk keeps at most 2 batches queued (a pause finds it mid-way)
            "INGEST_ROOTS": str(directory / "folders"), "INGEST_MAX_QUEUED": "2",
        }
        self.workers: list[Worker] = []
        self.killed: set[int] = set()
        self.replaced: set[int] = set()
        self.queue = TaskQueue.from_settings(Settings.explicit(redis_url=self.redis_url),
                                             redis.Redis.from_url(self.redis_url))
        self.api_port = free_port()
        self.api = self.start_api()
        self.database = PgVectorBackend(self.env["DATABASE_URL"], connect_timeout=2)
        self.catalog = ModelCatalog(self.database, ttl_s=0)
        self.images = ImageStore(directory / "data" / "images")

    @property
    def backend(self) -> VectorBackend:
        """The active model's index (the one the API searches)."""
        active = self.catalog.active()
        assert active is not None, "the stack made no index"
        return self.catalog.view(active)

    def start_worker(self) -> Worker:
        worker = Worker(self.env, self.dir / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def kill_worker(self) -> Worker:
        """SIGKILL a running worker (no ack, no clean shutdown); the test replaces it itself."""
        victim = next(w for w in self.workers if w.proc.poll() is None)
        self.killed.add(id(victim))
        victim.kill()
        return victim

    def supervise(self) -> None:
        """Replace workers that exited on their own, as the stack's supervisor does in production."""
        for worker in list(self.workers):
            if worker.proc.poll() is not None and id(worker) not in self.killed | self.replaced:
                self.replaced.add(id(worker))
                print(f"worker {worker.log_path.name} exited with {worker.proc.returncode}; starting another")
                self.start_worker()

    def ensure_healthy(self) -> None:
        """Redis answers, a worker answers a ping, and the queue holds nothing from an earlier test."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        wait_for(client.ping, 30, "Redis")
        self.supervise()
        wait_for(lambda: self.queue.workers_alive(timeout=1), 60, "a worker answering a ping")
        wait_for(lambda: client.llen("proxima") == 0 and client.hlen("unacked") == 0, 120,
                 "an empty queue (no batch left from the test before)")

    def start_api(self) -> Api:
        return Api(self.env, self.dir / "api.log", port=self.api_port)

    def stop_redis(self) -> None:
        stop(self.redis_proc)  # SIGTERM: Redis flushes its append-only file and exits

    def start_redis(self) -> None:
        self.redis_proc, _ = start_redis(self.dir / "redis", port=self.redis_port)

    def stop_database(self) -> None:
        self.pg.stop()

    def start_database(self) -> None:
        self.pg.start()

    def upload(self, seeds, size=(320, 240), prefix="img") -> dict:
        files = [("files", (f"{prefix}-{s}.jpg", jpeg(s, size))) for s in seeds]
        response = httpx.post(f"{self.api.url}/images", files=files, timeout=60)
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        return httpx.get(f"{self.api.url}/jobs/{job_id}", timeout=10).json()

    def wait_job(self, job_id: str, timeout: float = 120) -> dict:
        def finished() -> bool:
            self.supervise()
            return self.job(job_id)["state"] in FINAL

        wait_for(finished, timeout, f"job {job_id}")
        return self.job(job_id)

    def assert_indexed_once(self, ids: list[str]) -> None:
        assert set(self.backend.get(ids)) == set(ids)  # every one indexed; ids are primary keys, so once

    def close(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.stop()
        self.api.stop()
        self.database.close()
        self.queue.close()
        stop(self.redis_proc)
        self.pg.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model):
    s = FaultStack(tmp_path_factory.mktemp("faults"), tiny_model)
    s.start_worker()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def healthy(stack):
    stack.ensure_healthy()


def _ids(body: dict) -> list[str]:
    return [i["id"] for i in body["images"] if i["status"] != "rejected"]


def test_worker_sigkilled_mid_batch(stack):
    body = stack.upload(range(1000, 1060), size=(1600, 1200))
    job_id = body["job_id"]
    wait_for(lambda: stack.job(job_id)["done"] >= 4, 60, "first batches")
    stack.kill_worker()
    unacked = redis.Redis.from_url(stack.redis_url).hlen("unacked")
    job = stack.job(job_id)
    assert unacked >= 1 and job["done"] < job["total"], (unacked, job)  # batches were in the worker's hands
    stack.start_worker()
    job = stack.wait_job(job_id)
    assert (job["state"], job["done"], job["failed"]) == ("completed", 60, 0)
    stack.assert_indexed_once(_ids(body))


def test_redis_restart_during_ingest(stack):
    body = stack.upload(range(2000, 2040), size=(1024, 768))
    stack.stop_redis()
    try:
        started = time.monotonic()
        refused = httpx.post(f"{stack.api.url}/images", files={"files": ("x.jpg", jpeg(2999))}, timeout=30)
        assert refused.status_code == 503 and "Redis" in refused.json()["detail"], refused.text
        assert refused.headers["retry-after"] and time.monotonic() - started < 10
        assert httpx.get(f"{stack.api.url}/jobs/{body['job_id']}", timeout=30).status_code == 503
    finally:
        stack.start_redis()
    job = stack.wait_job(body["job_id"], timeout=180)
    assert (job["state"], job["done"], job["failed"]) == ("completed", 40, 0)
    stack.assert_indexed_once(_ids(body))


def test_database_down_for_30_seconds(stack):
    body = stack.upload(range(3000, 3040), size=(1024, 768))
    stack.stop_database()
    down_at = time.monotonic()
    try:
        started = time.monotonic()
        search = httpx.post(f"{stack.api.url}/search", files={"file": ("q.jpg", jpeg(3000))}, timeout=60)
        assert search.status_code == 503 and "vector database unavailable" in search.json()["detail"]
        assert time.monotonic() - started < 15, "search must fail fast, not hang"
        during = stack.upload(range(3100, 3110), prefix="during")  # uploads are still accepted
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
    finally:
        stack.start_database()
    for part in (body, during):
        job = stack.wait_job(part["job_id"], timeout=400)
        assert (job["state"], job["failed"]) == ("completed", 0), job
        stack.assert_indexed_once(_ids(part))
    search = httpx.post(f"{stack.api.url}/search", files={"file": ("q.jpg", jpeg(3000, (1024, 768)))}, timeout=60)
    assert search.status_code == 200 and search.json()["results"][0]["filename"] == "img-3000.jpg"


def test_api_restart_during_ingest(stack):
    body = stack.upload(range(4000, 4040), size=(1024, 768))
    stack.api.kill()
    stack.api = stack.start_api()
    job = stack.job(body["job_id"])
    assert job["total"] == 40 and job["state"] in ("queued", "running", "completed")
    job = stack.wait_job(body["job_id"])
    assert (job["state"], job["done"]) == ("completed", 40)
    stack.assert_indexed_once(_ids(body))


def _reconcile(stack, *args: str) -> dict:
    out = subprocess.run([sys.executable, "scripts/reconcile.py", *args], cwd=REPO, capture_output=True, text=True,
                         env=child_env(stack.env), timeout=180, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reconcile_restores_a_complete_index(stack):
    # A crash after files were stored but before their batches were queued, and a file lost from the store.
    lost = [stack.images.put(jpeg(s))[0] for s in range(5000, 5005)]
    upload = stack.upload([5100])
    stack.wait_job(upload["job_id"])
    gone = _ids(upload)[0]
    stack.images.path(gone).unlink()

    report = _reconcile(stack, "--wait")
    assert (report["missing_vectors"], report["requeued"], report["orphan_vectors"]) == (5, 5, 1)
    assert report["examples_orphans"] == [gone] and report["job"]["state"] == "completed"
    stack.assert_indexed_once(lost)

    report = _reconcile(stack, "--delete-orphans")
    assert (report["missing_vectors"], report["orphan_vectors"], report["orphans_deleted"]) == (0, 1, 1)
    assert stack.backend.get([gone]) == {}
    report = _reconcile(stack, "--dry-run")
    assert (report["missing_vectors"], report["orphan_vectors"]) == (0, 0)
    assert report["stored"] == report["indexed"] == stack.backend.count()


def test_reconcile_on_demand_in_a_worker(stack):
    stack.images.put(jpeg(5200))
    client = redis.Redis.from_url(stack.redis_url)
    client.delete("proxima:reconcile:last")
    assert httpx.post(f"{stack.api.url}/admin/reconcile", json={}).status_code == 202
    wait_for(lambda: httpx.get(f"{stack.api.url}/admin/reconcile").status_code == 200, 60, "reconcile task")
    report = httpx.get(f"{stack.api.url}/admin/reconcile").json()
    assert report["missing_vectors"] == 1 and report["requeued"] == 1
    assert stack.wait_job(report["job_id"])["state"] == "completed"


def _folder(stack, name: str, seeds: range, size=(1600, 1200)) -> list[str]:
    """A folder under INGEST_ROOTS with one JPEG per seed; returns the images' ids (SHA-256 of the bytes)."""
    folder = stack.dir / "folders" / name
    folder.mkdir(parents=True)
    ids = []
    for seed in seeds:
        data = jpeg(seed, size)
        (folder / f"{seed}.jpg").write_bytes(data)
        ids.append(hashlib.sha256(data).hexdigest())
    return ids


def _control(stack, job_id: str, action: str) -> dict:
    response = httpx.post(f"{stack.api.url}/jobs/{job_id}/{action}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _settled(stack) -> bool:
    """Nothing queued and nothing in a worker's hands."""
    client = redis.Redis.from_url(stack.redis_url)
    return client.llen("proxima") == 0 and client.hlen("unacked") == 0


def test_a_paused_folder_ingest_survives_a_worker_restart_and_resumes_indexing_each_image_once(stack):
    ids = _folder(stack, "paused", range(6000, 6096))  # 24 batches of 4; the walk keeps 2 queued
    response = httpx.post(f"{stack.api.url}/ingest", json={"path": str(stack.dir / "folders" / "paused")})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    wait_for(lambda: stack.job(job_id)["done"] >= 4, 60, "the first batch")
    job = _control(stack, job_id, "pause")
    assert job["state"] == "paused" and job["eta_s"] is None
    wait_for(lambda: _settled(stack), 30, "the batches already running to finish")
    paused = stack.job(job_id)
    assert paused["state"] == "paused" and paused["walking"] and paused["done"] < 96

    stack.kill_worker()  # a restart while paused: the new worker must not start the job's batches
    stack.start_worker()
    wait_for(lambda: stack.queue.workers_alive(timeout=1), 60, "the new worker")
    time.sleep(3)
    still = stack.job(job_id)
    assert (still["state"], still["done"], still["total"]) == ("paused", paused["done"], paused["total"])
    assert _control(stack, job_id, "pause")["state"] == "paused"  # again: nothing changes

    assert _control(stack, job_id, "resume")["state"] == "running"
    job = stack.wait_job(job_id, 180)
    assert (job["state"], job["done"], job["failed"], job["duplicates"], job["total"]) == ("completed", 96, 0, 0, 96)
    assert job["stage_s"]["batches"] == 24  # every batch was run exactly once, before or after the pause
    stack.assert_indexed_once(ids)
    conflict = httpx.post(f"{stack.api.url}/jobs/{job_id}/resume", timeout=10)
    assert conflict.status_code == 409 and "completed" in conflict.json()["detail"]
    listed = httpx.get(f"{stack.api.url}/jobs", params={"kind": "folder", "limit": 1}).json()
    assert listed["jobs"][0]["job_id"] == job_id and listed["jobs"][0]["state"] == "completed"


def test_a_cancelled_folder_ingest_stops_and_keeps_what_it_indexed(stack):
    ids = _folder(stack, "cancelled", range(6200, 6296))
    response = httpx.post(f"{stack.api.url}/ingest", json={"path": str(stack.dir / "folders" / "cancelled")})
    job_id = response.json()["job_id"]
    wait_for(lambda: stack.job(job_id)["done"] >= 4, 60, "the first batch")
    job = _control(stack, job_id, "cancel")
    assert job["state"] == "cancelled"
    wait_for(lambda: _settled(stack) and not stack.job(job_id)["walking"], 30, "the queue to drain")
    time.sleep(2)
    job = stack.job(job_id)
    indexed = set(stack.backend.get(ids))
    assert job["state"] == "cancelled" and job["failed"] == 0 and job["done"] == len(indexed) < 96
    assert job["dropped"] == job["total"] - job["done"]
    assert httpx.post(f"{stack.api.url}/jobs/{job_id}/pause", timeout=10).status_code == 409

    again = httpx.post(f"{stack.api.url}/ingest", json={"path": str(stack.dir / "folders" / "cancelled")})
    job = stack.wait_job(again.json()["job_id"], 180)  # the same folder again: the rest, nothing twice
    assert (job["state"], job["done"], job["duplicates"]) == ("completed", 96, len(indexed))
    stack.assert_indexed_once(ids)
