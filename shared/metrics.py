"""Prometheus metrics: every metric Proxima exports, defined once here, and how a process serves them.

Names start with `proxima_`; every label takes few values (route templates, never raw paths; status codes;
stage names; error kinds; a model's slug), so the number of series stays small whatever the traffic.

Who records what:
- the API (`api/routes/metrics.py`): HTTP requests and their latency by route template and status; the
  search stages (`shared.pipeline`: decode, embed, vector search) and the merged model calls
  (`shared.batching`); uploads that are duplicates or rejected (`shared.pipeline.accept_uploads`); at scrape
  time, the queue depth and the build/model info. `GET /metrics` serves them.
- each worker process (`workers/tasks.py`): per batch, the images ingested / duplicate / failed, the seconds
  of each stage (read, decode, transfer, encode, upsert), the model call's size and the batch's wall time;
  retries and backend errors. It serves them on its own port, METRICS_PORT (`serve`).

Processes: by default a process's metrics live in its memory (prometheus_client's default registry) and are
served by that process. With PROMETHEUS_MULTIPROC_DIR set in the environment before the process starts (an
empty folder, wiped by whatever starts the processes), prometheus_client writes them to files there and a
scrape answered by any process sums them over all of them: what the API needs when it runs as several
processes (`uvicorn --workers N`). Set it for the API only: a worker given the same folder would serve the
API's counts too.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from shared.types import STAGES, BackendError, BackendUnavailable, SchemaMismatch, StageTimes

if TYPE_CHECKING:
    from shared.queue import TaskQueue
    from shared.types import Encoder

log = logging.getLogger(__name__)

VERSION = "0.1.0"  # Proxima's release: the API's OpenAPI version and proxima_build_info's `version`
UNMATCHED = "<unmatched>"  # the route label of requests no route matched (404s): never the raw path

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

# --- the API ---------------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter("proxima_http_requests", "HTTP requests answered, by route template, method and status",
                        ["method", "route", "status"])
HTTP_SECONDS = Histogram("proxima_http_request_duration_seconds",
                         "Time to answer an HTTP request (until its body is sent), by route template",
                         ["method", "route"], buckets=_LATENCY)
SEARCH_SECONDS = Histogram("proxima_search_stage_seconds",
                           "Seconds of each part of a search: decode (the query image), embed (the model call, "
                           "merged with concurrent searches), vector_search (the database)",
                           ["search", "stage"], buckets=_LATENCY)
MODEL_BATCH = Histogram("proxima_model_batch_size",
                        "Inputs per model call: merged searches in the API, a batch's images in a worker",
                        ["modality"], buckets=_SIZES)

# --- images, batches, errors (mostly the workers) ---------------------------------------------------------

IMAGES = Counter("proxima_images", "Images processed, by where they came from (upload, folder, reembed) and "
                 "outcome (ingested, duplicate, failed)", ["source", "outcome"])
STAGE_SECONDS = Histogram("proxima_stage_seconds",
                          "Seconds a batch spent in each stage (read and decode are summed over the pool's threads)",
                          ["stage"], buckets=_BATCH_SECONDS)
BATCH_SECONDS = Histogram("proxima_batch_seconds", "Wall time of a batch task that finished, by source",
                          ["source"], buckets=_BATCH_SECONDS)
RETRIES = Counter("proxima_task_retries", "Batches put back to be tried again later (an outage), by source",
                  ["source"])
BACKEND_ERRORS = Counter("proxima_backend_errors",
                         "Errors from the services behind Proxima: service (vector_db, redis) and kind "
                         "(unavailable, schema_mismatch, error)", ["service", "kind"])

# --- made at scrape time (custom collectors: read when Prometheus asks, whatever the process mode) ---------

QUEUE = "proxima_queue_batches"
BUILD = "proxima_build"  # exposed as proxima_build_info

SOURCES = ("upload", "folder", "reembed")
OUTCOMES = ("ingested", "duplicate", "failed")


def sample_names() -> frozenset[str]:
    """Every series name this module can expose (`proxima_images_total`, `..._bucket`, `proxima_build_info`,
    ...): what a dashboard or alert may name."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    names = {QUEUE, f"{BUILD}_info"}
    for metric in (HTTP_REQUESTS, HTTP_SECONDS, SEARCH_SECONDS, MODEL_BATCH, IMAGES, STAGE_SECONDS, BATCH_SECONDS,
                   RETRIES, BACKEND_ERRORS):
        for family in metric.describe():
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return frozenset(names)


# --- recording --------------------------------------------------------------------------------------------


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_SECONDS.labels(method, route).observe(seconds)


@contextmanager
def search_stage(search: str, stage: str) -> Iterator[None]:
    """Time one part of a search (`search`: image, text, similar; `stage`: decode, embed, vector_search)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        SEARCH_SECONDS.labels(search, stage).observe(time.perf_counter() - started)


def record_model_batch(modality: str, size: int) -> None:
    if size > 0:
        MODEL_BATCH.labels(modality).observe(size)


def record_images(source: str, outcome: str, count: int) -> None:
    if count > 0:
        IMAGES.labels(source, outcome).inc(count)


def record_batch(source: str, times: StageTimes, *, ingested: int, duplicates: int, failed: int) -> None:
    """A finished batch: its images by outcome, each stage's seconds, the size of its model call."""
    record_images(source, "ingested", ingested)
    record_images(source, "duplicate", duplicates)
    record_images(source, "failed", failed)
    for stage in STAGES:
        STAGE_SECONDS.labels(stage).observe(getattr(times, stage))
    record_model_batch("image", ingested)


def error_kind(exc: BaseException) -> tuple[str, str] | None:
    """(service, kind) of an error from the vector database or Redis; None for any other exception."""
    if isinstance(exc, BackendUnavailable):
        return "vector_db", "unavailable"
    if isinstance(exc, SchemaMismatch):
        return "vector_db", "schema_mismatch"
    if isinstance(exc, BackendError):
        return "vector_db", "error"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return "redis", "unavailable"
    if isinstance(exc, redis.RedisError):
        return "redis", "error"
    return None


def record_error(exc: BaseException) -> None:
    """Count `exc` if it is a backend error (see `error_kind`); anything else is not counted here."""
    kind = error_kind(exc)
    if kind is not None:
        BACKEND_ERRORS.labels(*kind).inc()


# --- scrape-time facts ------------------------------------------------------------------------------------


def queue_depth(queue: TaskQueue) -> Iterator[Metric]:
    """Batches waiting in the queue and delivered to a worker but not finished, read from Redis now (nothing
    when Redis does not answer: a gap in the graph, and a backend error counted)."""
    try:
        waiting, in_flight = queue.depth(), queue.in_flight()
    except redis.RedisError as exc:
        record_error(exc)
        return
    family = GaugeMetricFamily(QUEUE, "Batches in the task queue: waiting, or in_flight (held by a worker)",
                               labels=["state"])
    family.add_metric(["waiting"], waiting)
    family.add_metric(["in_flight"], in_flight)
    yield family


def build_info(role: str, model: Encoder, backend: str, **extra: str) -> Metric:
    """proxima_build_info: the release, this process's role (api, worker), the model it serves (its slug),
    the runtime and precision it runs in, the vector database."""
    labels = {"version": VERSION, "role": role, "model": model.info.slug, "extractor": model.info.extractor,
              "runtime": model.runtime, "precision": model.precision, "backend": backend, **extra}
    return InfoMetricFamily(BUILD, "Proxima's release, model and backend in this process", value=labels)


class _Collected:
    """A collector whose families come from a function, called at each scrape."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def registry(*facts: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    """What a scrape of this process shows: its metrics (or, in multiprocess mode, those of every process
    writing to PROMETHEUS_MULTIPROC_DIR) and the `facts` made at scrape time."""
    scrape = CollectorRegistry()
    if multiprocess():
        MultiProcessCollector(scrape)
    else:
        scrape.register(REGISTRY)  # the default registry: ours, and the process / GC / platform collectors
    for fact in facts:
        scrape.register(_Collected(fact))
    return scrape


def serve(port: int, *facts: Callable[[], Iterable[Metric]], addr: str = "0.0.0.0") -> bool:
    """Serve `registry(*facts)` at http://addr:port/metrics from a daemon thread (a worker's metrics). False,
    with a warning, when the port is taken: the process works on without it."""
    try:
        start_http_server(port, addr=addr, registry=registry(*facts))
    except OSError as exc:
        log.warning("metrics not served: cannot listen on %s:%d (%s); is METRICS_PORT shared by two processes?",
                    addr, port, exc)
        return False
    log.info("metrics at http://%s:%d/metrics", addr, port)
    return True
