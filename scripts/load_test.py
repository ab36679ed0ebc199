"""Mixed search traffic against a running API while an ingest is in progress: latency, throughput, errors.

    python scripts/load_test.py --api http://127.0.0.1:8000 --concurrency 50 --seconds 60

`--concurrency` client loops (one asyncio process, httpx) send requests back to back for `--seconds`:
about 60% `POST /search` (a generated 640×480 JPEG), 25% `POST /search/text` (a few English phrases) and
15% `GET /images/{id}/similar` for ids seen in earlier results (image searches until some are known), all
with top_k=10. Meanwhile a separate task uploads `--ingest-images` (default 500) new generated JPEGs in
requests of 50 files to one open job (`POST /jobs`, `POST /images`, then sealed), so the workers are
indexing while the searches run; `--ingest-images 0` leaves that out. An index with no vectors is first
given 50 images (and the job is waited for), so that searches have results.

Every image is generated before the clock starts, from seeds derived from `--seed`: a new seed each run
by default (printed), so a re-run uploads new images rather than duplicates. `--api-key` is sent as
X-API-Key. Each request has a `--timeout` (30 s); an error is an exception (counted by its type:
Timeout, ConnectError ...) or a non-2xx answer (counted as "HTTP 503" ...). Percentiles cover every request, failed
ones included. The generator shares the machine's CPUs with whatever it runs beside: for figures about
the server alone, run it from another machine.

A progress line every 5 s and a summary go to stderr; the last line on stdout is one JSON object:
{"concurrency", "seconds", "requests", "errors", "errors_by_kind", "rps", "p50_ms", "p99_ms",
"by_endpoint": {name: {"requests", "errors", "p50_ms", "p99_ms"}}, "ingest": {"job_id", "state", "done",
"total", "failed", "duplicates", "planned", "uploaded", "upload_errors"} (null with --ingest-images 0),
"seed"}. The ingest figures are the job's progress when the load ends; uploads still to go then are left
out and the job is sealed with what it has, so it completes. Exit status 0 when no request failed
(searches and ingest uploads), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.synthetic import jpeg  # noqa: E402
from shared.client import ApiClient  # noqa: E402
from shared.types import FINAL_STATES, ServiceError, Upload  # noqa: E402

DEFAULT_API = os.environ.get("PROXIMA_API", "http://127.0.0.1:8000")
SIZE = (640, 480)
TOP_K = 10
CHUNK = 50  # files per ingest request
SEED_IMAGES = 50  # uploaded first when the index is empty
REPORT_EVERY_S = 5.0
KNOWN_IDS_KEPT = 2000

IMAGE, TEXT, SIMILAR = "POST /search", "POST /search/text", "GET /images/{id}/similar"
PHRASES = (
    "a dog running on the beach",
    "a red car parked in the street",
    "mountains covered in snow at sunset",
    "a bowl of fresh fruit on a wooden table",
    "people walking in a busy city at night",
    "a cat sleeping on a sofa",
    "blue sky with white clouds",
    "a close-up of a yellow flower",
    "an old stone bridge over a river",
    "a plate of pasta with tomato sauce",
)

# Seeds: each run's images come from its own block of a million; the three uses never share a seed.
STRIDE, QUERY_OFFSET, SEEDING_OFFSET = 1_000_000, 900_000, 950_000
MAX_INGEST = QUERY_OFFSET


@dataclass
class Stats:
    """Per-endpoint latencies (ms) and error counts; `window` holds the latencies since the last report."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=Counter)
    errors_by_kind: Counter = field(default_factory=Counter)
    window: list[float] = field(default_factory=list)

    def record(self, endpoint: str, ms: float, error: str | None) -> None:
        self.latencies[endpoint].append(ms)
        self.window.append(ms)
        if error:
            self.errors[endpoint] += 1
            self.errors_by_kind[error] += 1

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())


@dataclass
class Ingest:
    """The background upload: one open job, images sent `CHUNK` at a time."""

    images: list[bytes]
    job_id: str | None = None
    uploaded: int = 0
    upload_errors: Counter = field(default_factory=Counter)
    job: dict[str, Any] = field(default_factory=dict)  # GET /jobs/{job_id} when the load ended


def _jpeg(seed: int) -> bytes:
    return jpeg(seed, size=SIZE)


def generate(seeds: list[int]) -> list[bytes]:
    """JPEGs for these seeds, on every core (before the clock starts)."""
    if not seeds:
        return []
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(_jpeg, seeds, chunksize=8))


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def error_kind(exc: BaseException) -> str:
    return "Timeout" if isinstance(exc, TimeoutError) else type(exc).__name__


async def timed(http: httpx.AsyncClient, stats: Stats, endpoint: str, method: str, url: str, timeout: float,
                **kwargs: Any) -> httpx.Response | None:
    """One measured request; the response when it succeeded (2xx), else None (the error is counted)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):  # the whole request, not each read as httpx's timeout
            response = await http.request(method, url, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure is a result here
        stats.record(endpoint, (time.perf_counter() - started) * 1000, error_kind(exc))
        return None
    error = None if response.is_success else f"HTTP {response.status_code}"
    stats.record(endpoint, (time.perf_counter() - started) * 1000, error)
    return None if error else response


def remember(known: list[str], seen: set[str], response: httpx.Response | None) -> None:
    """Keep the ids in a search answer for later more-like-this requests."""
    if response is None or len(known) >= KNOWN_IDS_KEPT:
        return
    try:
        ids = [r["id"] for r in response.json()["results"]]
    except (ValueError, KeyError, TypeError):
        return
    for image_id in ids:
        if image_id not in seen:
            seen.add(image_id)
            known.append(image_id)


async def client_loop(http: httpx.AsyncClient, stats: Stats, queries: list[bytes], known: list[str],
                      seen: set[str], rng: random.Random, deadline: float, timeout: float) -> None:
    """Back-to-back requests in the 60/25/15 mix until the deadline."""
    while time.perf_counter() < deadline:
        draw = rng.random()
        if draw < 0.60 or (draw >= 0.85 and not known):
            data = rng.choice(queries)
            response = await timed(http, stats, IMAGE, "POST", "/search", timeout,
                                   files={"file": ("query.jpg", data, "image/jpeg")}, data={"top_k": str(TOP_K)})
        elif draw < 0.85:
            response = await timed(http, stats, TEXT, "POST", "/search/text", timeout,
                                   json={"text": rng.choice(PHRASES), "top_k": TOP_K})
        else:
            response = await timed(http, stats, SIMILAR, "GET", f"/images/{rng.choice(known)}/similar", timeout,
                                   params={"top_k": TOP_K})
        remember(known, seen, response)


async def upload(api: ApiClient, ingest: Ingest) -> None:
    """Send the ingest images to the open job, `CHUNK` per request (the same client calls as the page and
    `ingest_folder.py --api`, in a thread); failures are counted, not retried."""
    for start in range(0, len(ingest.images), CHUNK):
        chunk = [Upload(f"load-{start + i:06d}.jpg", data) for i, data in enumerate(ingest.images[start:start + CHUNK])]
        try:
            await asyncio.to_thread(api.accept, chunk, ingest.job_id)
        except ServiceError as exc:
            ingest.upload_errors[exc.kind] += 1
            print(f"ingest upload refused: {exc}", file=sys.stderr)
        else:
            ingest.uploaded += len(chunk)


async def job_state(http: httpx.AsyncClient, job_id: str) -> dict[str, Any] | None:
    try:
        response = await http.get(f"/jobs/{job_id}")
    except httpx.HTTPError:
        return None
    return response.json() if response.is_success else None


async def report(http: httpx.AsyncClient, stats: Stats, ingest: Ingest | None, started: float) -> None:
    """A progress line on stderr every few seconds: totals, this interval's rate and p50, the ingest job."""
    last_count, last_time = 0, started
    while True:
        await asyncio.sleep(REPORT_EVERY_S)
        now = time.perf_counter()
        count, window = stats.requests, stats.window
        stats.window = []
        line = (f"[{now - started:5.0f} s] {count} requests, {(count - last_count) / (now - last_time):.1f}/s, "
                f"p50 {percentile(window, 50) or 0:.0f} ms, {sum(stats.errors.values())} errors")
        if ingest is not None and ingest.job_id:
            job = await job_state(http, ingest.job_id) or {}
            line += (f" | ingest {ingest.uploaded}/{len(ingest.images)} uploaded, "
                     f"{job.get('done', '?')}/{job.get('total', '?')} indexed")
        print(line, file=sys.stderr, flush=True)
        last_count, last_time = count, now


async def wait_for_job(http: httpx.AsyncClient, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await job_state(http, job_id)
        if job and job["state"] in FINAL_STATES:
            return job
        await asyncio.sleep(0.5)
    raise SystemExit(f"job {job_id} did not finish in {timeout:.0f} s: are the workers running?")


def refused(response: httpx.Response, what: str) -> str:
    hint = " (pass --api-key)" if response.status_code in (401, 403) else ""
    return f"{what} was refused: {response.status_code} {response.text[:300]}{hint}"


async def prepare(http: httpx.AsyncClient, args: argparse.Namespace, warm_up: bytes) -> None:
    """Check the API answers; index a first few images when it has none, so that searches find something;
    one search to warm the server up."""
    try:
        health = (await http.get("/health")).raise_for_status().json()
    except (httpx.HTTPError, ValueError) as exc:
        raise SystemExit(f"the API at {args.api} is not reachable ({type(exc).__name__}): is it running?") from None
    print(f"API {args.api}: backend {health.get('backend')}, {health.get('vectors')} vectors, "
          f"status {health.get('status')}", file=sys.stderr)
    if health.get("vectors") is None:
        print("warning: /health reports no vector count (degraded?): not seeding the index", file=sys.stderr)
    elif health["vectors"] == 0:
        seeds = [args.seed * STRIDE + SEEDING_OFFSET + i for i in range(SEED_IMAGES)]
        files = [("files", (f"seed-{i:03d}.jpg", data, "image/jpeg")) for i, data in enumerate(generate(seeds))]
        response = await http.post("/images", files=files, timeout=120)
        if not response.is_success:
            raise SystemExit(refused(response, "seeding the empty index"))
        job = await wait_for_job(http, response.json()["job_id"], timeout=600)
        print(f"seeded the empty index with {job['done']} images ({job['state']})", file=sys.stderr)
    response = await http.post("/search", files={"file": ("warm-up.jpg", warm_up, "image/jpeg")},
                               data={"top_k": str(TOP_K)})  # not measured; a missing key shows here
    if response.status_code in (401, 403):
        raise SystemExit(refused(response, "a first search"))


async def run(args: argparse.Namespace, queries: list[bytes], ingest: Ingest | None) -> tuple[Stats, float]:
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with (httpx.AsyncClient(base_url=args.api, headers=headers, timeout=args.timeout, limits=limits) as http,
                httpx.AsyncClient(base_url=args.api, headers=headers, timeout=120) as control):
        await prepare(control, args, queries[0])
        api = ApiClient(args.api, api_key=args.api_key, timeout=300)
        if ingest is not None:
            try:
                ingest.job_id = api.open_job(f"scripts/load_test.py --seed {args.seed}")
            except ServiceError as exc:
                raise SystemExit(f"opening the ingest job (POST /jobs) was refused: {exc}") from None
        stats, known, seen = Stats(), [], set()
        started = time.perf_counter()
        deadline = started + args.seconds
        background = [asyncio.create_task(report(control, stats, ingest, started))]
        if ingest is not None:
            background.append(asyncio.create_task(upload(api, ingest)))
        await asyncio.gather(*(
            client_loop(http, stats, queries, known, seen, random.Random(f"{args.seed}-{slot}"), deadline,
                        args.timeout)
            for slot in range(args.concurrency)
        ))
        elapsed = time.perf_counter() - started
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if ingest is not None and ingest.job_id:
            with contextlib.suppress(ServiceError):  # what was uploaded completes as usual
                ingest.job = api.seal_job(ingest.job_id).as_dict()
        api.close()
    return stats, elapsed


def ingest_summary(ingest: Ingest | None) -> dict[str, Any] | None:
    if ingest is None:
        return None
    job = ingest.job
    return {"job_id": ingest.job_id, "state": job.get("state"), "done": job.get("done"), "total": job.get("total"),
            "failed": job.get("failed"), "duplicates": job.get("duplicates"), "planned": len(ingest.images),
            "uploaded": ingest.uploaded,
            "upload_errors": dict(ingest.upload_errors)}


def summarise(args: argparse.Namespace, stats: Stats, elapsed: float, ingest: Ingest | None) -> dict[str, Any]:
    everything = [ms for values in stats.latencies.values() for ms in values]
    errors = sum(stats.errors.values())
    return {
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "requests": len(everything),
        "errors": errors,
        "errors_by_kind": dict(stats.errors_by_kind.most_common()),
        "rps": round(len(everything) / elapsed, 1),
        "p50_ms": percentile(everything, 50),
        "p99_ms": percentile(everything, 99),
        "by_endpoint": {
            name: {"requests": len(stats.latencies[name]), "errors": stats.errors.get(name, 0),
                   "p50_ms": percentile(stats.latencies[name], 50), "p99_ms": percentile(stats.latencies[name], 99)}
            for name in (IMAGE, TEXT, SIMILAR) if stats.latencies.get(name)
        },
        "ingest": ingest_summary(ingest),
        "seed": args.seed,
    }


def show(result: dict[str, Any], api: str, elapsed: float) -> str:
    def ms(value: float | None) -> str:
        return f"{value:9.1f}" if value is not None else f"{'-':>9}"

    lines = [f"\n{result['concurrency']} clients for {elapsed:.1f} s against {api}",
             f"{'endpoint':<26} {'requests':>9} {'errors':>7} {'p50 ms':>9} {'p99 ms':>9}"]
    for name, e in result["by_endpoint"].items():
        lines.append(f"{name:<26} {e['requests']:>9} {e['errors']:>7} {ms(e['p50_ms'])} {ms(e['p99_ms'])}")
    lines.append(f"{'all':<26} {result['requests']:>9} {result['errors']:>7} {ms(result['p50_ms'])} "
                 f"{ms(result['p99_ms'])}   {result['rps']} requests/s")
    if result["errors_by_kind"]:
        lines.append("errors: " + ", ".join(f"{kind} × {n}" for kind, n in result["errors_by_kind"].items()))
    ingest = result["ingest"]
    if ingest is not None:
        lines.append(f"ingest job {ingest['job_id']}: {ingest['state']}, {ingest['done']}/{ingest['total']} done, "
                     f"{ingest['failed']} failed, {ingest['duplicates']} duplicates; "
                     f"{ingest['uploaded']} of {ingest['planned']} uploaded"
                     + (f", upload errors {ingest['upload_errors']}" if ingest["upload_errors"] else ""))
        if ingest["duplicates"]:
            lines.append("  (duplicates were indexed already: another --seed uploads new images)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", default=DEFAULT_API, help=f"API base URL (default {DEFAULT_API}, or $PROXIMA_API)")
    parser.add_argument("--concurrency", "-c", type=int, default=50, help="concurrent client loops")
    parser.add_argument("--seconds", "-s", type=float, default=60, help="how long the load runs")
    parser.add_argument("--api-key", default="", help="sent as X-API-Key when the API requires one")
    parser.add_argument("--ingest-images", type=int, default=500,
                        help="new images uploaded while the load runs (0: no ingest)")
    parser.add_argument("--query-images", type=int, default=32, help="distinct query images for /search")
    parser.add_argument("--seed", type=int, default=None, help="seed of the images and the mix (default: a new one)")
    parser.add_argument("--timeout", type=float, default=30, help="per-request limit, seconds")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.seconds <= 0 or args.query_images < 1 or args.timeout <= 0:
        parser.error("--concurrency, --seconds, --query-images and --timeout must be positive")
    if not 0 <= args.ingest_images <= MAX_INGEST:
        parser.error(f"--ingest-images must be between 0 and {MAX_INGEST}")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    args.api = args.api.rstrip("/")

    base = args.seed * STRIDE
    print(f"seed {args.seed}: generating {args.query_images} query and {args.ingest_images} ingest images "
          f"of {SIZE[0]}x{SIZE[1]} ...", file=sys.stderr)
    images = generate([base + QUERY_OFFSET + i for i in range(args.query_images)]
                      + [base + i for i in range(args.ingest_images)])
    queries, ingest_images = images[:args.query_images], images[args.query_images:]
    ingest = Ingest(ingest_images) if args.ingest_images else None

    stats, elapsed = asyncio.run(run(args, queries, ingest))
    result = summarise(args, stats, elapsed, ingest)
    print(show(result, args.api, elapsed), file=sys.stderr)
    print(json.dumps(result))
    failed = result["errors"] or (ingest is not None and ingest.upload_errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
