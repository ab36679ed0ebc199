"""Memory and speed of the folder walk: Python's peak allocations must not grow with the folder size.

    python scripts/bench_walk.py --files 200000

Creates FILES tiny JPEG-headed files (1,000 per folder) in a temporary directory, then runs the real
`walk_folder` (manifest lookups, sniffing, job accounting in a private Redis; batches are dropped instead
of queued) over a tenth of them and over all of them. The last line is JSON:
{"files": [small, all], "peak_mib": [small, all], "files_per_s": [small, all]}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.devservices import start_redis, stop  # noqa: E402
from shared.ingest import walk_folder  # noqa: E402
from shared.jobs import JobStore  # noqa: E402

JPEG_HEAD = b"\xff\xd8\xff\xe0" + bytes(36)


class EmptyManifest:
    def lookup(self, files):
        return [None] * len(files)


def make_tree(root: Path, files: int) -> None:
    for d in range(files // 1000):
        folder = root / f"d{d:05d}"
        folder.mkdir(parents=True)
        for i in range(1000):
            (folder / f"{i}.jpg").write_bytes(JPEG_HEAD)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200_000)
    args = parser.parse_args()
    import redis

    result: dict[str, list] = {"files": [], "peak_mib": [], "files_per_s": []}
    with tempfile.TemporaryDirectory(prefix="proxima-walk-") as tmp:
        proc, url = start_redis(Path(tmp) / "redis")
        try:
            jobs = JobStore(redis.Redis.from_url(url))
            for count in (args.files // 10, args.files):
                root = Path(tmp) / f"tree{count}"
                make_tree(root, count)
                job_id = jobs.create(kind="folder", sealed=False)
                tracemalloc.start()
                started = time.perf_counter()
                stats = walk_folder(root, job_id, recursive=True, batch_size=256, jobs=jobs, backend=None,
                                    manifest=EmptyManifest(), enqueue=lambda *a: None, queue_depth=lambda: 0,
                                    max_queued=64)
                elapsed = time.perf_counter() - started
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                result["files"].append(stats.seen)
                result["peak_mib"].append(round(peak / 2**20, 2))
                result["files_per_s"].append(round(stats.seen / elapsed))
        finally:
            stop(proc)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
