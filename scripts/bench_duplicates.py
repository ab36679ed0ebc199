"""Near-duplicates (`shared/duplicates.py`): how well pairs are told apart on real photos, and how fast a whole
collection is searched. Figures in docs/benchmarks.md, "Near-duplicates".

    python scripts/bench_duplicates.py --quality --embeddings /tmp/dup-emb   # real photos, real weights
    python scripts/bench_duplicates.py --quality --embeddings /tmp/dup-emb --threshold 0.94   # same vectors
    python scripts/bench_duplicates.py --vectors 200000 --threads 4,2 --ef-search 150,40
    python scripts/bench_duplicates.py --vectors 1000000 --shared-buffers 8GB --threads 4 --ef-search 150
    python scripts/bench_duplicates.py --vectors 200000 --threads 4 --ef-search 150 --path single,batched \
        --workdir /tmp/dup-200k   # the old per-image searches against the batched neighbours, same database

`--quality`: real photos from Debian packages (scripts/photosets.py's cache): the photographs of
`mate-backgrounds` nature/ and of `lomiri-wallpapers-16.04`/`-20.04` (WALLPAPER_PHOTOS), and Tux Paint's photo
stamps whose shorter side is at least MIN_STAMP_SIDE. Every other one gets a copy per transform (TRANSFORMS:
resized, thumbnail, recompressed, cropped, re-encoded to PNG and WebP, stored sideways with an EXIF
orientation), made from the full-resolution picture; the others are distractors. Every image is decoded as an
upload is and embedded by each extractor (EfficientNet-Lite0/1/2 with their installed ImageNet weights, and
open_clip's ViT-B-32 with seeded random weights as a labelled baseline: CLIP's own weights cannot be had
offline here); every pair's cosine is computed exactly. A pair is true when both images come from the same
photo. Reported per extractor, at DEFAULT_THRESHOLD (or `--threshold`) and at the lowest threshold giving
pair precision >= 0.99 over the whole set: per transform, the precision and recall of the pairs its copies
make (recall of photographs and stamps apart) and the share of its copies that end up in their original's
group; over the whole set, the same with copy-to-copy pairs included.

`--vectors N`: N synthetic embedding-like unit vectors (`scripts.synthetic.clustered`, as bench_search.py,
plus `--spread` of isotropic noise so that unrelated images are not all near-duplicates of each other: see
`background`), of which 1% get 1-3 planted copies at cosine 0.95-0.99; loaded and indexed in a private
embedded PostgreSQL + pgvector with bench_search.py's helpers (bulk load, then the HNSW index). Then
`shared.duplicates.run` runs end to end (a DuplicateStore on a private redis-server) in a child process, as a
worker would, once per `--path`/`--threads`/`--ef-search` combination (`--path single`: the old search path,
one `search` per image with its metadata, `shared.backends.base.neighbours_by_search`; `batched`: the backend's
`neighbours`, a chunk of images per call); reported: time, images/s, the child's peak RSS
(PostgreSQL and Redis not included; Redis's own peak is reported apart), CPU seconds of the child and of
PostgreSQL (per image, and the time they would take on two cores of their own), pairs and groups found, and how
many planted groups came back whole. The last line is JSON.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import quality  # noqa: E402
from scripts.synthetic import clustered, encode  # noqa: E402
from shared.duplicates import DEFAULT_NEIGHBOURS, DEFAULT_THRESHOLD, UnionFind  # noqa: E402

LITE = "efficientnet_lite"
EXTRACTORS = [(LITE, "efficientnet-lite0", "imagenet"), (LITE, "efficientnet-lite1", "imagenet"),
              (LITE, "efficientnet-lite2", "imagenet"), ("open_clip", "ViT-B-32", "random")]
TARGET_PRECISION = 0.99


def _jpeg(image: Image.Image, quality_: int = 95) -> bytes:
    return encode(image, "JPEG", quality=quality_)


def _thumbnail(image: Image.Image, side: int = 320) -> bytes:
    small = image.copy()
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    return _jpeg(small, 85)


# Copies a user would end up with of one photo (each takes the upright original, returns the copy's bytes).
TRANSFORMS: dict[str, Callable[[Image.Image], bytes]] = {
    "half_size": quality.TRANSFORMS["half_size"],  # resized to half, JPEG q95
    "thumb_320": _thumbnail,  # longest side 320 px, JPEG q85 (a shared or exported thumbnail)
    "jpeg_q30": quality.TRANSFORMS["jpeg_q30"],  # recompressed hard
    "crop_88": quality.TRANSFORMS["crop_88"],  # 88% centre crop (6% off each side)
    "png": quality.TRANSFORMS["png"],  # re-encoded, lossless
    "webp": lambda im: encode(im, "WEBP", quality=80),  # re-encoded, lossy
    "exif_rotated": quality.TRANSFORMS["exif_rotated"],  # stored sideways + EXIF orientation 6
}


# --- quality on real photos -------------------------------------------------------------------------------


# Photographs in Debian's wallpaper packages besides mate-backgrounds (the others there are illustrations).
WALLPAPER_PHOTOS = {
    "lomiri-wallpapers-16.04": ["Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg",
                                "Picture_0B_by_freespace.jpg", "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg",
                                "aitzgorri_by_Aitzol_Berasategi.jpg", "analogpattern_by_Peter_Nerlich.jpg",
                                "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg",
                                "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg",
                                "picosdeeuropa_by_Aitzol_Berasategi.jpg", "seeding_by_Clements_Engelhardt.jpg",
                                "sunset_by_Aitzol_Berasategi.jpg"],
    "lomiri-wallpapers-20.04": ["Kleiber_by_Lukas_Baubkus.jpg"],
}
MIN_STAMP_SIDE = 128  # smaller stamps are icons, not photos anyone keeps (and their half-size copies are ~50 px)


def real_images() -> list[tuple[str, str, Path]]:
    """(group, name, path) of every real photo to hand: the photographs ("photo": mate-backgrounds nature/ and
    the wallpaper packages above, 1,365-6,028 px JPEGs) and Tux Paint's photo stamps ("stamp": PNGs with
    transparency) whose shorter side is at least MIN_STAMP_SIDE."""
    from scripts.photosets import _fetch, cache_dir, labelled_stamps, real_photos

    paths = real_photos()
    for package, files in WALLPAPER_PHOTOS.items():
        root = cache_dir() / package
        if not root.is_dir():
            _fetch(package, root)
        paths += [root / "usr/share/backgrounds" / name for name in files]
    out = [("photo", f"{p.relative_to(cache_dir()).parts[0]}/{p.name}", p) for p in paths]
    for path, category in labelled_stamps():
        with Image.open(path) as stamp:
            if min(stamp.size) >= MIN_STAMP_SIDE:
                out.append(("stamp", f"{category}/{path.name}", path))
    return out


def full_picture(path: Path) -> Image.Image:
    """The whole picture, upright RGB at full resolution (alpha on white): what a copy is made from (the
    service's own decode, used for every image embedded here, may decode a large JPEG at 1/2-1/8 scale)."""
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)
        if upright.mode in ("RGBA", "LA", "P"):
            rgba = upright.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            return canvas
        return upright.convert("RGB")


def build_photo_set(every: int = 2) -> dict[str, Any]:
    """Images decoded as uploads are (the originals from their files, the copies from their bytes), the photo
    each comes from (`family`), what it is (`kind`: "original" or a transform's name) and whether it is a
    photograph or a stamp (`group`). Originals 0, every, 2·every, ... get one copy per transform, made from the
    full-resolution picture; the rest are distractors."""
    originals = real_images()
    duplicated = list(range(0, len(originals), every))
    images = [quality.load(path) for _, _, path in originals]
    names = [name for _, name, _ in originals]
    group = [g for g, _, _ in originals]
    family = list(range(len(originals)))
    kind = ["original"] * len(originals)
    for i in duplicated:
        picture = full_picture(originals[i][2])
        for transform_name, transform in TRANSFORMS.items():
            images.append(quality.load(transform(picture)))
            names.append(f"{names[i]} [{transform_name}]")
            group.append(group[i])
            family.append(i)
            kind.append(transform_name)
    return {"images": images, "names": names, "family": np.asarray(family), "kind": np.asarray(kind),
            "group": np.asarray(group), "originals": len(originals), "duplicated": len(duplicated),
            "photographs": group[:len(originals)].count("photo")}


def all_pairs(vectors: np.ndarray, family: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine, same photo) of every pair i < j."""
    i, j = np.triu_indices(len(vectors), 1)
    return i, j, (vectors @ vectors.T)[i, j].astype(np.float64), family[i] == family[j]


def precision_recall(scores: np.ndarray, true: np.ndarray, threshold: float,
                     groups: np.ndarray | None = None) -> dict[str, Any]:
    """Pair precision and recall at `threshold`; with `groups` (each pair's "photo" or "stamp"), recall of each."""
    found = scores >= threshold
    tp = int((found & true).sum())
    out = {"precision": round(tp / found.sum(), 4) if found.any() else 1.0,
           "recall": round(tp / true.sum(), 4) if true.any() else None,
           "true_pairs": int(true.sum()), "found": int(found.sum()), "false": int(found.sum()) - tp}
    for name in () if groups is None else ("photo", "stamp"):
        mine = true & (groups == name)
        out[f"recall_{name}"] = round(int((found & mine).sum()) / mine.sum(), 4) if mine.any() else None
    return out


def lowest_threshold(scores: np.ndarray, true: np.ndarray, target: float = TARGET_PRECISION) -> float:
    """The lowest threshold whose pairs (cosine >= it) have precision >= target (ties kept together)."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(true[order])
    precision = hits / np.arange(1, len(ranked) + 1)
    ends = np.flatnonzero(np.append(ranked[1:] < ranked[:-1], True))  # last position of each tie block
    ok = ends[precision[ends] >= target]
    return float(ranked[ok[-1]]) if len(ok) else math.inf


def groups_at(i: np.ndarray, j: np.ndarray, scores: np.ndarray, threshold: float, n: int) -> np.ndarray:
    """Each image's group (its set's representative) when every pair at or above `threshold` is joined, through
    the job's own UnionFind (all pairs here: the job looks at k neighbours per image)."""
    sets = UnionFind()
    for a, b in zip(i[scores >= threshold].tolist(), j[scores >= threshold].tolist(), strict=True):
        sets.union(str(a), str(b))
    return np.asarray([int(sets.find(str(k))) if str(k) in sets.parent else k for k in range(n)])


def measure_at(threshold: float, i: np.ndarray, j: np.ndarray, scores: np.ndarray, same: np.ndarray,
               photo_set: dict[str, Any]) -> dict[str, Any]:
    """Per transform: precision / recall of the pairs a copy of it makes (with the originals and the other copies
    of that transform; recall of its copy-original pairs, photographs and stamps apart), and the share of its
    copies that end up in their original's group. "all": every pair of the whole set, copy-to-copy included."""
    kind, family, group = photo_set["kind"], photo_set["family"], photo_set["group"]
    label = groups_at(i, j, scores, threshold, len(kind))
    original_of = {int(f): k for k, f in enumerate(family) if kind[k] == "original"}
    joined = np.asarray([label[k] == label[original_of[int(family[k])]] for k in range(len(kind))])
    out: dict[str, Any] = {}
    for name in TRANSFORMS:
        mine = ((kind[i] == name) | (kind[j] == name)) & np.isin(kind[i], ["original", name]) \
            & np.isin(kind[j], ["original", name])
        out[name] = {**precision_recall(scores[mine], same[mine], threshold, group[i][mine]),
                     "joined": round(float(joined[kind == name].mean()), 4)}
    originals = (kind[i] == "original") & (kind[j] == "original")
    members: dict[int, set[int]] = {}
    for k, lab in enumerate(label.tolist()):
        members.setdefault(lab, set()).add(int(family[k]))
    out["all"] = {**precision_recall(scores, same, threshold, group[i]),
                  "joined": round(float(joined[kind != "original"].mean()), 4),
                  "false_among_originals": int((originals & (scores >= threshold)).sum()),
                  "groups": sum(1 for lab in set(label.tolist()) if (label == lab).sum() > 1),
                  "mixed_groups": sum(1 for photos in members.values() if len(photos) > 1)}
    return out


def measure_quality(vectors: np.ndarray, photo_set: dict[str, Any], threshold: float) -> dict[str, Any]:
    i, j, scores, same = all_pairs(vectors, photo_set["family"])
    best = lowest_threshold(scores, same)
    # ceil to 4 decimals: a threshold printed shorter must not let in a pair below it
    best = math.ceil(best * 10_000) / 10_000 if math.isfinite(best) else best
    out: dict[str, Any] = {"at_default": measure_at(threshold, i, j, scores, same, photo_set),
                           "threshold_p99": best, "at_p99": measure_at(best, i, j, scores, same, photo_set),
                           "sweep": {f"{t:.2f}": precision_recall(scores, same, t)
                                     for t in np.arange(0.70, 1.0, 0.02)}}
    names = photo_set["names"]
    negatives = np.flatnonzero(~same)
    out["hardest_false"] = [(names[i[p]], names[j[p]], round(float(scores[p]), 4))
                            for p in negatives[np.argsort(-scores[negatives])[:8]]]
    positives = np.flatnonzero(same)
    out["weakest_true"] = [(names[i[p]], names[j[p]], round(float(scores[p]), 4))
                           for p in positives[np.argsort(scores[positives])[:8]]]
    # how close unrelated photos come: each original's nearest other original
    originals = np.flatnonzero(photo_set["kind"] == "original")
    sims = vectors[originals] @ vectors[originals].T
    np.fill_diagonal(sims, -1)
    out["original_nn_cosine_p50_p90_p99_max"] = [round(float(v), 3)
                                                for v in np.percentile(sims.max(axis=1), [50, 90, 99, 100])]
    return out


def run_quality(args: argparse.Namespace) -> int:
    """Embed the set with each extractor and measure; with `--embeddings DIR`, the set's labels and each
    extractor's vectors are kept there, and a later run with the same DIR measures them again without
    rebuilding or embedding (to try thresholds: `--threshold`)."""
    from shared.config import Settings
    from shared.embedder import load_embedder

    saved = args.embeddings / "set.json" if args.embeddings else None
    started = time.perf_counter()
    if saved and saved.is_file():
        photo_set: dict[str, Any] = {k: np.asarray(v) if k in ("family", "kind", "group") else v
                     for k, v in json.loads(saved.read_text()).items()}
    else:
        photo_set = build_photo_set()
        photo_set["count"] = len(photo_set["images"])
    n = photo_set["count"]
    print(f"{photo_set['originals']} real photos ({photo_set['photographs']} photographs, the others stamps; "
          f"{photo_set['duplicated']} with a copy per transform, the rest "
          f"distractors), {len(TRANSFORMS)} transforms: {n} images, {n * (n - 1) // 2:,} pairs "
          f"({time.perf_counter() - started:.0f} s to build)", flush=True)
    if saved and not saved.is_file():
        args.embeddings.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v
                                     for k, v in photo_set.items() if k != "images"}))
    rows = []
    for extractor, name, pretrained in EXTRACTORS[:args.extractors]:
        stored = args.embeddings / f"{name}-{pretrained}.npy" if args.embeddings else None
        t = time.perf_counter()
        if stored and stored.is_file():
            vectors, runtime = np.load(stored), json.loads(stored.with_suffix(".json").read_text())["runtime"]
        else:
            settings = Settings.explicit(extractor=extractor, model_name=name, model_pretrained=pretrained,
                                         device="cpu", embed_runtime=args.runtime, data_dir=args.data_dir)
            model = load_embedder(settings)
            t = time.perf_counter()
            vectors, runtime = quality.embed(model, photo_set["images"]), f"{model.runtime} {model.precision}"
            if stored:
                np.save(stored, vectors)
                stored.with_suffix(".json").write_text(json.dumps({"runtime": runtime}))
        row = {"extractor": f"{name} {pretrained}", "runtime": runtime, "embed_s": round(time.perf_counter() - t, 1),
               **measure_quality(vectors, photo_set, args.threshold)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(quality_tables(rows, args.threshold))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def quality_tables(rows: list[dict[str, Any]], threshold: float) -> str:
    """Markdown: per transform at the default threshold and at each extractor's lowest threshold with precision
    >= TARGET_PRECISION: precision / recall, recall photographs / stamps, copies in their original's group."""
    names = [*TRANSFORMS, "all"]

    def table(title: str, key: str, cell: Callable[[dict], str]) -> list[str]:
        lines = [title, "| extractor | threshold | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 2)]
        for row in rows:
            at = threshold if key == "at_default" else row["threshold_p99"]
            lines.append(f"| {row['extractor']} | {at} | " + " | ".join(cell(row[key][n]) for n in names) + " |")
        return [*lines, ""]

    def pr(result: dict) -> str:
        return f"{result['precision']:.3f} / {result['recall']:.3f}"

    def split(result: dict) -> str:
        return f"{result['recall_photo']:.3f} / {result['recall_stamp']:.3f}"

    def joined(result: dict) -> str:
        return f"{result['joined']:.3f}"

    out = []
    for key, what in (("at_default", f"the default threshold {threshold}"),
                      ("at_p99", f"the lowest threshold with precision >= {TARGET_PRECISION} (whole set)")):
        out += table(f"At {what}: pair precision / recall", key, pr)
        out += table(f"At {what}: recall, photographs / stamps", key, split)
        out += table(f"At {what}: share of the copies in their original's group", key, joined)
    out += ["Whole set: false pairs among the originals, groups, groups mixing photos (default; p99 threshold)"]
    out += [f"- {row['extractor']}: " + "; ".join(
        f"{row[k]['all']['false_among_originals']}, {row[k]['all']['groups']}, {row[k]['all']['mixed_groups']}"
        for k in ("at_default", "at_p99")) for row in rows]
    return "\n".join(out)


# --- speed at scale on synthetic vectors --------------------------------------------------------------------


def background(n: int, dim: int, *, seed: int, latent: int, clusters: int, spread: float) -> np.ndarray:
    """`clustered` vectors with isotropic noise of norm ~`spread` added (then unit length again). `clustered`
    alone puts every member of a cluster at cosine ~0.9 of the others (centres at 3 standard deviations), so
    at a million vectors an image's nearest unrelated neighbour sits at ~0.95, above any near-duplicate
    threshold; the noise divides those cosines by ~1 + spread² and keeps the clustered structure."""
    data = clustered(n, dim, seed=seed, latent=latent, clusters=clusters)
    rng = np.random.default_rng(seed + 5)
    for start in range(0, n, 100_000):
        block = data[start:start + 100_000]
        block += (spread / math.sqrt(dim)) * rng.normal(size=block.shape).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return data


def plant(data: np.ndarray, *, seed: int, share: float = 0.01, copies: tuple[int, int] = (1, 3),
          cosine: tuple[float, float] = (0.95, 0.99)) -> list[list[int]]:
    """Overwrite the last rows of `data` with near-duplicates: `share` of the other rows get 1-3 copies each,
    each at a cosine drawn in `cosine` from its source. The planted groups (source row first)."""
    n, dim = data.shape
    rng = np.random.default_rng(seed + 3)
    counts = rng.integers(copies[0], copies[1] + 1, max(1, round(n * share)))
    base = n - int(counts.sum())
    sources = rng.choice(base, len(counts), replace=False)
    groups, row = [], base
    for source, count in zip(sources.tolist(), counts.tolist(), strict=True):
        members = [source]
        for _ in range(count):
            target = rng.uniform(*cosine)
            noise = np.asarray(rng.normal(size=dim), dtype=np.float32)
            noise -= (noise @ data[source]) * data[source]  # orthogonal to the source: cosine is exactly `target`
            noise /= np.linalg.norm(noise)
            data[row] = target * data[source] + math.sqrt(1 - target**2) * noise
            members.append(row)
            row += 1
        groups.append(members)
    return groups


def nearest_unrelated(data: np.ndarray, sample: int, seed: int) -> list[float]:
    """p50/p90/p99/max of the exact nearest-neighbour cosine of `sample` rows (planted copies aside)."""
    rows = np.random.default_rng(seed + 9).choice(len(data), sample, replace=False)
    best = np.full(sample, -1.0, dtype=np.float32)
    for start in range(0, len(data), 100_000):
        block = data[rows] @ data[start:start + 100_000].T
        own = (rows >= start) & (rows < start + 100_000)
        block[np.flatnonzero(own), rows[own] - start] = -1
        best = np.maximum(best, block.max(axis=1))
    return [round(float(v), 3) for v in np.percentile(best, [50, 90, 99, 100])]


def child_run(args: argparse.Namespace) -> int:
    """One `shared.duplicates.run` over the loaded index (in its own process, so its peak memory is the run's)."""
    import redis

    from shared.backends.base import neighbours_by_search
    from shared.backends.pgvector import PgVectorBackend
    from shared.duplicates import DuplicateStore, RunState, run

    class CountingStore(DuplicateStore):
        recorded = 0

        def save_progress(self, state: RunState, pairs: Any) -> None:
            CountingStore.recorded += len(pairs)
            super().save_progress(state, pairs)

    backend = PgVectorBackend(args.database_url, ef_search=args.ef_search, index_type=args.index_type,
                              pool_size=args.threads + 2)
    if args.path == "single":  # the path before `neighbours`: one search (a transaction, every column) per image
        backend.neighbours = functools.partial(neighbours_by_search, backend)  # type: ignore[method-assign]
    total = backend.count()
    store = CountingStore(redis.Redis.from_url(args.redis_url))
    state = RunState(job_id=uuid.uuid4().hex, threshold=args.threshold, k=args.k)
    store.begin(state)
    started = last = time.perf_counter()
    marks = {"search_done": started}

    def on_batch(state: RunState, searched: int) -> None:
        nonlocal last
        now = marks["search_done"] = time.perf_counter()
        if now - last >= args.progress_every:
            rate = state.searched / (now - started)
            print(f"  {state.searched:,}/{total:,} searched, {rate:.0f} img/s, {CountingStore.recorded:,} pairs, "
                  f"~{(total - state.searched) / rate / 60:.1f} min left, rss {_rss_mb():.0f} MB",
                  file=sys.stderr, flush=True)
            last = now

    groups = run(backend, store, state, on_batch=on_batch, threads=args.threads, batch_size=args.batch_size)
    finished = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    backend.close()
    print(json.dumps({"searched": state.searched, "seconds": round(finished - started, 1),
                      "search_s": round(marks["search_done"] - started, 1),
                      "group_publish_s": round(finished - marks["search_done"], 1),
                      "img_s": round(state.searched / (finished - started), 1),
                      "peak_rss_mb": round(_peak_rss_mb()), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                      "pairs_recorded": CountingStore.recorded, "groups": len(groups),
                      "images_in_groups": sum(len(g.members) for g in groups)}))
    return 0


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: getrusage's ru_maxrss would count the parent's memory at the
    fork that started it)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def postgres_cpu_s(work: Path) -> float | None:
    """CPU seconds used so far by the private PostgreSQL under `work` (the postmaster, its live processes and
    those it has reaped); None with `--database-url`."""
    import psutil

    pid_file = work / "pg" / "postmaster.pid"
    if not pid_file.is_file():
        return None
    postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
    times = postmaster.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for process in postmaster.children(recursive=True):
        try:
            own = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += own.user + own.system
    return total


def planted_recall(groups: list[Any], planted: list[list[int]], base: int) -> dict[str, Any]:
    """How the found groups (ids are `bench_search.record`'s hex row numbers) match the planted ones."""
    where = {int(m.id, 16): g for g, group in enumerate(groups) for m in group.members}
    whole = exact = pairs = total_pairs = 0
    for members in planted:
        found = [where.get(m) for m in members]
        if found[0] is not None and all(f == found[0] for f in found):
            whole += 1
            exact += len(groups[found[0]].members) == len(members)
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                total_pairs += 1
                pairs += found[a] is not None and found[a] == found[b]
    planted_rows = {m for members in planted for m in members}
    return {"planted_groups": len(planted), "recovered_whole": round(whole / len(planted), 4),
            "recovered_exactly": round(exact / len(planted), 4), "planted_pair_recall": round(pairs / total_pairs, 4),
            "unplanted_images_grouped": sum(1 for row in where if row not in planted_rows),
            "keeper_is_source": round(sum(1 for members in planted if (g := where.get(members[0])) is not None
                                          and groups[g].keeper == f"{members[0]:064x}") / len(planted), 4),
            "largest_group": max((len(g.members) for g in groups), default=0), "base_rows": base}


def run_vectors(args: argparse.Namespace) -> int:
    import redis

    from scripts.bench_search import load_and_index, open_backend
    from scripts.devservices import start_redis, stop
    from shared.duplicates import DuplicateStore
    from shared.types import ModelInfo

    started = time.perf_counter()
    data = background(args.vectors, args.dim, seed=args.seed, latent=args.latent, clusters=args.clusters,
                      spread=args.spread)
    planted = plant(data, seed=args.seed)
    base = min(members[1] for members in planted)
    print(f"{len(data):,} vectors × {args.dim}, {len(planted):,} planted groups ({len(data) - base:,} copies) "
          f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    shape = nearest_unrelated(data[:base], args.nn_sample, args.seed) if args.nn_sample else None
    if shape:
        print(f"nearest unrelated neighbour, cosine p50/p90/p99/max: {shape}", file=sys.stderr, flush=True)
    results = []
    cleanups: list = []
    with tempfile.TemporaryDirectory(prefix="proxima-bench-duplicates-") as tmp:
        work = args.workdir or Path(tmp)
        try:
            args.clients = max(args.threads)  # open_backend's pool size
            args.backend, args.filter_selectivity, args.rerank, args.chunks = "pgvector", [], 0, 1
            backend, params = open_backend(args, work, cleanups)
            backend.ensure_schema(ModelInfo("bench", "random", args.dim))
            load_s = index_s = None
            if args.workdir and backend.count() == len(data):
                print("reusing the loaded and indexed data in --workdir", file=sys.stderr)
            else:
                load_s, index_s = load_and_index(backend, data, data[:1], args, np.ones(len(data)))
            backend.close()
            url = backend.url  # type: ignore[attr-defined]  # a PgVectorBackend
            del data
            redis_proc, redis_url = start_redis(work / "redis")
            cleanups.append(lambda: stop(redis_proc))
            client = redis.Redis.from_url(redis_url)
            for path, threads, ef_search in itertools.product(args.path, args.threads, args.ef_search_values):
                client.flushall()
                client.config_resetstat()
                command = [sys.executable, __file__, "--child", "--database-url", url, "--redis-url", redis_url,
                           "--threads", str(threads), "--ef-search", str(ef_search), "--index-type",
                           args.index_type, "--batch-size", str(args.batch_size), "--k", str(args.k),
                           "--threshold", str(args.threshold), "--path", path]
                print(f"run: {path}, threads {threads}, ef_search {ef_search}", file=sys.stderr, flush=True)
                postgres_before = postgres_cpu_s(work)
                child = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
                result = {"path": path, "threads": threads, "ef_search": ef_search,
                          **json.loads(child.stdout.strip().splitlines()[-1])}
                if postgres_before is not None:
                    postgres_s = (postgres_cpu_s(work) or 0) - postgres_before
                    per_image = (postgres_s + result["cpu_s"]) / max(1, result["searched"])
                    result.update(postgres_cpu_s=round(postgres_s, 1),
                                  cpu_ms_per_image=round(1000 * per_image, 2),
                                  # what the run would take with two cores all its own, busy throughout
                                  two_core_estimate_s=round(per_image * result["searched"] / 2, 1))
                redis_peak = client.info("memory")["used_memory_peak"]
                groups = DuplicateStore(client).page(0, 10**9)
                result.update(redis_peak_mb=round(redis_peak / 2**20), **planted_recall(groups, planted, base))
                results.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
        finally:
            for cleanup in reversed(cleanups):
                cleanup()
    print(json.dumps({"vectors": args.vectors, "dim": args.dim, "load_s": round(load_s, 1) if load_s else None,
                      "index_s": round(index_s, 1) if index_s else None, "threshold": args.threshold, "k": args.k,
                      "nearest_unrelated_p50_p90_p99_max": shape, "params": params, "runs": results}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quality", action="store_true", help="precision and recall on real photos")
    p.add_argument("--extractors", type=int, default=len(EXTRACTORS),
                   help="--quality: only the first N of Lite0, Lite1, Lite2, ViT-B-32 (random)")
    p.add_argument("--runtime", default="auto", help="--quality: EMBED_RUNTIME for every extractor")
    p.add_argument("--data-dir", type=Path, default=Path("/tmp/proxima-bench-quality"),
                   help="--quality: models' export cache")
    p.add_argument("--json", type=Path, help="--quality: write the figures here too")
    p.add_argument("--embeddings", type=Path, help="--quality: keep the set's labels and vectors here (a re-run "
                   "with the same folder measures them again without embedding)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    p.add_argument("--vectors", type=int, help="speed: this many synthetic vectors (copies included)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latent", type=int, default=32, help="generated data: intrinsic dimension (as bench_search)")
    p.add_argument("--clusters", type=int, default=1000, help="generated data: mixture components (as bench_search)")
    p.add_argument("--spread", type=float, default=0.6,
                   help="generated data: norm of the isotropic noise added to clustered() (see `background`)")
    p.add_argument("--nn-sample", type=int, default=500,
                   help="rows whose exact nearest unrelated neighbour is reported (0: skip)")
    p.add_argument("--threads", type=lambda s: [int(v) for v in s.split(",")], default=[4],
                   help="search threads of the run, comma-separated to try several (default 4, the job's)")
    p.add_argument("--ef-search", dest="ef_search_values", type=lambda s: [int(v) for v in s.split(",")],
                   default=[150], help="pgvector hnsw.ef_search of the run's searches, comma-separated")
    p.add_argument("--path", type=lambda s: s.split(","), default=["batched"],
                   help="single (one search per image, the old path), batched (`neighbours`, the job's), or both: "
                   "single,batched runs each on the same database")
    p.add_argument("--k", type=int, default=DEFAULT_NEIGHBOURS)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=96)
    p.add_argument("--index-type", default="halfvec", choices=["vector", "halfvec"])
    p.add_argument("--build-workers", type=int, default=2)
    p.add_argument("--maintenance-work-mem", default="8GB")
    p.add_argument("--shared-buffers", default="4GB")
    p.add_argument("--database-url", help="an existing PostgreSQL (default: a private embedded one)")
    p.add_argument("--workdir", type=Path, help="keep the private database here; a re-run with the same data "
                   "skips loading and indexing")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--redis-url", help=argparse.SUPPRESS)
    p.add_argument("--progress-every", type=float, default=30.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if set(args.path) - {"single", "batched"}:
        p.error("--path takes single, batched or both")
    if args.child:
        args.path = args.path[0]
        args.ef_search = args.ef_search_values[0]
        args.threads = args.threads[0]
        return child_run(args)
    if args.quality:
        return run_quality(args)
    if args.vectors:
        args.ef_search = args.ef_search_values[0]  # open_backend's; each run sets its own
        return run_vectors(args)
    p.error("--quality or --vectors N")
    return 2


if __name__ == "__main__":
    sys.exit(main())
