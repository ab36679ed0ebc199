"""Change the model without stopping search: re-embed every stored image into the new model's own index,
then switch to it.

    python scripts/reembed.py --name ViT-L-14 --pretrained laion2b_s32b_b82k [--activate-when-done] [--wait]
    python scripts/reembed.py --list
    python scripts/reembed.py --check SLUG        # is its index complete (every stored image, once)?
    python scripts/reembed.py --activate SLUG     # switch every API process and worker to it (seconds)
    python scripts/reembed.py --retire SLUG       # delete the index of a model that is not active

The walk over the image store runs here (progress bar; Ctrl-C and run it again: only images the new index
lacks are queued); the workers embed the batches, loading the new model beside the active one. Searches keep
using the active model until the switch. Reads the same settings as the stack (.env / the environment); the
last line on stdout is one JSON object. The same is `POST /admin/models` and its siblings in the API.
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
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--name", help="the new model (an open_clip architecture, or efficientnet-lite0/1/2)")
    action.add_argument("--list", action="store_true", help="the model identities and their indexes")
    action.add_argument("--check", metavar="SLUG", help="compare a model's index with the image store")
    action.add_argument("--activate", metavar="SLUG", help="serve searches with this model's index")
    action.add_argument("--retire", metavar="SLUG", help="delete this (not active) model's index")
    parser.add_argument("--pretrained", help="with --name: a pretrained tag or a checkpoint file")
    parser.add_argument("--extractor", default="open_clip", choices=["open_clip", "efficientnet_lite"])
    parser.add_argument("--int8", action="store_true", help="with --name: quantized weights (another identity)")
    parser.add_argument("--activate-when-done", action="store_true",
                        help="with --name: the workers switch to it as soon as its index is complete")
    parser.add_argument("--wait", action="store_true", help="with --name: wait until every batch is embedded")
    parser.add_argument("--force", action="store_true", help="with --activate: skip the completeness check")
    args = parser.parse_args(argv)
    if args.name and not args.pretrained:
        parser.error("--name needs --pretrained")

    import redis

    from shared.config import get_settings
    from shared.embedder import identify, settings_for
    from shared.services import Proxima
    from shared.types import BackendUnavailable, ModelInfo, ProximaError

    settings = get_settings()
    proxima = Proxima.from_settings(settings)
    try:
        if args.list:
            result: dict = {"models": proxima.model_indexes()}
            for m in result["models"]:
                job = m["job"] or {}
                progress = f" re-embed {job.get('done', 0)}/{job.get('total', 0)} {job.get('state', '')}" if job else ""
                print(f"{m['state']:9} {m['slug']:32} {m['model']} dim {m['dim']}: {m['vectors']} vectors{progress}",
                      file=sys.stderr)
        elif args.check:
            report = proxima.completeness(args.check)
            result = report.as_dict()
            print(f"{report.indexed} vectors for {report.stored} stored images, {report.missing} missing: "
                  f"{'complete' if report.complete else 'not complete'}", file=sys.stderr)
        elif args.activate:
            entry = proxima.activate(args.activate, force=args.force)
            result = {"slug": entry.slug, "state": entry.state, "model": entry.model.label()}
            print(f"{entry.model.label()} is active: API processes and workers follow within seconds", file=sys.stderr)
        elif args.retire:
            entry = proxima.retire(args.retire)
            result = {"slug": entry.slug, "state": "deleted", "model": entry.model.label()}
        else:
            result = reembed(proxima, identify(settings_for(settings, ModelInfo(
                args.name, args.pretrained, 0, precision="int8" if args.int8 else "", extractor=args.extractor))),
                activate_when_done=args.activate_when_done, wait=args.wait)
    except redis.RedisError as exc:
        sys.exit(f"cannot reach Redis at {settings.redis_url} ({exc}); is the stack running (`make up`)?")
    except BackendUnavailable as exc:
        sys.exit(f"the vector database is unreachable ({exc}); try again when it is back")
    except ProximaError as exc:
        sys.exit(f"error: {exc}")
    finally:
        proxima.close()
    print(json.dumps(result))
    return 0


def reembed(proxima, model, *, activate_when_done: bool, wait: bool) -> dict:
    job_id, entry = proxima.begin_reembed(model, activate_when_done=activate_when_done)
    print(f"re-embedding into {entry.index} ({model.label()}, dim {model.dim}); job {job_id}", file=sys.stderr)
    with tqdm(desc="queueing", unit=" images", file=sys.stderr) as bar:
        def progress(stats) -> None:
            bar.n = stats.seen
            bar.set_postfix(queued=stats.queued, already=stats.present, refresh=False)
            bar.refresh()

        try:
            stats = proxima.reembed_walk(entry, job_id, on_progress=progress)
        except KeyboardInterrupt:
            sys.exit(f"\nstopped; run the same command again to resume (only images {entry.slug} lacks are queued)")
    result = {"job_id": job_id, "slug": entry.slug, "model": model.label(), "dim": model.dim, "index": entry.index,
              "seen": stats.seen, "queued": stats.queued, "already": stats.present}
    if wait:
        with tqdm(total=stats.seen, desc="embedding", unit=" images", file=sys.stderr) as bar:
            while not (job := proxima.job(job_id)).finished:
                bar.n = job.done + job.failed
                bar.set_postfix(rate=job.rate_per_s, eta_s=job.eta_s, refresh=False)
                bar.refresh()
                time.sleep(0.5)
        result["job"] = job.as_dict()
        result["state"] = proxima.catalog.get(entry.slug).state
    print(f"next: `python scripts/reembed.py --check {entry.slug}`, then `--activate {entry.slug}`"
          + (" (or wait: it activates itself when complete)" if activate_when_done else ""), file=sys.stderr)
    return result


if __name__ == "__main__":
    sys.exit(main())
