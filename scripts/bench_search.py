"""Search latency, throughput and recall of a vector backend: no model needed.

    python scripts/bench_search.py --vectors 1000000 --dim 512 --backend pgvector

Loads N embedding-like unit vectors (or `--data X.npy`, rows need not be normalised; queries are 1,000
held-out rows unless `--queries Q.npy`) through the backend's bulk path, builds the index, then measures
top-10 latency p50/p99 over the queries one at a time, queries per second with `--clients` concurrent
clients, and recall@10 against exact search. The last line is JSON: {"vectors", "dim", "backend",
"load_s", "index_s", "p50_ms", "p99_ms", "qps", "recall_at_10", "params"}.

Filtered search: `--filter-selectivity 0.01,0.1,0.5` puts each vector into the collection `sel-S` with
probability S (independently of where the vector lies: the hard case for a filter inside an ANN search), then
measures p50/p99 and recall@10 against exact filtered search for `collection = sel-S` at each S, and the time
of a filter that matches nothing; they are added to the JSON as "filtered": {S: {...}} and "no_match_ms".

pgvector runs on a private embedded PostgreSQL unless `--database-url` is given; milvus on a private
Milvus Lite server unless `--milvus-uri` (or `--milvus-server`: the `milvus` package's standalone server);
manticore on a private searchd (MANTICORE_SEARCHD, MANTICORE_TARBALL or PATH, as in `make test`) unless
`--manticore-url`, merged into `--chunks` disk chunks after loading.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.devservices import (  # noqa: E402
    MANTICORE_HINT,
    searchd_from_environment,
    start_manticore,
    start_milvus_lite,
    start_milvus_server,
    stop,
    stop_group,
)
from scripts.synthetic import clustered  # noqa: E402
from shared.backends import ImageRecord, VectorBackend  # noqa: E402
from shared.filters import SearchFilter  # noqa: E402
from shared.types import ModelInfo  # noqa: E402

K = 10
_CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def load_vectors(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    if args.data:
        data = np.load(args.data).astype(np.float32)
        data /= np.linalg.norm(data, axis=1, keepdims=True)
        if args.queries:
            queries = np.load(args.queries).astype(np.float32)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        else:
            data, queries = data[:-args.n_queries], data[-args.n_queries:]
        return data[:args.vectors] if args.vectors else data, queries[:args.n_queries]
    everything = clustered(args.vectors + args.n_queries, args.dim, seed=args.seed, latent=args.latent,
                           clusters=args.clusters)
    return everything[:args.vectors], everything[args.vectors:]


def warm_queries(data: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Other queries near the data (noisy copies of random rows), to warm caches without seeing the test set."""
    rng = np.random.default_rng(seed + 1)
    picked = data[rng.integers(0, len(data), n)] + 0.05 * rng.normal(size=(n, data.shape[1])).astype(np.float32)
    return picked / np.linalg.norm(picked, axis=1, keepdims=True)


def exact_top_k(data: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    best = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, len(data), 200_000):
        scores = queries @ data[start:start + 200_000].T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        best = np.concatenate([best, top + start], axis=1)
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        keep = np.argsort(-best_scores, axis=1)[:, :k]
        best, best_scores = np.take_along_axis(best, keep, axis=1), np.take_along_axis(best_scores, keep, axis=1)
    return best


def record(i: int, collections: tuple[str, ...] = ()) -> ImageRecord:
    return ImageRecord(id=f"{i:064x}", filename=f"{i}.jpg", size_bytes=0, format="JPEG", width=0, height=0,
                       model="bench/random", created_at=_CREATED, collections=collections)


def selection(n: int, seed: int) -> np.ndarray:
    """One uniform draw per vector: vector i is in `sel-S` when draw[i] < S (nested sets, one per S)."""
    return np.random.default_rng(seed + 7).random(n)


def collections_of(draw: float, selectivities: list[float]) -> tuple[str, ...]:
    return tuple(f"sel-{s:g}" for s in selectivities if draw < s)


def measure_filtered(backend: VectorBackend, data: np.ndarray, queries: np.ndarray, draws: np.ndarray,
                     selectivities: list[float]) -> tuple[dict[str, dict], float]:
    """{S: {p50_ms, p99_ms, recall_at_10, matching}} per selectivity, and the median time of a search whose
    filter matches nothing."""
    out = {}
    for s in selectivities:
        where = SearchFilter(collections=(f"sel-{s:g}",))
        keep = np.flatnonzero(draws < s)
        truth = exact_top_k(data[keep], queries)
        latencies, recalls = [], []
        for q, t in zip(queries, truth, strict=True):
            started = time.perf_counter()
            hits = backend.search(q, K, where=where)
            latencies.append((time.perf_counter() - started) * 1000)
            expected = {int(keep[j]) for j in t.tolist()}
            recalls.append(len(expected & {int(h.id, 16) for h in hits}) / K)
        out[f"{s:g}"] = {"matching": int(len(keep)), "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                         "p99_ms": round(float(np.percentile(latencies, 99)), 2),
                         "recall_at_10": round(float(np.mean(recalls)), 4)}
        print(f"selectivity {s:g}: {out[f'{s:g}']}", file=sys.stderr)
    nothing = SearchFilter(collections=("no such collection",))
    times = []
    for q in queries[:50]:
        started = time.perf_counter()
        assert backend.search(q, K, where=nothing) == []
        times.append((time.perf_counter() - started) * 1000)
    return out, round(float(np.median(times)), 2)


def open_backend(args: argparse.Namespace, work: Path, cleanups: list) -> tuple[VectorBackend, dict]:
    if args.backend == "pgvector":
        from shared.backends.pgvector import PgVectorBackend

        url = args.database_url
        if not url:
            import psycopg

            from scripts.devservices import Postgres

            pg = Postgres(work / "pg")
            with psycopg.connect(pg.url, autocommit=True) as conn:  # room for the table and index in memory
                conn.execute(psycopg.sql.SQL("ALTER SYSTEM SET shared_buffers = {}").format(
                    psycopg.sql.Literal(args.shared_buffers)))
            pg.stop()
            url = pg.start()  # the setting applies from a restart
            cleanups.append(pg.stop)
        params = {"m": args.m, "ef_construction": args.ef_construction, "ef_search": args.ef_search,
                  "index_type": args.index_type, "rerank": args.rerank, "build_workers": args.build_workers,
                  "maintenance_work_mem": args.maintenance_work_mem, "shared_buffers": args.shared_buffers}
        return PgVectorBackend(url, ef_search=args.ef_search, hnsw_m=args.m, hnsw_ef_construction=args.ef_construction,
                               index_type=args.index_type, rerank=args.rerank, pool_size=args.clients + 1), params
    if args.backend == "milvus":
        from shared.backends.milvus import MilvusBackend

        uri = args.milvus_uri
        if not uri and args.milvus_server:
            server, uri = start_milvus_server(work / "milvus-server")
            cleanups.append(lambda: stop_group(server))
        elif not uri:
            proc, uri = start_milvus_lite(work / "milvus")
            cleanups.append(lambda: stop(proc))
        params = {"m": args.m, "ef_construction": args.ef_construction, "ef_search": args.ef_search}
        return MilvusBackend(uri, collection="bench", hnsw_m=args.m, hnsw_ef_construction=args.ef_construction,
                             ef_search=args.ef_search, timeout=3600), params
    from shared.backends.manticore import ManticoreBackend

    url = args.manticore_url
    if not url:
        searchd = searchd_from_environment(work / "manticore-server")
        if searchd is None:
            raise SystemExit(f"--backend manticore: no Manticore server; {MANTICORE_HINT} (or give --manticore-url)")
        proc, url = start_manticore(searchd, work / "manticore")
        cleanups.append(lambda: stop(proc, timeout=120))
    params = {"m": args.m, "ef_construction": args.ef_construction, "ef_search": args.ef_search,
              "chunks": args.chunks, "quantization": args.quantization, "early_termination": args.early_termination}
    return ManticoreBackend.from_url(url, table="bench_images", meta_table="bench_meta", hnsw_m=args.m,
                                     hnsw_ef_construction=args.ef_construction, ef_search=args.ef_search,
                                     quantization=args.quantization, early_termination=args.early_termination,
                                     pool_size=args.clients + 1, read_timeout=None), params


def load_and_index(backend: VectorBackend, data: np.ndarray, queries: np.ndarray,
                   args: argparse.Namespace, draws: np.ndarray) -> tuple[float, float]:
    n = len(data)
    if hasattr(backend, "drop_index"):
        backend.drop_index()  # bulk load first, then build the index once
    started = time.perf_counter()
    batch = 10_000
    for i in tqdm(range(0, n, batch), desc="load", unit_scale=batch, disable=not sys.stderr.isatty()):
        backend.upsert([record(j, collections_of(draws[j], args.filter_selectivity))
                        for j in range(i, min(n, i + batch))], data[i:i + batch])
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    if hasattr(backend, "create_index"):
        backend.create_index(maintenance_work_mem=args.maintenance_work_mem, parallel_workers=args.build_workers)
    elif args.backend == "milvus":
        backend.search(queries[0], K)  # Milvus builds as it loads; the first search waits for it
    elif hasattr(backend, "optimize"):
        settle_manticore(backend, args.chunks)
    index_s = time.perf_counter() - started
    print(f"load {load_s:.1f} s, index {index_s:.1f} s", file=sys.stderr)
    return load_s, index_s


def settle_manticore(backend, chunks: int) -> None:
    """Manticore builds each chunk's HNSW graph as it saves and merges chunks: index time is until that is
    done, either merged into `chunks` disk chunks, or (0) once searchd's own auto_optimize is idle."""
    if chunks:
        backend.optimize(chunks)
        return
    quiet = 0
    while quiet < 3:  # three looks in a row without a merge running
        time.sleep(2)
        quiet = quiet + 1 if backend.table_status().get("optimizing", "0") == "0" else 0
    print(f"manticore: {backend.table_status().get('disk_chunks')} disk chunks", file=sys.stderr)


def selectivities(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError("shares between 0 and 1, comma-separated, e.g. 0.01,0.1,0.5")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectors", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--backend", default="pgvector", choices=["pgvector", "milvus", "manticore"])
    p.add_argument("--data", type=Path, help="float32 .npy of vectors to load instead of generated ones")
    p.add_argument("--queries", type=Path, help="float32 .npy of queries (default: 1,000 held-out rows)")
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--clients", type=int, default=8, help="concurrent clients for the QPS measurement")
    p.add_argument("--warmup", type=int, default=2000, help="queries run first to warm caches (not measured)")
    p.add_argument("--qps-seconds", type=float, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latent", type=int, default=32, help="generated data: intrinsic dimension")
    p.add_argument("--clusters", type=int, default=1000, help="generated data: mixture components")
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=96)
    p.add_argument("--ef-search", type=int, default=150)
    p.add_argument("--index-type", default="halfvec", choices=["vector", "halfvec"], help="pgvector only")
    p.add_argument("--rerank", type=int, default=0, help="pgvector: candidates re-ranked exactly")
    p.add_argument("--build-workers", type=int, default=2, help="pgvector: parallel index build workers")
    p.add_argument("--maintenance-work-mem", default="8GB", help="pgvector: memory for the index build")
    p.add_argument("--shared-buffers", default="4GB", help="pgvector: for the private server")
    p.add_argument("--workdir", type=Path, help="keep the private database here; a re-run with the same data "
                   "skips loading and indexing (to compare search settings)")
    p.add_argument("--chunks", type=int, default=1, help="manticore: merge into this many disk chunks after "
                   "loading (0: leave it to searchd's auto_optimize)")
    p.add_argument("--quantization", default="", choices=["", "8bit", "1bit"], help="manticore: at table creation")
    p.add_argument("--early-termination", action="store_true", help="manticore: stop the walk once results settle")
    p.add_argument("--database-url")
    p.add_argument("--milvus-uri")
    p.add_argument("--milvus-server", action="store_true",
                   help="milvus: start the standalone server of the `milvus` package (2.3) instead of Milvus Lite")
    p.add_argument("--manticore-url")
    p.add_argument("--filter-selectivity", type=selectivities, default=[],
                   help="also measure filtered search keeping these shares of the vectors, e.g. 0.01,0.1,0.5")
    args = p.parse_args(argv)

    data, queries = load_vectors(args)
    n, dim = data.shape
    draws = selection(n, args.seed)
    filtered: dict[str, dict] = {}
    no_match_ms = None
    print(f"{n:,} vectors × {dim}, {len(queries)} queries", file=sys.stderr)
    cleanups: list = []
    with tempfile.TemporaryDirectory(prefix="proxima-bench-search-") as tmp:
        try:
            backend, params = open_backend(args, args.workdir or Path(tmp), cleanups)
            backend.ensure_schema(ModelInfo("bench", "random", dim))
            load_s = index_s = None
            if args.workdir and backend.count() == n:
                print("reusing the loaded and indexed data in --workdir", file=sys.stderr)
            else:
                load_s, index_s = load_and_index(backend, data, queries, args, draws)

            for q in warm_queries(data, args.warmup, args.seed):  # a service that has been running a while
                backend.search(q, K)
            latencies, found = [], []
            for q in queries:
                t = time.perf_counter()
                hits = backend.search(q, K)
                latencies.append((time.perf_counter() - t) * 1000)
                found.append([int(h.id, 16) for h in hits])
            truth = exact_top_k(data, queries)
            recall = float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))

            done = [0] * args.clients
            deadline = time.perf_counter() + args.qps_seconds

            def client(slot: int) -> None:
                i = slot
                while time.perf_counter() < deadline:
                    backend.search(queries[i % len(queries)], K)
                    done[slot] += 1
                    i += args.clients

            threads = [threading.Thread(target=client, args=(s,)) for s in range(args.clients)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            qps = sum(done) / (time.perf_counter() - started)
            if args.filter_selectivity:
                filtered, no_match_ms = measure_filtered(backend, data, queries, draws, args.filter_selectivity)
            backend.close()
        finally:
            for cleanup in reversed(cleanups):
                cleanup()
    result = {"vectors": n, "dim": dim, "backend": args.backend,
              "load_s": round(load_s, 1) if load_s else None, "index_s": round(index_s, 1) if index_s else None,
              "p50_ms": round(float(np.percentile(latencies, 50)), 2),
              "p99_ms": round(float(np.percentile(latencies, 99)), 2), "qps": round(qps, 1),
              "recall_at_10": round(recall, 4), "params": params}
    if args.filter_selectivity:
        result.update(filtered=filtered, no_match_ms=no_match_ms)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
