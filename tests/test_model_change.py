"""Changing the model without losing search, on a real stack (an API process, Celery workers, Redis,
PostgreSQL + pgvector): tiny model A → re-embed into B (same dimension; a worker SIGKILLed mid-way) →
activate → re-embed into C (another dimension) while searches run without pause and images are uploaded →
activate → retire. Each switch reaches the running API process without a restart.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from scripts.devservices import Api, Worker, create_database, wait_for, write_tiny_model
from scripts.synthetic import jpeg
from shared.backends.pgvector import PgVectorBackend
from shared.catalog import ModelCatalog
from shared.config import Settings
from shared.embedder import load_embedder, load_model
from shared.imaging import load_image, to_model_input
from shared.types import ModelInfo
from tests.conftest import _stack_env

FINAL = ("completed", "completed_with_errors", "failed")


class Stack:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.workers = [Worker(env, logs / "worker-0.log")]
        self.api = Api(env, logs / "api.log")
        self.http = httpx.Client(base_url=self.api.url, timeout=60)
        self.settings = Settings.explicit(**{k.lower(): v for k, v in env.items()})
        self.database = PgVectorBackend(env["DATABASE_URL"])
        self.catalog = ModelCatalog(self.database, ttl_s=0)

    def upload(self, seeds, size=(320, 240)) -> dict:
        files = [("files", (f"img-{s}.jpg", jpeg(s, size))) for s in seeds]
        response = self.http.post("/images", files=files)
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/jobs/{job_id}").json()

    def wait_job(self, job_id: str, timeout: float = 180) -> dict:
        wait_for(lambda: self.job(job_id)["state"] in FINAL and not self.job(job_id).get("walking"), timeout,
                 f"job {job_id}")
        return self.job(job_id)

    def models(self) -> dict[str, dict]:
        return {m["slug"]: m for m in self.http.get("/admin/models").json()["models"]}

    def stored_ids(self) -> set[str]:
        root = Path(self.env["DATA_DIR"]) / "images"
        return {p.name for p in root.glob("??/??/*") if len(p.name) == 64}

    def index_ids(self, slug: str) -> list[str]:
        view = self.catalog.view(self.catalog.get(slug))
        return [r.id for records, _ in view.scan(batch_size=7) for r in records]

    def close(self) -> None:
        self.http.close()
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.stop()
        self.api.stop()
        self.database.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("models")
    return {"A": tiny_model, "B": write_tiny_model(folder, seed=11), "C": write_tiny_model(folder, dim=32)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, pg_url, tiny_model):
    env = _stack_env(tmp_path_factory, redis_url, tiny_model, 6, vector_backend="pgvector",
                     database_url=create_database(pg_url, "model_change"),
                     task_visibility_timeout_s="10")  # a killed worker's batch is back in the queue soon
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    s = Stack(env, tmp_path_factory.mktemp("logs"))
    yield s
    s.close()


def _embed(settings: Settings, model: ModelInfo, data: bytes) -> np.ndarray:
    embedder = load_model(settings, model)
    image = load_image(data, min_side=embedder.image_size, max_pixels=10**8).image
    return embedder.encode_images([to_model_input(image, embedder.image_size)])[0]


def _reembed(stack: Stack, files: tuple[Path, Path], **extra) -> dict:
    config, checkpoint = files
    response = stack.http.post("/admin/models", json={"name": str(config), "pretrained": str(checkpoint), **extra})
    assert response.status_code == 202, response.text
    return response.json()


def test_same_dimension_reembed_survives_a_killed_worker_and_switches_the_running_api(stack, models):
    first = stack.upload(range(64), size=(2400, 1800))  # large: a re-embed batch takes long enough to cut
    assert stack.wait_job(first["job_id"])["done"] == 64
    a = stack.http.get("/health").json()
    a_slug = next(m["slug"] for m in a["models"] if m["state"] == "active")

    started = _reembed(stack, models["B"])
    b_slug = started["slug"]
    assert b_slug != a_slug and started["dim"] == 64
    assert stack.models()[b_slug]["state"] == "building"
    wait_for(lambda: stack.job(started["job_id"])["done"] >= 1, 90, "the first re-embedded batch", interval=0.02)
    stack.workers[0].kill()  # SIGKILL: its batches in flight go back to the queue
    job = stack.job(started["job_id"])
    assert job["done"] < 64, job
    refused = stack.http.post(f"/admin/models/{b_slug}/activate")
    assert refused.status_code == 409 and "not complete" in refused.json()["detail"], refused.text
    stack.workers.append(Worker(stack.env, stack.logs / "worker-1.log"))
    job = stack.wait_job(started["job_id"])
    assert (job["state"], job["done"], job["failed"]) == ("completed", 64, 0), job

    ids = stack.index_ids(b_slug)
    assert sorted(ids) == sorted(stack.stored_ids()) and len(ids) == len(set(ids)) == 64  # each once
    again = _reembed(stack, models["B"])  # run again (as after a crash): nothing left to embed
    job = stack.wait_job(again["job_id"])
    assert (job["state"], job["total"], job["done"], job["duplicates"]) == ("completed", 64, 64, 64), job

    assert stack.http.post(f"/admin/models/{b_slug}/activate").status_code == 200
    wait_for(lambda: stack.http.get("/health").json()["model"]["pretrained"].endswith("-seed11.pt"), 15,
             "the running API to serve model B")
    b_model = stack.catalog.get(b_slug).model
    query = jpeg(3, (2400, 1800))
    hits = stack.http.post("/search", files={"file": ("q.jpg", query)}).json()["results"]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert {stack.http.get(f"/images/{h['id']}/metadata").json()["model"] for h in hits} == {b_model.label()}
    # B's vector, not A's: the query embedded by B itself scores 1 against what the index returned
    expected = _embed(stack.settings, b_model, query)
    stored = stack.catalog.view(stack.catalog.get(b_slug)).get_vectors([hits[0]["id"]])[hits[0]["id"]]
    assert float(expected @ stored) == pytest.approx(1.0, abs=1e-3)
    # a text search is embedded by B: its scores are B's text vector against B's image vectors
    text_hits = stack.http.post("/search/text", json={"text": "a red square"}).json()["results"]
    text = load_model(stack.settings, b_model).encode_text(["a red square"])[0]
    vectors = stack.catalog.view(stack.catalog.get(b_slug)).get_vectors([h["id"] for h in text_hits])
    assert [h["score"] for h in text_hits] == pytest.approx([float(text @ vectors[h["id"]]) for h in text_hits],
                                                            abs=2e-3)
    assert stack.models()[a_slug]["state"] == "retired"


def test_another_dimension_while_searches_and_uploads_go_on(stack, models):
    stop, errors, answered = threading.Event(), [], [0]
    query = jpeg(5, (1600, 1200))

    def search_without_pause() -> None:
        with httpx.Client(base_url=stack.api.url, timeout=60) as http:
            while not stop.is_set():
                for response in (http.post("/search", files={"file": ("q.jpg", query)}),
                                 http.post("/search/text", json={"text": "a red square"}),
                                 http.get(f"/images/{ids[0]}/similar")):
                    if response.status_code != 200:
                        errors.append((response.status_code, response.text[:300]))
                    answered[0] += 1

    ids = sorted(stack.stored_ids())
    searcher = threading.Thread(target=search_without_pause, daemon=True)
    searcher.start()
    try:
        started = _reembed(stack, models["C"], activate_when_done=True)
        c_slug = started["slug"]
        assert started["dim"] == 32
        during = stack.upload(range(100, 106))  # uploaded during the re-embed: they must reach C too
        assert stack.wait_job(during["job_id"])["done"] == 6
        wait_for(lambda: stack.models()[c_slug]["state"] == "active", 180, "C to activate itself when complete")
        wait_for(lambda: stack.http.get("/health").json()["model"]["dim"] == 32, 15, "the API to serve C")
        time.sleep(1.0)  # a few more searches on C
    finally:
        stop.set()
        searcher.join(60)
    assert not errors, errors[:5]
    assert answered[0] > 30

    c_model = stack.catalog.get(c_slug).model
    c_ids = stack.index_ids(c_slug)
    assert sorted(c_ids) == sorted(stack.stored_ids()) and len(c_ids) == 70
    view = stack.catalog.view(stack.catalog.get(c_slug))
    assert {r.model for records, _ in view.scan() for r in records} == {c_model.label()}  # nothing of A or B
    new_id = next(i["id"] for i in during["images"])
    hits = stack.http.post("/search", files={"file": ("q.jpg", jpeg(100))}).json()["results"]
    assert hits[0]["id"] == new_id and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    similar = stack.http.get(f"/images/{new_id}/similar").json()["results"]
    assert similar and {stack.http.get(f"/images/{h['id']}/metadata").json()["model"] for h in similar} == {
        c_model.label()}
    assert stack.http.post("/search/text", json={"text": "a photo"}).status_code == 200

    states = {slug: m["state"] for slug, m in stack.models().items()}
    assert sorted(states.values()) == ["active", "retired", "retired"]
    assert stack.http.post(f"/admin/models/{c_slug}/retire").status_code == 409  # the active one stays
    for slug, state in states.items():
        if state == "retired":
            assert stack.http.post(f"/admin/models/{slug}/retire").status_code == 200
    assert list(stack.models()) == [c_slug]
    health = stack.http.get("/health").json()
    assert health["vectors"] == 70 and [m["slug"] for m in health["models"]] == [c_slug]


def test_a_process_started_with_another_model_says_what_to_run_or_reembeds(stack, models):
    from shared.services import Proxima
    from shared.types import SchemaMismatch

    settings = stack.settings  # names model A, which is no longer active (or even kept)
    proxima = Proxima.from_settings(settings, encoder=load_embedder(settings))
    try:
        with pytest.raises(SchemaMismatch, match=r"scripts/reembed.py --name .*proxima-tiny.*--activate-when-done"):
            proxima.check_index()
    finally:
        proxima.close()

    # MODEL_CHANGE=reembed: the API starts the re-embed into the settings' model and stays on the active one
    active = stack.catalog.active()
    reembedding = settings.model_copy(update={"model_change": "reembed"})
    proxima = Proxima.from_settings(reembedding, encoder=load_embedder(reembedding))
    try:
        proxima.check_index(start_reembed=True)
        a = proxima.encoder.info
        entry = stack.catalog.get(a.slug)
        assert entry.state == "building" and entry.activate_when_done and stack.catalog.active() == active
        job = stack.wait_job(entry.job_id)
        assert (job["kind"], job["done"], job["failed"]) == ("reembed", 70, 0), job
        wait_for(lambda: stack.catalog.active().slug == a.slug, 60, "A to be active again")
    finally:
        proxima.close()
