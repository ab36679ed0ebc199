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

The last line is JSON: {"images", "model", "pipeline_img_s", "naive_img_s", "ratio", "model_only_img_s",
"efficiency", ...} with efficiency = pipeline / model-only; with --compare-runtimes, {"runs": [one such
object per runtime, with "pipeline_vs_torch" and "model_only_vs_torch"], "min_cosine_to_torch"}.
"""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.compare_naive and args.backend != "pgvector":
        parser.error("--compare-naive runs the design document's PostgreSQL path: use --backend pgvector")
    if args.compare_runtimes and args.device.startswith("cuda"):
        parser.error("--compare-runtimes compares the CPU runtimes: use --device cpu or auto on a CPU machine")
    width, height = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="proxima-bench-") as tmp:
        work = args.workdir or Path(tmp)
        model_name = args.model
        if model_name == "tiny":
            model_name = str(write_tiny_model(work / "model")[0])
        print(f"generating {args.images} JPEGs of {width}x{height} ...", file=sys.stderr)
        paths = make_images(work / "images", args.images, (width, height), fast=args.fast_images)
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
