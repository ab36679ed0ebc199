"""Ingest throughput through the real system, against the naive path and the model alone.

    python scripts/bench_ingest.py --images 300 --size 640x480 --model ViT-B-32 --compare-naive

Generates N photo-like JPEGs, starts a private Redis, PostgreSQL (or Milvus Lite) and one Celery worker
(random weights: same compute as trained ones), and measures:

- pipeline: a folder ingest (walk → Redis → worker: parallel decode, one model call and one bulk upsert
  per batch), from the start of the walk until the job is complete;
- naive (`--compare-naive`): the design document's path on the same files, model and database: one HTTP
  request, one model call and one committed INSERT per image (scripts/bench_naive.py);
- model only: batched encode of pre-decoded uint8 tensors, the ceiling for the pipeline.

`--device` and `--decode` set DEVICE and DECODE for the worker (e.g. `--device cuda --decode gpu` on a GPU
machine); `--stage-times` prints the seconds per batch spent in read, decode, transfer, encode and upsert,
so the bottleneck shows at a glance. `--runtime torch|openvino|onnxruntime` (and `--precision`) choose what
runs the model (EMBED_RUNTIME, EMBED_PRECISION); `--compare-runtimes` measures torch, OpenVINO (its
default precision, then f32) and ONNX Runtime side by side in one run, each on a fresh database, and
prints each one's lowest cosine to torch's vectors on real photos (scripts/photosets.py) and texts:

    python scripts/bench_ingest.py --images 300 --size 640x480 --model ViT-B-32 --compare-runtimes

`--reembed` compares re-embedding with ingest on the same batch path, in one run and on the same images:
the ingest batches (`shared.ingest.ingest_files`: read, hash and store, decode, encode, upsert) store and
index the images with model A (the architecture's `random` weights), and the re-embed batches
(`shared.reembed.reembed_batch`: the stored files decoded again, encoded with model B, upserted into B's own
index keeping A's metadata) index the same stored images with model B: the same architecture (same compute)
with other seeded weights written to a checkpoint file, so another identity with its own index (made as
`scripts/reembed.py` makes it). Both run in this process with the worker's parts (one Decoder on a pool of
DECODE_THREADS, WORKER_THREADS batches at once, a RedisManifest, the catalogue's index views) on embedded
PostgreSQL, and alternate every `--interleave` batches (ingest 4 batches, re-embed what they stored, ...;
0: ingest all, then re-embed all) so that both see the same load on a shared machine; each phase is timed
on its own, and the walks that make the batches are not (the re-embed's store walk at the end must find
nothing left). `--rounds R` repeats this R times, each round on a fresh image store and database (the
models loaded once), every other round with the two models' roles swapped. Stage seconds per batch add, for
ingest, `sync` (the store's one `os.sync()` per batch, outside the other stages) and, for both, `wall` (a
batch's own wall time in its task thread) and `cpu` (this process's CPU seconds, all threads):

    python scripts/bench_ingest.py --reembed --images 640 --size 640x480 --model ViT-B-32 --rounds 2

The last line is JSON: {"images", "model", "pipeline_img_s", "naive_img_s", "ratio", "model_only_img_s",
"efficiency", ...} with efficiency = pipeline / model-only; with --compare-runtimes, {"runs": [one such
object per runtime, with "pipeline_vs_torch" and "model_only_vs_torch"], "min_cosine_to_torch"}; with
--reembed, {"ingest_img_s", "reembed_img_s", "ratio" (re-embed / ingest, over all rounds), "within_10pct",
"reembed_at_least_90pct", "rounds": [per round: both rates, its ratio, and each phase's seconds per batch per
stage], ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.devservices import (  # noqa: E402
    Postgres,
    Worker,
    child_env,
    create_database,
    free_port,
    start_milvus_lite,
    start_redis,
    stop,
    wait_for,
    write_tiny_model,
)
from scripts.synthetic import encode, photo, variant  # noqa: E402


def _write_jpegs(args: tuple[list[Path], int, tuple[int, int], bool]) -> None:
    """JPEGs (quality 88) of photo(seed) each, or with `shared_background`, variants of the first one's."""
    paths, seed, size, shared_background = args
    base = photo(seed, size) if shared_background else None
    for i, path in enumerate(paths):
        img = variant(base, seed + i) if base is not None else photo(seed + i, size)
        path.write_bytes(encode(img, "JPEG", quality=88))


def make_images(folder: Path, n: int, size: tuple[int, int], *, fast: bool = False) -> list[Path]:
    """`n` distinct photo-like JPEGs. `fast`: each block of 64 shares one background and gets shapes of its
    own (same size, quality and about the same bytes as photo()'s, ~10-70x cheaper to make)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i:07d}.jpg" for i in range(n)]
    block = 64 if fast else 16
    jobs = [(paths[s:s + block], 10_000 + s, size, fast) for s in range(0, n, block)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_jpegs, jobs))
    return paths


def model_only(settings, paths: list[Path], batch_size: int) -> tuple[float, str]:
    """Images/s of the model alone on pre-decoded uint8 input, batched like the worker; and its precision."""
    from shared.embedder import load_embedder
    from shared.imaging import load_image, to_model_input

    embedder = load_embedder(settings)
    size = embedder.image_size
    pixels = [to_model_input(load_image(p, min_side=size).image, size) for p in paths]
    embedder.encode_images(pixels[:batch_size])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        embedder.encode_images(pixels[i:i + batch_size])
    return len(pixels) / (time.perf_counter() - started), embedder.precision


def pipeline(settings, folder: Path, paths: list[Path]) -> tuple[float, dict]:
    """Images/s of a folder ingest through Redis and the running worker, until the job completes; and the job.
    `folder` gets hard links to `paths` (each run walks a folder of its own)."""
    from shared.services import Proxima

    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if not (folder / p.name).exists():
            os.link(p, folder / p.name)
    n = len(paths)

    proxima = Proxima.from_settings(settings)
    try:
        job_id = proxima.open_job(str(folder))
        started = time.perf_counter()
        proxima.ingest_folder(folder, job_id, recursive=False)
        wait_for(lambda: proxima.job(job_id).finished, timeout=24 * 3600, what="the ingest job", interval=0.05)
        elapsed = time.perf_counter() - started
        job = proxima.job(job_id)
    finally:
        proxima.close()
    if job.done != n or job.failed:
        raise SystemExit(f"pipeline run incomplete: {job}")
    return n / elapsed, job.as_dict()


def stage_table(job: dict) -> dict[str, float]:
    """Seconds per batch in each stage, from the job record (read and decode summed over decode threads)."""
    stages = dict(job.get("stage_s") or {})
    batches = max(1, stages.pop("batches", 1))
    per_batch = {k: round(v / batches, 4) for k, v in stages.items()}
    print(f"  stage seconds per batch ({batches} batches; read and decode summed over decode threads):",
          file=sys.stderr)
    for stage, seconds in per_batch.items():
        print(f"    {stage:<9} {seconds:8.4f}", file=sys.stderr)
    return per_batch


def naive(env: dict[str, str], paths: list[Path], work: Path) -> float:
    """Images/s of one request, one model call and one committed INSERT per image."""
    port = free_port()
    log = (work / "naive.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "scripts.bench_naive:app", "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env=child_env(env, NAIVE_DATABASE_URL=env["DATABASE_URL"]), stdout=log, stderr=log,
    )
    try:
        url = f"http://127.0.0.1:{port}/index_image"
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/docs").status_code == 200, timeout=300,
                 what="naive server")
        with httpx.Client(timeout=120) as http:
            http.post(url, files={"file": ("warmup", paths[0].read_bytes())}).raise_for_status()
            started = time.perf_counter()
            for p in paths:
                http.post(url, files={"file": (p.name, p.read_bytes())}).raise_for_status()
            return len(paths) / (time.perf_counter() - started)
    finally:
        stop(server)
        log.close()


RUNTIME_CONFIGS = [("torch", "auto"), ("openvino", "auto"), ("openvino", "f32"), ("onnxruntime", "auto")]
TEXTS = ["a photo of a flower", "a ladybird on a green leaf", "sand dunes under a blue sky",
         "storm clouds over the sea", "rain drops on a window", "a yellow flower in a garden"]


def measure(args, work: Path, paths: list[Path], model_name: str, runtime: str, precision: str,
            tag: str) -> dict:
    """Model-only and pipeline img/s for one runtime, on fresh Redis and database (no duplicates), exports
    shared between runs through one models folder."""
    data = work / f"data-{tag}"
    data.mkdir(parents=True, exist_ok=True)
    (work / "models").mkdir(exist_ok=True)
    if not (data / "models").exists():
        (data / "models").symlink_to(work / "models")
    redis_proc, redis_url = start_redis(work / f"redis-{tag}")
    services = [redis_proc]
    env = {"DATA_DIR": str(data), "REDIS_URL": redis_url, "VECTOR_BACKEND": args.backend,
           "MODEL_NAME": model_name, "MODEL_PRETRAINED": "random", "DEVICE": args.device,
           "DECODE": args.decode, "BATCH_SIZE": str(args.batch_size), "EMBED_RUNTIME": runtime,
           "EMBED_PRECISION": precision}
    pg = None
    if args.backend == "pgvector":
        pg = Postgres(work / f"pg-{tag}")
        env["DATABASE_URL"] = pg.url
    else:
        milvus_proc, env["MILVUS_URI"] = start_milvus_lite(work / f"milvus-{tag}")
        services.append(milvus_proc)
    from shared.config import Settings

    settings = Settings.explicit(**{k.lower(): v for k, v in env.items()})
    batch_size = settings.effective_batch_size
    result: dict = {"runtime": runtime, "precision": precision, "batch_size": batch_size}
    try:
        print(f"[{tag}] model only ...", file=sys.stderr)
        result["model_only_img_s"], result["precision"] = model_only(settings, paths, batch_size)
        print(f"  {result['model_only_img_s']:.1f} img/s ({result['precision']})", file=sys.stderr)
        print(f"[{tag}] pipeline (folder ingest through Redis and a Celery worker) ...", file=sys.stderr)
        worker = Worker(env, work / f"worker-{tag}.log")
        try:
            result["pipeline_img_s"], job = pipeline(settings, data / "source", paths)
        finally:
            worker.stop()
        print(f"  {result['pipeline_img_s']:.1f} img/s", file=sys.stderr)
        if args.stage_times:
            result["stage_s_per_batch"] = stage_table(job)
        if args.compare_naive:
            print("naive (one request, one model call, one commit per image) ...", file=sys.stderr)
            result["naive_img_s"] = naive(env, paths, work)
            print(f"  {result['naive_img_s']:.1f} img/s", file=sys.stderr)
    finally:
        for proc in services:
            stop(proc)
        if pg is not None:
            pg.stop()
    result["efficiency"] = round(result["pipeline_img_s"] / result["model_only_img_s"], 3)
    return result


def real_photo_cosines(model_name: str, work: Path, configs: list[tuple[str, str]]) -> dict[str, dict]:
    """Per runtime, the lowest cosine between its vectors and torch's, on real photos and texts."""
    import numpy as np

    from scripts.photosets import real_photos
    from shared.config import Settings
    from shared.embedder import load_embedder
    from shared.imaging import load_image, to_model_input

    vectors = {}
    for runtime, precision in configs:
        embedder = load_embedder(Settings.explicit(
            data_dir=work / "data-cosine", model_name=model_name, model_pretrained="random", device="cpu",
            embed_runtime=runtime, embed_precision=precision))
        size = embedder.image_size
        pixels = [to_model_input(load_image(p, min_side=size).image, size) for p in real_photos()]
        vectors[(runtime, precision)] = embedder.encode_images(pixels), embedder.encode_text(TEXTS)
    ref_images, ref_texts = vectors[configs[0]]
    return {f"{r}/{p}": {"images": round(float(np.sum(i * ref_images, axis=1).min()), 6),
                         "texts": round(float(np.sum(t * ref_texts, axis=1).min()), 6)}
            for (r, p), (i, t) in vectors.items()}


def write_seeded_checkpoint(model: str, directory: Path, seed: int) -> tuple[str, Path]:
    """Seeded random weights of architecture `model` (or of the tiny test model) saved as a checkpoint file:
    the same compute as MODEL_PRETRAINED=random, under another identity. Returns (MODEL_NAME, checkpoint)."""
    if model == "tiny":
        config, checkpoint = write_tiny_model(directory, seed=seed)
        return str(config), checkpoint
    import open_clip
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = directory / f"{Path(model).stem}-seed{seed}.pt"
    if not checkpoint.exists():  # kept in --workdir between runs
        torch.manual_seed(seed)
        torch.save(open_clip.create_model(model, pretrained=None).state_dict(), checkpoint)
    return model, checkpoint


def run_batches(work_fn, batches: list, threads: int) -> tuple[float, dict[str, float], list]:
    """Wall seconds to run `work_fn(batch, times)` over every batch, `threads` batches at once (a worker's
    task threads); the stage seconds summed over batches, with `wall`: each batch's own wall seconds in its
    task thread, and `cpu`: this process's CPU seconds (every thread); the results."""
    from concurrent.futures import ThreadPoolExecutor

    from shared.types import StageTimes

    def one(batch: list) -> tuple[object, dict[str, float]]:
        times = StageTimes()
        started = time.perf_counter()
        result = work_fn(batch, times)
        return result, {**times.as_dict(), "wall": time.perf_counter() - started}

    started, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads, thread_name_prefix="task") as pool:
        done = list(pool.map(one, batches))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    stages: dict[str, float] = {}
    for _, seconds in done:
        for stage, value in seconds.items():
            stages[stage] = stages.get(stage, 0.0) + value
    stages["cpu"] = cpu
    return elapsed, stages, [result for result, _ in done]


def _per_batch(stages: dict[str, float], batches: int) -> dict[str, float]:
    return {stage: round(seconds / max(1, batches), 4) for stage, seconds in stages.items()}


def reembed_round(settings, embedders, decoder, paths: list[Path], source_dir: Path, threads: int,
                  chunk: int) -> dict:
    """One round on a fresh store and database: ingest `paths` with the first of `embedders` (A) and re-embed
    the stored images with the second (B) into its own index, as the workers' tasks do, alternating every
    `chunk` batches (ingest a chunk, then re-embed what it stored: both phases see the same load on a shared
    machine); 0: ingest all, then re-embed all. Each phase is timed on its own; the re-embed's store walk
    afterwards must find nothing left to queue."""
    from shared.ingest import FileRef
    from shared.ingest import ingest_files as ingest_batch
    from shared.reembed import batch_items, check_complete, reembed_batch, walk_store
    from shared.services import Proxima

    model_a, model_b = embedders
    batch_size = settings.effective_batch_size
    proxima = Proxima.from_settings(settings, encoder=model_a)
    synced = [0.0]  # ingest: seconds in the store's one sync per batch (outside every stage of StageTimes)
    sync_all = proxima.images.sync_all

    def timed_sync() -> None:
        started = time.perf_counter()
        sync_all()
        synced[0] += time.perf_counter() - started

    proxima.images.sync_all = timed_sync  # type: ignore[method-assign]
    try:
        proxima.check_index()  # A's index, active (the worker's start-up)
        active = proxima.catalog.active(fresh=True)
        assert active is not None and active.slug == model_a.info.slug
        index_a = proxima.catalog.view(active)
        # B's index as `scripts/reembed.py` makes it: a building entry of the catalogue, its own table
        job_id, entry = proxima.begin_reembed(model_b.info)
        index_b = proxima.catalog.view(entry)
        items = []
        for p in paths:
            st = p.stat()
            items.append(FileRef(str(p), st.st_size, st.st_mtime_ns).as_item(str(source_dir)))
        batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        step = chunk or len(batches)
        print(f"  {len(items)} files in {len(batches)} batches, {step} at a time: ingest with {model_a.info.label()}, "
              f"then re-embed with {model_b.info.label()} ...", file=sys.stderr)
        spent = {"ingest": 0.0, "reembed": 0.0}
        stages: dict[str, dict[str, float]] = {"ingest": {}, "reembed": {}}
        counts = {"ingest": [0, 0], "reembed": [0, 0]}  # done, failed
        reembed_batches = 0

        def account(phase: str, seconds: float, stage_s: dict[str, float], results: list) -> None:
            spent[phase] += seconds
            for stage, value in stage_s.items():
                stages[phase][stage] = stages[phase].get(stage, 0.0) + value
            counts[phase][0] += sum(r.done for r in results)
            counts[phase][1] += sum(len(r.errors) for r in results)

        for first in range(0, len(batches), step):
            ingested = run_batches(
                lambda batch, times: ingest_batch(batch, images=proxima.images, backend=index_a, embedder=model_a,
                                                  manifest=proxima.manifest, decoder=decoder, times=times),
                batches[first:first + step], threads)
            account("ingest", *ingested)
            # what the walk would queue: the images just stored (B's index lacks them), `batch_size` at a time
            stored = sorted(i for result in ingested[2] for i in result.embedded)
            todo = [batch_items(stored[i:i + batch_size], entry.slug) for i in range(0, len(stored), batch_size)]
            reembed_batches += len(todo)
            account("reembed", *run_batches(
                lambda batch, times: reembed_batch(batch, images=proxima.images, target=index_b, source=index_a,
                                                   embedder=model_b, decoder=decoder, times=times),
                todo, threads))
        walked = walk_store(images=proxima.images, target=index_b, jobs=proxima.jobs, job_id=job_id,
                            slug=entry.slug, enqueue=lambda job, key, batch: None, batch_size=batch_size,
                            queue_depth=lambda: 0, max_queued=1)
        report = check_complete(proxima.images, index_b)
        if counts["ingest"] != [len(paths), 0] or index_a.count() != len(paths):
            raise SystemExit(f"ingest incomplete: {counts['ingest']} done/failed, {index_a.count()} indexed")
        if counts["reembed"] != [len(paths), 0] or walked.queued or not report.complete:
            raise SystemExit(f"re-embed incomplete: {counts['reembed']} done/failed, {walked.queued} left for the "
                             f"walk, {report.as_dict()}")
        sample = next(iter(index_a.get([stored[0]]).values()))
        copy = index_b.get([sample.id])[sample.id]
        if (copy.filename, copy.path, copy.created_at) != (sample.filename, sample.path, sample.created_at):
            raise SystemExit(f"re-embed lost the metadata: {sample} became {copy}")
    finally:
        proxima.close()
    stages["ingest"]["sync"] = synced[0]
    ingest_img_s, reembed_img_s = len(paths) / spent["ingest"], len(paths) / spent["reembed"]
    return {"ingest_model": model_a.info.label(), "reembed_model": model_b.info.label(),
            "ingest_s": round(spent["ingest"], 3), "reembed_s": round(spent["reembed"], 3),
            "ingest_img_s": round(ingest_img_s, 2), "reembed_img_s": round(reembed_img_s, 2),
            "ratio": round(reembed_img_s / ingest_img_s, 3), "batches": len(batches),
            "ingest_stage_s_per_batch": _per_batch(stages["ingest"], len(batches)),
            "reembed_stage_s_per_batch": _per_batch(stages["reembed"], reembed_batches)}


def measure_reembed(args, work: Path, paths: list[Path]) -> dict:
    """Ingest with model A, then re-embed with model B (same architecture, other weights), `args.rounds`
    times on fresh stores and databases; both models loaded (and exported) before anything is timed."""
    from concurrent.futures import ThreadPoolExecutor

    from shared.config import Settings
    from shared.decode import Decoder, decode_mode
    from shared.embedder import load_embedder
    from shared.imaging import load_image, to_model_input

    name_b, checkpoint_b = write_seeded_checkpoint(args.model, work / "model", seed=args.seed_b)
    name_a = name_b  # the tiny model's config path, or the architecture
    (work / "models").mkdir(exist_ok=True)
    redis_proc, redis_url = start_redis(work / "redis-reembed")
    pg = Postgres(work / "pg-reembed")
    try:
        def settings_for(data: Path, database_url: str, pretrained: str) -> Settings:
            data.mkdir(parents=True, exist_ok=True)
            if not (data / "models").exists():
                (data / "models").symlink_to(work / "models")  # exports shared between rounds and runs
            return Settings.explicit(
                data_dir=data, redis_url=redis_url, database_url=database_url, vector_backend="pgvector",
                model_name=name_a, model_pretrained=pretrained, device=args.device, decode=args.decode,
                batch_size=args.batch_size, embed_runtime=args.runtime, embed_precision=args.precision)

        base = settings_for(work / "data-reembed-models", pg.url, "random")
        print("loading model A (random weights) and model B (seeded checkpoint) ...", file=sys.stderr)
        model_a = load_embedder(base)
        model_b = load_embedder(settings_for(work / "data-reembed-models", pg.url, str(checkpoint_b)))
        if model_a.info.slug == model_b.info.slug or model_a.image_size != model_b.image_size:
            raise SystemExit(f"A and B must be two identities of one architecture: {model_a.info}, {model_b.info}")
        batch_size = base.effective_batch_size
        threads = base.worker_threads
        size = model_a.image_size
        warm = [to_model_input(load_image(p, min_side=size).image, size) for p in paths[:batch_size]]
        for model in (model_a, model_b):  # first calls compile / allocate
            model.encode_images(warm)
        pool_threads = base.decode_threads or os.cpu_count() or 1
        pool = ThreadPoolExecutor(pool_threads, thread_name_prefix="decode")
        device = str(model_a.device)
        decoder = Decoder(pool, size=size, max_pixels=base.max_image_pixels, mode=decode_mode(base.decode, device),
                          device=device, pool_threads=pool_threads)
        rounds = []
        try:
            run_id = time.strftime("%Y%m%d%H%M%S")  # a --workdir is reused: new databases and stores each run
            for r in range(args.rounds):
                print(f"[round {r + 1}/{args.rounds}]", file=sys.stderr)
                data = work / f"data-reembed-{run_id}-r{r}"
                # every other round swaps the two models' roles: a difference between them cancels out
                models = (model_a, model_b) if r % 2 == 0 else (model_b, model_a)
                settings = settings_for(data, create_database(pg.url, f"bench_reembed_{run_id}_r{r}"),
                                        models[0].info.pretrained)
                result = reembed_round(settings, models, decoder, paths, work / "images", threads, args.interleave)
                shutil.rmtree(data / "images")  # this round's stored copies
                print(f"  ingest {result['ingest_img_s']:.1f} img/s, re-embed {result['reembed_img_s']:.1f} img/s, "
                      f"ratio {result['ratio']:.3f}", file=sys.stderr)
                for phase in ("ingest", "reembed"):
                    print(f"    {phase:<8} s/batch " + "  ".join(
                        f"{k} {v:.4f}" for k, v in result[f"{phase}_stage_s_per_batch"].items()), file=sys.stderr)
                rounds.append(result)
        finally:
            pool.shutdown()
    finally:
        stop(redis_proc)
        pg.stop()
    n = len(paths) * len(rounds)
    ingest_img_s = n / sum(r["ingest_s"] for r in rounds)
    reembed_img_s = n / sum(r["reembed_s"] for r in rounds)
    ratio = reembed_img_s / ingest_img_s
    return {"model_a": model_a.info.label(), "model_b": model_b.info.label(), "runtime": args.runtime,
            "precision": model_a.precision, "batch_size": batch_size, "interleave": args.interleave,
            "worker_threads": threads,
            "decode_threads": pool_threads, "ingest_img_s": round(ingest_img_s, 2),
            "reembed_img_s": round(reembed_img_s, 2), "ratio": round(ratio, 3),
            "within_10pct": abs(ratio - 1) <= 0.10, "reembed_at_least_90pct": ratio >= 0.9, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", default="640x480", help="WxH of the generated JPEGs")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture, a config .json, or 'tiny'")
    parser.add_argument("--backend", default="pgvector", choices=["pgvector", "milvus"])
    parser.add_argument("--batch-size", type=int, default=0, help="0: automatic (256 on CUDA, else 32)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (DEVICE)")
    parser.add_argument("--decode", default="auto", choices=["auto", "cpu", "gpu"],
                        help="where workers decode (DECODE)")
    parser.add_argument("--runtime", default="auto", choices=["auto", "torch", "openvino", "onnxruntime"],
                        help="what runs the model (EMBED_RUNTIME)")
    parser.add_argument("--precision", default="auto", choices=["auto", "f32", "bf16", "int8"],
                        help="EMBED_PRECISION")
    parser.add_argument("--compare-runtimes", action="store_true",
                        help="torch, OpenVINO (default precision and f32) and ONNX Runtime side by side, on the "
                             "CPU, with each one's lowest cosine to torch on real photos")
    parser.add_argument("--stage-times", action="store_true",
                        help="print seconds per batch spent in read, decode, transfer, encode and upsert")
    parser.add_argument("--compare-naive", action="store_true")
    parser.add_argument("--fast-images", action="store_true",
                        help="generate the JPEGs in blocks of 64 sharing a background (GPU runs of 12-MP images)")
    parser.add_argument("--reembed", action="store_true",
                        help="ingest with model A, then re-embed the stored images with model B (same architecture, "
                             "other weights) on the same batch path, and compare the two rates")
    parser.add_argument("--rounds", type=int, default=1, help="--reembed: ingest then re-embed this many times")
    parser.add_argument("--seed-b", type=int, default=8, help="--reembed: seed of model B's weights")
    parser.add_argument("--interleave", type=int, default=4, metavar="BATCHES",
                        help="--reembed: alternate ingest and re-embed every this many batches (0: ingest all, "
                             "then re-embed all)")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.reembed and (args.compare_naive or args.compare_runtimes):
        parser.error("--reembed runs on its own: leave out --compare-naive and --compare-runtimes")
    if args.reembed and args.backend != "pgvector":
        parser.error("--reembed measures on pgvector (embedded PostgreSQL): use --backend pgvector")
    if args.rounds < 1 or args.interleave < 0:
        parser.error("--rounds is at least 1, --interleave at least 0")
    if args.compare_naive and args.backend != "pgvector":
        parser.error("--compare-naive runs the design document's PostgreSQL path: use --backend pgvector")
    if args.compare_runtimes and args.device.startswith("cuda"):
        parser.error("--compare-runtimes compares the CPU runtimes: use --device cpu or auto on a CPU machine")
    width, height = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="proxima-bench-") as tmp:
        work = args.workdir or Path(tmp)
        model_name = args.model
        if model_name == "tiny" and not args.reembed:
            model_name = str(write_tiny_model(work / "model")[0])
        print(f"generating {args.images} JPEGs of {width}x{height} ...", file=sys.stderr)
        paths = make_images(work / "images", args.images, (width, height), fast=args.fast_images)
        if args.reembed:
            result = measure_reembed(args, work, paths)
            print(json.dumps({"images": len(paths), "model": args.model, "size": args.size, "backend": args.backend,
                              "device": args.device, "decode": args.decode, **result}))
            return 0
        configs = RUNTIME_CONFIGS if args.compare_runtimes else [(args.runtime, args.precision)]
        runs = [measure(args, work, paths, model_name, runtime, precision, f"{i}-{runtime}-{precision}")
                for i, (runtime, precision) in enumerate(configs)]
        cosines = real_photo_cosines(model_name, work, configs) if args.compare_runtimes else None
    common = {"images": len(paths), "model": args.model, "size": args.size, "backend": args.backend,
              "device": args.device, "decode": args.decode}
    if args.compare_runtimes:
        torch_run = runs[0]
        for run in runs:
            run["pipeline_vs_torch"] = round(run["pipeline_img_s"] / torch_run["pipeline_img_s"], 2)
            run["model_only_vs_torch"] = round(run["model_only_img_s"] / torch_run["model_only_img_s"], 2)
            print(f"  {run['runtime']:<12} {run['precision']:<5} model only {run['model_only_img_s']:7.1f} img/s "
                  f"(x{run['model_only_vs_torch']:.2f})   pipeline {run['pipeline_img_s']:7.1f} img/s "
                  f"(x{run['pipeline_vs_torch']:.2f})", file=sys.stderr)
        print(json.dumps({**common, "runs": [_rounded(r) for r in runs], "min_cosine_to_torch": cosines}))
        return 0
    run = runs[0]
    naive_img_s = run.pop("naive_img_s", None)
    result = {**common, **_rounded(run), "naive_img_s": round(naive_img_s, 2) if naive_img_s else None,
              "ratio": round(run["pipeline_img_s"] / naive_img_s, 2) if naive_img_s else None}
    print(json.dumps(result))
    return 0


def _rounded(run: dict) -> dict:
    return {k: round(v, 2) if isinstance(v, float) and k.endswith("img_s") else v for k, v in run.items()}


if __name__ == "__main__":
    sys.exit(main())
