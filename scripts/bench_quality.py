"""Search quality of the extractors on real photos, with real pretrained weights, side by side.

    python scripts/bench_quality.py                 # full sets (figures in docs/benchmarks.md)
    python scripts/bench_quality.py --small         # a quick look
    python scripts/bench_quality.py --json out.json

The sets (scripts/photosets.py, Debian packages fetched once into a cache):
- category retrieval: Tux Paint's photo stamps (325 in 26 categories, the folder is the label);
  precision@1/5/10, leave-one-out; against a colour histogram and the chance level.
- near-duplicate retrieval: the stamps and the 13 mate-backgrounds photographs (no larger than 1024 px) are
  indexed; copies of each (scripts/quality.py TRANSFORMS) search them; recall@1 per transform, reported for
  the photographs and the stamps apart.

Models: EfficientNet-Lite0/1/2 with their ImageNet weights, Lite0 with seeded random weights, and open_clip's
ViT-B-32 with seeded random weights (no CLIP weights can be had offline). With `--variants`, Lite0 is also
measured with ImageNet's mean/std instead of its own normalisation, and with other ways of fitting the image
into the square input (squash, pad), which set the defaults. Speed: model-only images/s on this machine's
CPU (the configured EMBED_RUNTIME; batches of 32).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import quality  # noqa: E402
from scripts.photosets import labelled_stamps, real_photos  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.embedder import Embedder, load_embedder  # noqa: E402

LITE = "efficientnet_lite"
MODELS = [(LITE, "efficientnet-lite0", "imagenet"), (LITE, "efficientnet-lite1", "imagenet"),
          (LITE, "efficientnet-lite2", "imagenet"), (LITE, "efficientnet-lite0", "random"),
          ("open_clip", "ViT-B-32", "random")]


def squash(image: Image.Image, size: int) -> np.ndarray:
    """The whole image stretched to size×size (aspect not kept)."""
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def pad(image: Image.Image, size: int) -> np.ndarray:
    """The whole image fitted inside size×size, centred on white (letterbox)."""
    scale = size / max(image.size)
    fitted = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                          Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def imagenet_normalised(settings: Settings) -> Embedder:
    """Lite0 in torch with ImageNet's mean/std instead of the TensorFlow models' (pixel - 127) / 128."""
    from shared.extractors.efficientnet import EfficientNetLite
    from shared.runtime import TorchTowers, cpu_budget

    extractor = replace(EfficientNetLite.from_settings(settings), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    image, _ = extractor.towers("cpu", "fp32")
    towers = TorchTowers(image, None, "cpu", "f32", cpu_budget())
    return Embedder(towers, None, extractor.info, extractor.image_size, "cpu")


def speed(model: Embedder, image_size: int) -> float:
    batch = np.random.default_rng(0).integers(0, 256, (32, image_size, image_size, 3), dtype=np.uint8)
    model.encode_images(batch)
    started, n = time.perf_counter(), 0
    while time.perf_counter() - started < 3:
        model.encode_images(batch)
        n += len(batch)
    return n / (time.perf_counter() - started)


def build_sets(*, small: bool) -> dict[str, Any]:
    """The images, labels and transformed copies every model is measured on (small: every 3rd stamp, and
    copies of every 4th)."""
    stamps = labelled_stamps()[:: 3 if small else 1]
    photos = [quality.load(p, max_side=1024) for p in real_photos()]
    stamp_images = [quality.load(p) for p, _ in stamps]
    queried_photos = list(range(len(photos)))
    queried_stamps = [len(photos) + i for i in range(0, len(stamps), 4 if small else 1)]
    originals = photos + stamp_images
    return {"stamp_images": stamp_images, "labels": [c for _, c in stamps], "photos": photos,
            "queried_photos": queried_photos, "queried_stamps": queried_stamps,
            "copies_photos": quality.copies_of(originals, queried_photos),
            "copies_stamps": quality.copies_of(originals, queried_stamps)}


def measure(name: str, model: Any, sets: dict[str, Any], prepare=quality.to_model_input) -> dict[str, Any]:
    started = time.perf_counter()
    stamps = quality.embed(model, sets["stamp_images"], prepare)
    row: dict[str, Any] = {"model": name, **{f"p@{k}": round(quality.precision_at_k(stamps, sets["labels"], k), 3)
                                            for k in (1, 5, 10)}}
    index = np.concatenate([quality.embed(model, sets["photos"], prepare), stamps])
    for group in ("photos", "stamps"):
        recall = quality.near_duplicate_recall(model, index, sets[f"copies_{group}"], sets[f"queried_{group}"],
                                               prepare)
        row[f"recall_{group}"] = {k: round(v, 3) for k, v in recall.items()}
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="every 3rd stamp; fewer copies")
    parser.add_argument("--variants", action="store_true", help="also Lite0 with other normalisation and fits")
    parser.add_argument("--runtime", default="auto", help="EMBED_RUNTIME for every model (default auto)")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/proxima-bench-quality"))
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    sets = build_sets(small=args.small)
    print(f"{len(sets['labels'])} stamps in {len(set(sets['labels']))} categories; near-duplicates: "
          f"{len(sets['photos'])} photos + {len(sets['queried_stamps'])} stamps queried x {len(quality.TRANSFORMS)} "
          "transforms", flush=True)
    stamp_images = sets["stamp_images"]
    rows = [{"model": "colour histogram",
             **{f"p@{k}": round(quality.precision_at_k(quality.colour_histograms(stamp_images), sets["labels"], k), 3)
                for k in (1, 5, 10)}},
            {"model": "chance", "p@5": round(quality.chance_precision(sets["labels"]), 3)}]
    for extractor, name, pretrained in MODELS:
        settings = Settings.explicit(extractor=extractor, model_name=name, model_pretrained=pretrained, device="cpu",
                                     embed_runtime=args.runtime, data_dir=args.data_dir)
        model = load_embedder(settings)
        row = measure(f"{name} {pretrained}", model, sets)
        row.update(dim=model.info.dim, runtime=f"{model.runtime} {model.precision}",
                   cpu_img_s=round(speed(model, model.image_size), 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.variants and name == "efficientnet-lite0" and pretrained == "imagenet":
            for fit, prepare in (("squash", squash), ("pad", pad)):
                rows.append(measure(f"{name} {pretrained}, fit={fit}", model, sets, prepare))
                print(json.dumps(rows[-1]), flush=True)
            rows.append(measure(f"{name} {pretrained}, ImageNet mean/std (torch)", imagenet_normalised(settings), sets))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: category precision, near-duplicate recall@1 per transform (photos / stamps), speed."""
    names = list(quality.TRANSFORMS)
    lines = ["| model | p@1 | p@5 | p@10 | " + " | ".join(names) + " | CPU img/s |",
             "|" + " --- |" * (len(names) + 5)]
    for row in rows:
        cells = [row["model"], *(str(row.get(f"p@{k}", "")) for k in (1, 5, 10))]
        for n in names:
            photos, stamps = row.get("recall_photos", {}).get(n), row.get("recall_stamps", {}).get(n)
            cells.append("" if photos is None else f"{photos:.2f} / {stamps:.2f}")
        cells.append(str(row.get("cpu_img_s", "")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
