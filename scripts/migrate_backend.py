"""Copy every vector and its metadata from one backend to another, without re-embedding.

    python scripts/migrate_backend.py --from pgvector --to milvus

Both backends are configured from the same settings (DATABASE_URL, MILVUS_URI, MANTICORE_URL, ...).
Rows already in the destination are skipped, so an interrupted run can simply be started again. At the end
the counts are compared and a sample of searches is run on both sides; the exit code is non-zero if they
disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.backends import VectorBackend, make_backend  # noqa: E402
from shared.catalog import ModelCatalog  # noqa: E402
from shared.config import get_settings  # noqa: E402
from shared.types import ModelInfo  # noqa: E402

BACKENDS = ("pgvector", "milvus", "manticore")


def open_backend(name: str) -> VectorBackend:
    return make_backend(get_settings().model_copy(update={"vector_backend": name}))


def active_index(database: VectorBackend) -> tuple[VectorBackend, ModelInfo | None]:
    """The index of the active model (an index an earlier release made is adopted first), and its identity;
    (the database, None) when nothing was ever indexed there."""
    catalog = ModelCatalog(database)
    active = catalog.active(fresh=True)
    if active is None:
        legacy = database.stored_model()
        if legacy is None:
            return database, None
        active = catalog.bootstrap(legacy)
    return catalog.view(active), active.model


def target_index(database: VectorBackend, model: ModelInfo) -> VectorBackend:
    """The index of `model` in the target database, made active there; SystemExit if another model is."""
    catalog = ModelCatalog(database)
    active = catalog.bootstrap(model)
    if active.slug != model.slug:
        sys.exit(f"the target already serves model {active.model.label()}, not {model.label()}: migrate into an "
                 "empty database, or re-embed there")
    view = catalog.view(active)
    view.ensure_schema(model)
    return view


def copy_all(source: VectorBackend, dest: VectorBackend, *, batch_size: int, progress: tqdm) -> dict[str, int]:
    copied = skipped = 0
    for records, vectors in source.scan(batch_size):
        present = dest.get([r.id for r in records])
        todo = [i for i, r in enumerate(records) if r.id not in present]
        if todo:
            dest.upsert([records[i] for i in todo], vectors[todo])
        copied += len(todo)
        skipped += len(records) - len(todo)
        progress.update(len(records))
    return {"copied": copied, "already_there": skipped}


def verify(source: VectorBackend, dest: VectorBackend, *, samples: int, k: int = 10) -> dict[str, float]:
    """Search both sides with vectors taken from the source; report the mean top-k overlap."""
    vectors = []
    for _, batch in source.scan(max(samples, 100)):
        vectors = batch[:samples]
        break
    overlaps = []
    for vector in vectors:
        a = {h.id for h in source.search(vector, k)}
        b = {h.id for h in dest.search(vector, k)}
        overlaps.append(len(a & b) / max(1, len(a)))
    return {"samples": len(overlaps), "mean_overlap_at_10": float(np.mean(overlaps)) if overlaps else 1.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, choices=BACKENDS)
    parser.add_argument("--to", dest="dest", required=True, choices=BACKENDS)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--verify-samples", type=int, default=50)
    parser.add_argument("--min-overlap", type=float, default=0.9,
                        help="fail when the sampled top-10 results agree less than this (ANN indexes differ a bit)")
    args = parser.parse_args(argv)
    if args.source == args.dest:
        parser.error("--from and --to name the same backend")

    started = time.monotonic()
    source_db, dest_db = open_backend(args.source), open_backend(args.dest)
    source, model = active_index(source_db)
    if model is None:
        sys.exit(f"nothing to migrate: {args.source} holds no index")
    dest = target_index(dest_db, model)
    total = source.count()
    with tqdm(total=total, unit="vec", desc=f"{args.source} → {args.dest}") as progress:
        stats = copy_all(source, dest, batch_size=args.batch_size, progress=progress)
    counts = {"source_count": total, "dest_count": dest.count()}
    check = verify(source, dest, samples=args.verify_samples)
    ok = counts["dest_count"] >= counts["source_count"] and check["mean_overlap_at_10"] >= args.min_overlap
    print(json.dumps({**stats, **counts, **check, "ok": ok, "elapsed_s": round(time.monotonic() - started, 1)}))
    source_db.close()
    dest_db.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
