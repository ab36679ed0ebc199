"""Prometheus metrics, read the way Prometheus reads them: `GET /metrics` of the API and each worker's
METRICS_PORT, parsed with prometheus_client's own parser. An upload and a search move the right counters
and histograms; labels are route templates, never raw paths; multiprocess mode sums the processes."""

from __future__ import annotations

import subprocess
import sys
import uuid

import httpx
import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.limits import BodySizeLimit
from api.routes import metrics as metrics_route
from scripts.devservices import REPO, child_env, wait_for
from scripts.synthetic import jpeg
from shared import metrics
from shared.types import BackendError, BackendUnavailable, SchemaMismatch

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples `name` whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def labels_of(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(have) for (n, have) in samples if n == name]


# --- without services ---------------------------------------------------------------------------------------


def test_requests_are_counted_by_route_template_never_by_raw_path():
    app = FastAPI()

    @app.get("/things/{thing_id}")
    def read(thing_id: str) -> dict:
        return {"id": thing_id}

    @app.post("/things/{thing_id}")
    def write(thing_id: str) -> dict:
        return {"id": thing_id}

    app.add_middleware(BodySizeLimit, max_bytes=10)
    metrics_route.install(app)
    before = parse(TestClient(app).get("/metrics").text)
    with TestClient(app) as client:
        assert client.get("/things/secret-id-1").status_code == 200
        assert client.post("/things/secret-id-2", content=b"x" * 100).status_code == 413  # before routing
        assert client.get("/no/such/secret-path").status_code == 404
        response = client.get("/metrics")
    after = parse(response.text)
    assert response.headers["content-type"].startswith("text/plain")
    moved = {(d["method"], d["route"], d["status"]) for d in labels_of(after, "proxima_http_requests_total")
             if value(after, "proxima_http_requests_total", **d) > value(before, "proxima_http_requests_total", **d)}
    assert {("GET", "/things/{thing_id}", "200"), ("POST", "/things/{thing_id}", "413"),
            ("GET", metrics.UNMATCHED, "404")} <= moved
    assert "secret" not in response.text
    assert "/metrics" not in app.openapi()["paths"]


def test_backend_errors_have_a_service_and_a_kind():
    assert metrics.error_kind(BackendUnavailable("down")) == ("vector_db", "unavailable")
    assert metrics.error_kind(SchemaMismatch("other model")) == ("vector_db", "schema_mismatch")
    assert metrics.error_kind(BackendError("refused")) == ("vector_db", "error")
    assert metrics.error_kind(redis.ConnectionError("refused")) == ("redis", "unavailable")
    assert metrics.error_kind(redis.ResponseError("WRONGTYPE")) == ("redis", "error")
    assert metrics.error_kind(ValueError("a bug")) is None


def test_multiprocess_mode_sums_the_processes(tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR (several API processes), any process's scrape shows every process's counts."""
    count = ("import sys\nfrom shared import metrics\nmetrics.record_images('upload', 'duplicate', int(sys.argv[1]))\n"
             "metrics.record_request('GET', '/health', 200, 0.01)\n")
    show = "from prometheus_client import generate_latest\nfrom shared import metrics\n" \
           "print(generate_latest(metrics.registry()).decode())\n"
    env = child_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    for n in (2, 3):
        subprocess.run([sys.executable, "-c", count, str(n)], cwd=REPO, env=env, check=True, timeout=60)
    text = subprocess.run([sys.executable, "-c", show], cwd=REPO, env=env, check=True, timeout=60,
                          capture_output=True, text=True).stdout
    samples = parse(text)
    assert value(samples, "proxima_images_total", source="upload", outcome="duplicate") == 5
    assert value(samples, "proxima_http_request_duration_seconds_count", route="/health") == 2


# --- on the stack: the API in-process, a real worker ----------------------------------------------------------


def _wait_job(client, job_id: str) -> dict:
    wait_for(lambda: client.get(f"/jobs/{job_id}").json()["state"] == "completed", 60, f"job {job_id}")
    return client.get(f"/jobs/{job_id}").json()


def test_an_upload_and_a_search_move_the_counters_and_histograms(client, stack_env):
    worker_url = f"http://127.0.0.1:{stack_env['METRICS_PORT']}/metrics"
    api_before, worker_before = parse(client.get("/metrics").text), parse(httpx.get(worker_url, timeout=10).text)
    seed = uuid.uuid4().int % 10**9  # images no other test uploads
    upload = client.post("/images", files=[("files", (f"m{n}.jpg", jpeg(seed + n))) for n in range(2)])
    assert upload.status_code == 202
    _wait_job(client, upload.json()["job_id"])
    again = client.post("/images", files=[("files", ("again.jpg", jpeg(seed)))])
    assert again.json()["images"][0]["status"] == "duplicate"  # found by the API: never reaches a worker
    assert client.post("/search", files={"file": ("q.jpg", jpeg(seed))}, data={"top_k": "3"}).status_code == 200
    assert client.get(f"/images/{'0' * 64}").status_code == 404
    assert client.get(f"/no-such-page-{seed}").status_code == 404

    api = parse(client.get("/metrics").text)

    def moved(name: str, **labels: str) -> float:
        return value(api, name, **labels) - value(api_before, name, **labels)

    assert moved("proxima_http_requests_total", method="POST", route="/images", status="202") == 2
    assert moved("proxima_http_requests_total", method="POST", route="/search", status="200") == 1
    assert moved("proxima_http_requests_total", method="GET", route="/images/{image_id}", status="404") == 1
    assert moved("proxima_http_requests_total", method="GET", route=metrics.UNMATCHED, status="404") == 1
    assert moved("proxima_http_request_duration_seconds_count", method="POST", route="/search") == 1
    assert moved("proxima_http_request_duration_seconds_sum", method="POST", route="/search") > 0
    for stage in ("decode", "embed", "vector_search"):
        assert moved("proxima_search_stage_seconds_count", search="image", stage=stage) == 1, stage
        assert moved("proxima_search_stage_seconds_sum", search="image", stage=stage) > 0, stage
    assert moved("proxima_model_batch_size_count", modality="image") >= 1  # the search's merged model call
    assert moved("proxima_images_total", source="upload", outcome="duplicate") == 1
    assert {d["state"] for d in labels_of(api, "proxima_queue_batches")} == {"waiting", "in_flight"}
    [info] = [d for d in labels_of(api, "proxima_build_info") if d["role"] == "api"]
    assert info["version"] == client.get("/openapi.json").json()["info"]["version"]
    assert info["backend"] == "pgvector" and info["model"]
    assert not [d for d in labels_of(api, "proxima_http_requests_total") if str(seed) in d["route"]]
    exposed = {name for name, _ in api if name.startswith("proxima_")}
    assert exposed <= metrics.sample_names()
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]

    # the worker's own port: its counters move once the batch is accounted (just after the job completes)
    def worker_moved() -> Samples:
        worker = parse(httpx.get(worker_url, timeout=10).text)
        done = value(worker, "proxima_batch_seconds_count", source="upload") - \
            value(worker_before, "proxima_batch_seconds_count", source="upload")
        return worker if done >= 1 else {}

    wait_for(worker_moved, 30, "the worker's metrics")
    worker = worker_moved()

    def grew(name: str, **labels: str) -> float:
        return value(worker, name, **labels) - value(worker_before, name, **labels)

    assert grew("proxima_images_total", source="upload", outcome="ingested") == 2
    assert grew("proxima_images_total", source="upload", outcome="failed") == 0
    batches = grew("proxima_batch_seconds_count", source="upload")
    for stage in ("read", "decode", "transfer", "encode", "upsert"):
        assert grew("proxima_stage_seconds_count", stage=stage) == batches, stage
    for stage in ("decode", "encode", "upsert"):
        assert grew("proxima_stage_seconds_sum", stage=stage) > 0, stage
    assert grew("proxima_model_batch_size_sum", modality="image") == 2
    [worker_info] = labels_of(worker, "proxima_build_info")
    assert worker_info["role"] == "worker" and worker_info["model"] == info["model"]
    assert worker_info["device"] == "cpu"


@pytest.mark.parametrize("accept", ["application/openmetrics-text; version=1.0.0", "text/plain; version=0.0.4"])
def test_metrics_answer_in_the_format_prometheus_asks_for(client, accept):
    response = client.get("/metrics", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(accept.split(";")[0])
    assert "proxima_http_requests" in response.text
