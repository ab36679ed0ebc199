"""Search latency through the real API, one request at a time, per model runtime.

    python scripts/bench_query.py --vectors 10000 --model ViT-B-32 --compare-runtimes

Starts a private Redis and PostgreSQL + pgvector, fills the index with `--vectors` embedding-like unit
vectors under the model's identity (scripts/synthetic.clustered: what the HNSW search sees is the same as
for real images, and no CPU hour is spent embedding them), then for each runtime starts a real API process
(`uvicorn`, EMBED_RUNTIME/EMBED_PRECISION set) and sends, sequentially, `--queries` image searches
(`POST /search`, distinct generated 640×480 JPEGs, top 10) and as many text searches (`POST
/search/text`), after a few warm-up requests. Latency is measured by the client (HTTP included); the
server's own `took_ms` is reported beside it.

The last line is JSON: {"vectors", "model", "runs": [{"runtime", "precision", "image_p50_ms",
"image_p99_ms", "image_server_p50_ms", "text_p50_ms", "text_p99_ms", "text_server_p50_ms"}]}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.devservices import Api, Postgres, start_redis, stop, write_tiny_model  # noqa: E402
from scripts.synthetic import clustered, jpeg  # noqa: E402

CONFIGS = [("torch", "auto"), ("openvino", "auto"), ("openvino", "f32"), ("onnxruntime", "auto")]
TEXTS = ["a photo of a dog on a beach", "red car in the snow", "mountains at sunset", "a bowl of fruit",
         "city street at night", "a cat sleeping on a sofa", "people at a concert", "a forest path"]


def fill(settings, n: int) -> None:
    """`n` embedding-like vectors under the model's identity, in bulk."""
    from shared.backends.base import ImageRecord
    from shared.embedder import load_embedder
    from shared.services import Proxima

    info = load_embedder(settings).info
    proxima = Proxima.from_settings(settings)
    try:
        proxima.backend.ensure_schema(info)
        vectors = clustered(n, info.dim, seed=7)
        for start in range(0, n, 2000):
            chunk = vectors[start:start + 2000]
            records = [ImageRecord(id=f"{i:064x}", filename=f"img{i}.jpg", size_bytes=1, format="JPEG", width=640,
                                   height=480, model=info.label()) for i in range(start, start + len(chunk))]
            proxima.backend.upsert(records, chunk)
    finally:
        proxima.close()


def latencies(http: httpx.Client, send, count: int) -> tuple[list[float], list[float]]:
    """Client-side and server-side (took_ms) milliseconds of `count` sequential requests."""
    client_ms, server_ms = [], []
    for i in range(count):
        started = time.perf_counter()
        response = send(http, i)
        client_ms.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        server_ms.append(float(response.json()["took_ms"]))
    return client_ms, server_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture, a config .json, or 'tiny'")
    parser.add_argument("--queries", type=int, default=60, help="image searches and text searches, each")
    parser.add_argument("--runtime", default="auto", choices=["auto", "torch", "openvino", "onnxruntime"])
    parser.add_argument("--precision", default="auto", choices=["auto", "f32", "bf16", "int8"])
    parser.add_argument("--compare-runtimes", action="store_true", help="torch, OpenVINO (default, f32), ONNX Runtime")
    args = parser.parse_args(argv)
    from shared.config import Settings

    configs = CONFIGS if args.compare_runtimes else [(args.runtime, args.precision)]
    runs = []
    with tempfile.TemporaryDirectory(prefix="proxima-query-") as tmp:
        work = Path(tmp)
        model = str(write_tiny_model(work / "model")[0]) if args.model == "tiny" else args.model
        redis_proc, redis_url = start_redis(work / "redis")
        pg = Postgres(work / "pg")
        env = {"DATA_DIR": str(work / "data"), "REDIS_URL": redis_url, "DATABASE_URL": pg.url,
               "MODEL_NAME": model, "MODEL_PRETRAINED": "random", "DEVICE": "cpu"}
        images = [jpeg(50_000 + i, (640, 480)) for i in range(args.queries + 5)]
        try:
            print(f"indexing {args.vectors} vectors ...", file=sys.stderr)
            fill(Settings.explicit(**{k.lower(): v for k, v in env.items()}), args.vectors)
            for runtime, precision in configs:
                api = Api({**env, "EMBED_RUNTIME": runtime, "EMBED_PRECISION": precision},
                          work / f"api-{runtime}-{precision}.log")
                try:
                    with httpx.Client(base_url=api.url, timeout=60) as http:
                        used = http.get("/health").json()["model"]

                        def by_image(h: httpx.Client, i: int, offset: int = 0) -> httpx.Response:
                            return h.post("/search", files={"file": ("q.jpg", images[i + offset])},
                                          data={"top_k": "10"})

                        def by_text(h: httpx.Client, i: int) -> httpx.Response:
                            return h.post("/search/text", json={"text": TEXTS[i % len(TEXTS)], "top_k": 10})

                        latencies(http, lambda h, i: by_image(h, i, args.queries), 5)  # warm-up
                        latencies(http, by_text, 5)
                        image_ms, image_server = latencies(http, by_image, args.queries)
                        text_ms, text_server = latencies(http, by_text, args.queries)
                finally:
                    api.stop()
                run = {"runtime": used["runtime"], "precision": used["precision"],
                       "image_p50_ms": _pct(image_ms, 50), "image_p99_ms": _pct(image_ms, 99),
                       "image_server_p50_ms": _pct(image_server, 50),
                       "text_p50_ms": _pct(text_ms, 50), "text_p99_ms": _pct(text_ms, 99),
                       "text_server_p50_ms": _pct(text_server, 50)}
                print(f"  {run['runtime']:<12} {run['precision']:<5} image p50 {run['image_p50_ms']:7.1f} ms "
                      f"p99 {run['image_p99_ms']:7.1f}   text p50 {run['text_p50_ms']:6.1f} ms "
                      f"p99 {run['text_p99_ms']:6.1f}", file=sys.stderr)
                runs.append(run)
        finally:
            stop(redis_proc)
            pg.stop()
    print(json.dumps({"vectors": args.vectors, "model": args.model, "queries": args.queries, "runs": runs}))
    return 0


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


if __name__ == "__main__":
    sys.exit(main())
