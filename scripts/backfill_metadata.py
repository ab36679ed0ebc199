"""Give images indexed before Proxima read EXIF their capture time, camera, GPS and orientation:
`python scripts/backfill_metadata.py`.

Reads each stored file's header (no re-embedding: the stored vector is written back with the metadata;
collections, tags and paths are kept). Safe while the system runs, and to run again (records that have
metadata are skipped). Reads the same settings as the rest of the stack. The last line on stdout is JSON:
{"seen", "without", "updated", "missing_files", "elapsed_s"}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from shared.config import get_settings
    from shared.services import Proxima
    from shared.types import BackendError

    proxima = Proxima.from_settings(get_settings())
    started = time.monotonic()
    try:
        total = proxima.backend.count()
        with tqdm(total=total, unit="img", disable=args.quiet or not sys.stderr.isatty()) as bar:
            def progress(report) -> None:
                bar.update(report.seen - bar.n)
                bar.set_postfix(updated=report.updated)

            report = proxima.backfill_metadata(progress)
    except BackendError as exc:
        sys.exit(f"the vector database refused: {exc}")
    finally:
        proxima.close()
    print(json.dumps({**dataclasses.asdict(report), "elapsed_s": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
