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
so the bottleneck shows at a glance.

The last line is JSON: {"images", "model", "pipeline_img_s", "naive_img_s", "ratio", "model_only_img_s",
"efficiency", ...} with efficiency = pipeline / model-only.
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
from scripts.synthetic import encode, photo  # noqa: E402


def _write_jpeg(args: tuple[Path, int, tuple[int, int]]) -> None:
    path, seed, size = args
    path.write_bytes(encode(photo(seed, size), "JPEG", quality=88))


def make_images(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i:07d}.jpg" for i in range(n)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_jpeg, [(p, 10_000 + i, size) for i, p in enumerate(paths)], chunksize=16))
    return paths


def model_only(settings, paths: list[Path], batch_size: int) -> float:
    """Images/s of the model alone on pre-decoded uint8 input, batched like the worker."""
    from shared.embedder import load_embedder
    from shared.imaging import load_image, to_model_input

    embedder = load_embedder(settings)
    size = embedder.image_size
    pixels = [to_model_input(load_image(p, min_side=size).image, size) for p in paths]
    embedder.encode_images(pixels[:batch_size])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        embedder.encode_images(pixels[i:i + batch_size])
    return len(pixels) / (time.perf_counter() - started)


def pipeline(settings, folder: Path, n: int) -> tuple[float, dict]:
    """Images/s of a folder ingest through Redis and the running worker, until the job completes; and the job."""
    from shared.services import Proxima

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
    parser.add_argument("--stage-times", action="store_true",
                        help="print seconds per batch spent in read, decode, transfer, encode and upsert")
    parser.add_argument("--compare-naive", action="store_true")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.compare_naive and args.backend != "pgvector":
        parser.error("--compare-naive runs the design document's PostgreSQL path: use --backend pgvector")
    width, height = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="proxima-bench-") as tmp:
        work = args.workdir or Path(tmp)
        model_name = args.model
        if model_name == "tiny":
            model_name = str(write_tiny_model(work / "model")[0])
        print(f"generating {args.images} JPEGs of {width}x{height} ...", file=sys.stderr)
        paths = make_images(work / "images", args.images, (width, height))
        redis_proc, redis_url = start_redis(work / "redis")
        services = [redis_proc]
        env = {"DATA_DIR": str(work / "data"), "REDIS_URL": redis_url, "VECTOR_BACKEND": args.backend,
               "MODEL_NAME": model_name, "MODEL_PRETRAINED": "random", "DEVICE": args.device,
               "DECODE": args.decode, "BATCH_SIZE": str(args.batch_size)}
        pg = None
        if args.backend == "pgvector":
            pg = Postgres(work / "pg")
            env["DATABASE_URL"] = pg.url
        else:
            milvus_proc, env["MILVUS_URI"] = start_milvus_lite(work / "milvus")
            services.append(milvus_proc)
        from shared.config import Settings

        settings = Settings.explicit(**{k.lower(): v for k, v in env.items()})
        batch_size = settings.effective_batch_size
        stages = None
        try:
            print("model only ...", file=sys.stderr)
            model_img_s = model_only(settings, paths, batch_size)
            print(f"  {model_img_s:.1f} img/s", file=sys.stderr)
            print("pipeline (folder ingest through Redis and a Celery worker) ...", file=sys.stderr)
            worker = Worker(env, work / "worker.log")
            try:
                pipeline_img_s, job = pipeline(settings, work / "images", len(paths))
            finally:
                worker.stop()
            print(f"  {pipeline_img_s:.1f} img/s", file=sys.stderr)
            if args.stage_times:
                stages = stage_table(job)
            naive_img_s = None
            if args.compare_naive:
                print("naive (one request, one model call, one commit per image) ...", file=sys.stderr)
                naive_img_s = naive(env, paths, work)
                print(f"  {naive_img_s:.1f} img/s", file=sys.stderr)
        finally:
            for proc in services:
                stop(proc)
            if pg is not None:
                pg.stop()
    result = {
        "images": len(paths), "model": args.model, "size": args.size, "backend": args.backend,
        "device": args.device, "decode": args.decode, "batch_size": batch_size,
        "pipeline_img_s": round(pipeline_img_s, 2),
        "naive_img_s": round(naive_img_s, 2) if naive_img_s else None,
        "ratio": round(pipeline_img_s / naive_img_s, 2) if naive_img_s else None,
        "model_only_img_s": round(model_img_s, 2),
        "efficiency": round(pipeline_img_s / model_img_s, 3),
        **({"stage_s_per_batch": stages} if stages is not None else {}),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
