"""Make the index match the image store: `python scripts/reconcile.py [--dry-run] [--delete-orphans] [--wait]`.

Run it after a crash (or any time: it is safe while the system runs). It finds stored images that have no
vector and queues them for embedding again (one job), and vectors whose image file is gone, which it
reports, or deletes with --delete-orphans. Reads the same settings as the rest of the stack (.env / the
environment). The last line on stdout is one JSON object with the counts:
{"stored", "indexed", "missing_vectors", "orphan_vectors", "requeued", "orphans_deleted", "job_id", ...}.
The same runs in a worker with `POST /admin/reconcile`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="only report; queue and delete nothing")
    parser.add_argument("--delete-orphans", action="store_true", help="delete vectors whose image file is gone")
    parser.add_argument("--wait", action="store_true", help="wait until the re-queued images are indexed")
    args = parser.parse_args(argv)

    import redis

    from shared.config import get_settings
    from shared.services import Proxima
    from shared.types import BackendUnavailable

    settings = get_settings()
    proxima = Proxima.from_settings(settings)
    try:
        waiting = proxima.queue.depth()
    except redis.RedisError as exc:
        sys.exit(f"cannot reach Redis at {settings.redis_url} ({exc}); is the stack running (`make up`)?")
    if waiting:
        print(f"note: {waiting} batches are still queued; images in them may be reported missing and queued "
              "again (harmless: they are embedded once more, not duplicated)", file=sys.stderr)
    bar = tqdm(desc="checking", unit=" images", file=sys.stderr)

    def progress(report) -> None:
        bar.n = report.stored + report.indexed
        bar.set_postfix(missing=report.missing_vectors, orphans=report.orphan_vectors, refresh=False)
        bar.refresh()

    try:
        report = proxima.reconcile(requeue=not args.dry_run, delete_orphans=args.delete_orphans and not args.dry_run,
                                   on_progress=progress)
    except BackendUnavailable as exc:
        sys.exit(f"the vector database is unreachable ({exc}); try again when it is back")
    bar.close()
    result = report.as_dict()
    if args.wait and report.job_id:
        with tqdm(total=report.requeued, desc="re-indexing", unit=" images", file=sys.stderr) as done_bar:
            while not (job := proxima.job(report.job_id)).finished:
                done_bar.n = job.done + job.failed
                done_bar.refresh()
                time.sleep(0.5)
        result["job"] = {"state": job.state.value, "done": job.done, "failed": job.failed,
                         "errors": [vars(e) for e in job.errors]}
    proxima.close()
    print(f"{report.stored} stored, {report.indexed} indexed: {report.missing_vectors} without a vector "
          f"({report.requeued} queued again), {report.orphan_vectors} vectors without a file "
          f"({report.orphans_deleted} deleted)", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
