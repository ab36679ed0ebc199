"""Index every image in a folder: `python scripts/ingest_folder.py PATH [--recursive]`.

Local mode (default): the workers can read PATH (same machine, or the shared volume). Only paths travel
through Redis; workers copy each file into the image store as they embed it. Unchanged files from an
earlier run are recognised by path + size + mtime and skipped, so an interrupted run is finished by
running it again.

Remote mode (`--api URL`): the folder is not visible to the workers, so files are uploaded in batches to
the API; a local state file (`--state`) remembers what was sent.

Either way: images are recognised by content, not by extension; the queue is kept bounded; a progress
bar shows rate and ETA; the last line on stdout is one JSON object:
{"job_id", "seen", "queued", "duplicates", "skipped", "failed", "elapsed_s", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.imaging import describe_non_image, sniff  # noqa: E402
from shared.ingest import FileRef, SqliteManifest, iter_files  # noqa: E402

FINAL = ("completed", "completed_with_errors", "failed")


class Progress:
    """Two bars: files walked, and images indexed out of those queued so far (with rate and ETA)."""

    def __init__(self, enabled: bool) -> None:
        self.walk = tqdm(desc="walked ", unit=" files", disable=not enabled, position=0)
        self.index = tqdm(desc="indexed", unit=" img", total=0, disable=not enabled, position=1)

    def show(self, *, seen: int, job: dict[str, Any]) -> None:
        self.walk.n = seen
        self.walk.refresh()
        self.index.total = max(job["total"], 1)
        self.index.n = job["done"] + job["failed"]
        self.index.set_postfix(failed=job["failed"], refresh=False)
        self.index.refresh()

    def close(self) -> None:
        self.walk.close()
        self.index.close()


def run_local(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    import redis

    from shared.backends import make_backend
    from shared.config import get_settings
    from shared.ingest import RedisManifest, walk_folder
    from shared.jobs import JobStore
    from workers.celery_app import INGEST_FILES, QUEUE, make_celery, send_batch

    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        sys.exit(f"cannot reach Redis at {settings.redis_url} ({exc}); is the stack running (`make up`)?")
    jobs = JobStore(client, ttl_s=settings.job_ttl_days * 86400)
    celery = make_celery(settings)
    if not celery.control.ping(timeout=2.0):
        print("warning: no worker answered; batches will wait in the queue until one starts", file=sys.stderr)
    folder = args.path.resolve()
    job_id = jobs.create(kind="folder", sealed=False, path=str(folder))

    def show(stats) -> None:
        progress.show(seen=stats.seen, job=jobs.get(job_id))

    stats = None
    try:
        stats = walk_folder(
            folder, job_id, recursive=args.recursive, batch_size=args.batch_size or settings.effective_batch_size,
            jobs=jobs, backend=make_backend(settings), manifest=RedisManifest(client),
            enqueue=lambda j, key, items: send_batch(celery, INGEST_FILES, j, key, items),
            queue_depth=lambda: int(client.llen(QUEUE)), max_queued=settings.ingest_max_queued,
            on_progress=show,
        )
        job = wait(lambda: jobs.get(job_id), args, progress, seen=stats.seen)
    except KeyboardInterrupt:
        job = jobs.get(job_id)
        job["interrupted"] = True
    return summary(job, queued=stats.queued if stats else job["total"] - job["duplicates"])


def run_remote(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    api = httpx.Client(base_url=args.api.rstrip("/"), headers=headers, timeout=httpx.Timeout(300, connect=10))
    try:
        api.get("/health").raise_for_status()
    except httpx.HTTPError as exc:
        sys.exit(f"the API at {args.api} does not answer ({exc}); check --api")
    folder = args.path.resolve()
    state_path = args.state or Path.home() / ".cache" / "proxima" / f"manifest-{httpx.URL(args.api).host}.sqlite"
    manifest = SqliteManifest(state_path)
    job_id = _ok(api.post("/jobs", json={"label": f"{folder} (uploaded)"})).json()["job_id"]
    seen = queued = dup_local = 0
    reasons: Counter = Counter()
    batch: list[FileRef] = []
    batch_bytes = 0
    limit = min(args.max_request_mb, 90) * 2**20

    def upload() -> None:
        nonlocal queued, batch_bytes
        while (api.get("/health").json().get("queue_depth") or 0) > args.max_queued:
            time.sleep(0.5)
        files = [("files", (Path(f.path).name, Path(f.path).read_bytes())) for f in batch]
        body = _ok(api.post("/images", files=files, data={"job_id": job_id})).json()
        sent = [(f, img["id"]) for f, img in zip(batch, body["images"], strict=True) if img["status"] != "rejected"]
        manifest.record(sent)
        queued += sum(img["status"] == "queued" for img in body["images"])
        batch.clear()
        batch_bytes = 0

    try:
        for ref in iter_files(folder, recursive=args.recursive, on_skip=lambda r: reasons.update([r])):
            seen += 1
            if ref.size == 0:
                reasons["empty file (0 bytes)"] += 1
                continue
            if manifest.lookup([ref])[0]:
                dup_local += 1
                continue
            with open(ref.path, "rb") as fh:
                head = fh.read(32)
            if sniff(head) is None:
                reasons["not an image: " + describe_non_image(head)] += 1
                continue
            if batch and batch_bytes + ref.size > limit:
                upload()
            batch.append(ref)
            batch_bytes += ref.size
            if len(batch) >= args.batch_size:
                upload()
            if seen % 256 == 0:
                progress.show(seen=seen, job=_ok(api.get(f"/jobs/{job_id}")).json())
        if batch:
            upload()
        _ok(api.post(f"/jobs/{job_id}/seal"))
        job = wait(lambda: _ok(api.get(f"/jobs/{job_id}")).json(), args, progress, seen=seen)
    except KeyboardInterrupt:
        api.post(f"/jobs/{job_id}/seal")
        job = _ok(api.get(f"/jobs/{job_id}")).json()
        job["interrupted"] = True
    finally:
        manifest.close()
    job.update(seen=seen, skipped=sum(reasons.values()), skipped_reasons=dict(reasons))
    job["duplicates"] += dup_local
    return summary(job, queued=queued)


def _ok(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        sys.exit(f"the API refused: {response.status_code} {response.text[:500]}")
    return response


def wait(get_job, args: argparse.Namespace, progress: Progress, *, seen: int) -> dict[str, Any]:
    job = get_job()
    while not args.no_wait and job["state"] not in FINAL:
        progress.show(seen=seen, job=job)
        time.sleep(0.5)
        job = get_job()
    progress.show(seen=seen, job=job)
    return job


def summary(job: dict[str, Any], *, queued: int) -> dict[str, Any]:
    return {
        "job_id": job["job_id"], "state": job["state"], "seen": job["seen"], "queued": queued,
        "duplicates": job["duplicates"], "skipped": job["skipped"], "failed": job["failed"],
        "done": job["done"], "skipped_reasons": job.get("skipped_reasons", {}),
        "errors": job["errors"][:20], **({"interrupted": True} if job.get("interrupted") else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="folder to index")
    parser.add_argument("--recursive", "-r", action="store_true", help="include sub-folders")
    parser.add_argument("--batch-size", type=int, default=0, help="images per batch (default: BATCH_SIZE)")
    parser.add_argument("--api", help="upload to this API instead (the workers cannot read PATH)")
    parser.add_argument("--api-key", default=os.environ.get("PROXIMA_API_KEY", ""),
                        help="--api mode: sent as X-API-Key (default $PROXIMA_API_KEY)")
    parser.add_argument("--state", type=Path, help="--api mode: file remembering what was uploaded")
    parser.add_argument("--max-queued", type=int, default=64, help="--api mode: queue depth to wait below")
    parser.add_argument("--max-request-mb", type=int, default=90, help="--api mode: largest upload request")
    parser.add_argument("--no-wait", action="store_true", help="return once everything is queued")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        parser.error(f"{args.path} is not a folder")
    if args.api and not args.batch_size:
        args.batch_size = 64

    started = time.monotonic()
    progress = Progress(enabled=not args.quiet and sys.stderr.isatty())
    try:
        result = run_remote(args, progress) if args.api else run_local(args, progress)
    finally:
        progress.close()
    result["elapsed_s"] = round(time.monotonic() - started, 2)
    for reason, count in sorted(result["skipped_reasons"].items(), key=lambda kv: -kv[1]):
        print(f"skipped {count}: {reason}", file=sys.stderr)
    for err in result["errors"]:
        print(f"failed: {err['filename']}: {err['message']}", file=sys.stderr)
    print(json.dumps(result))
    if result.get("interrupted"):
        return 130
    return 0 if result["state"] != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
