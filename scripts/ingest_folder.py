"""Index every image in a folder: `python scripts/ingest_folder.py PATH [--recursive]`.

Local mode (default): the workers can read PATH (same machine, or the shared volume). Only paths travel
through Redis; workers copy each file into the image store as they embed it. Unchanged files from an
earlier run are recognised by path + size + mtime and skipped, so an interrupted run is finished by
running it again.

Remote mode (`--api URL`): the folder is not visible to the workers, so files are uploaded in batches to
the API; a local state file (`--state`) remembers what was sent.

Either way: images are recognised by content, not by extension; the queue is kept bounded; a progress
bar shows rate and ETA; the last line on stdout is one JSON object:
{"job_id", "state", "seen", "queued", "duplicates", "skipped", "failed", "elapsed_s", ...}.

The job can be paused, resumed and cancelled while this runs (`POST /jobs/{id}/pause`, `/resume`,
`/cancel`, or the page's Jobs view): paused, the walk waits; cancelled, it stops. After Ctrl-C, what was
queued is still indexed, and running the same command again indexes the rest (nothing twice).
Exit status: 0 done, 1 every image failed or the job was cancelled, 130 interrupted.
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

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.imaging import describe_non_image, sniff  # noqa: E402
from shared.ingest import FileRef, SqliteManifest, iter_files  # noqa: E402
from shared.jobs import JobCancelled  # noqa: E402
from shared.types import ClientCounts, Job, JobState, ServiceError, Upload  # noqa: E402

_SHOWN = (JobState.PAUSED, JobState.CANCELLED)  # states the progress bar names


class Progress:
    """Two bars: files walked, and images indexed out of those queued so far (with rate and ETA)."""

    def __init__(self, enabled: bool) -> None:
        self.walk = tqdm(desc="walked ", unit=" files", disable=not enabled, position=0)
        self.index = tqdm(desc="indexed", unit=" img", total=0, disable=not enabled, position=1)

    def show(self, *, seen: int, job: Job) -> None:
        self.walk.n = seen
        self.walk.refresh()
        self.index.total = max(job.total, 1)
        self.index.n = job.done + job.failed
        self.index.set_postfix(failed=job.failed, **({"state": job.state.value} if job.state in _SHOWN else {}),
                               refresh=False)
        self.index.refresh()

    def close(self) -> None:
        self.walk.close()
        self.index.close()


def run_local(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    import redis

    from shared.config import get_settings
    from shared.services import Proxima

    settings = get_settings()
    proxima = Proxima.from_settings(settings)
    try:
        try:
            proxima.redis.ping()
        except redis.RedisError as exc:
            sys.exit(f"cannot reach Redis at {settings.redis_url} ({exc}); is the stack running (`make up`)?")
        if not proxima.queue.workers_alive():
            print("warning: no worker answered; batches will wait in the queue until one starts", file=sys.stderr)
        folder = args.path.resolve()
        job_id = proxima.open_job(str(folder))
        stats = None
        try:
            stats = proxima.ingest_folder(folder, job_id, recursive=args.recursive, batch_size=args.batch_size,
                                          on_progress=lambda s: progress.show(seen=s.seen, job=proxima.job(job_id)),
                                          collection=args.collection)
            job = wait(lambda: proxima.job(job_id), args, progress, seen=stats.seen)
            interrupted = False
        except JobCancelled:  # from the API or the page, while the walk was going on
            job, interrupted = proxima.job(job_id), False
        except KeyboardInterrupt:
            job, interrupted = proxima.job(job_id), True
        return summary(job, queued=stats.queued if stats else job.total - job.duplicates, interrupted=interrupted)
    finally:
        proxima.close()


def run_remote(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    from shared.client import ApiClient

    api = ApiClient(args.api, api_key=args.api_key, timeout=300)
    try:
        api.health()
    except ServiceError as exc:
        sys.exit(f"the API at {args.api} does not answer ({exc}); check --api")
    folder = args.path.resolve()
    state_path = args.state or Path.home() / ".cache" / "proxima" / f"manifest-{_host(args.api)}.sqlite"
    manifest = SqliteManifest(state_path)
    seen = queued = uploaded = dup_local = 0
    reasons: Counter = Counter()
    batch: list[FileRef] = []
    batch_bytes = 0
    limit = min(args.max_request_mb, 90) * 2**20
    interrupted = False

    def upload() -> None:
        nonlocal queued, uploaded, batch_bytes
        while (api.health().get("queue_depth") or 0) > args.max_queued or paused(api.job(job_id)):
            time.sleep(0.5)
        _, accepted = api.accept([Upload(Path(f.path).name, Path(f.path).read_bytes()) for f in batch], job_id,
                                 collection=args.collection)
        manifest.record([(f, a.id) for f, a in zip(batch, accepted, strict=True) if a.id is not None])
        queued += sum(a.status == "queued" for a in accepted)
        uploaded += len(batch)
        batch.clear()
        batch_bytes = 0

    try:
        job_id = api.open_job(f"{folder} (uploaded)")
        try:
            for ref in iter_files(folder, recursive=args.recursive, on_skip=lambda r: reasons.update([r])):
                seen += 1
                if ref.size == 0:
                    reasons["empty file (0 bytes)"] += 1
                    continue
                # With --collection, files uploaded before are sent again: the server adds them to the
                # collection (without embedding them again).
                if not args.collection and manifest.lookup([ref])[0]:
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
                    progress.show(seen=seen, job=api.job(job_id))
            if batch:
                upload()
        except KeyboardInterrupt:
            interrupted = True
        except JobCancelled:
            pass
        # What only this side knows: files walked but not uploaded, skipped, or indexed by an earlier run.
        api.seal_job(job_id, ClientCounts(seen=seen - uploaded,
                                          skipped=sum(reasons.values()), duplicates=dup_local,
                                          skipped_reasons=dict(reasons)))
        job = api.job(job_id) if interrupted else wait(lambda: api.job(job_id), args, progress, seen=seen)
    except ServiceError as exc:
        sys.exit(f"the API refused: {exc}")
    finally:
        manifest.close()
        api.close()
    return summary(job, queued=queued, interrupted=interrupted)


def paused(job: Job) -> bool:
    """Whether to hold back the next upload: the job is paused. JobCancelled once it is cancelled."""
    if job.state is JobState.CANCELLED:
        raise JobCancelled(f"job {job.job_id} was cancelled")
    return job.state is JobState.PAUSED


def _host(api: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(api).hostname or "api"


def wait(get_job, args: argparse.Namespace, progress: Progress, *, seen: int) -> Job:
    job = get_job()
    while not args.no_wait and not job.finished:
        progress.show(seen=seen, job=job)
        time.sleep(0.5)
        job = get_job()
    progress.show(seen=seen, job=job)
    return job


def summary(job: Job, *, queued: int, interrupted: bool) -> dict[str, Any]:
    return {
        "job_id": job.job_id, "state": job.state.value, "seen": job.seen, "queued": queued,
        "duplicates": job.duplicates, "skipped": job.skipped, "failed": job.failed, "done": job.done,
        "skipped_reasons": dict(job.skipped_reasons), "errors": [vars(e) for e in job.errors[:20]],
        **({"interrupted": True} if interrupted else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="folder to index")
    parser.add_argument("--recursive", "-r", action="store_true", help="include sub-folders")
    parser.add_argument("--collection", help="put the images into this collection (created if new)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: BATCH_SIZE)")
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
    if result.get("interrupted"):
        print(f"interrupted: what was queued is still being indexed (job {result['job_id']}). Run the same "
              "command again to index the rest: files already indexed are skipped.", file=sys.stderr)
    elif result["state"] == "cancelled":
        print(f"job {result['job_id']} was cancelled: {result['done']} images indexed, the rest dropped. Run the "
              "same command again to index the rest.", file=sys.stderr)
    print(json.dumps(result))
    if result.get("interrupted"):
        return 130
    return 0 if result["state"] not in ("failed", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(main())
