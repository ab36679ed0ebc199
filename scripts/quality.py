"""Search quality on real photos: category retrieval and near-duplicate retrieval, for any loaded model.

Used by `scripts/bench_quality.py` (full sets, figures in docs/benchmarks.md) and `tests/test_quality.py`
(small sets). Images go through the same code as in the service: `load_image` on encoded bytes (so an EXIF
rotation is undone as it would be for an upload), `to_model_input`, `Embedder.encode_images`.

- category retrieval: every labelled image queries all others; precision@k is the share of the k nearest
  that have its label (leave-one-out), averaged over queries.
- near-duplicate retrieval: the originals are indexed; each transformed copy queries them; recall@1 is the
  share of copies whose nearest original is their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from scripts.synthetic import encode
from shared.imaging import load_image, to_model_input

BATCH = 32


class ImageEncoder(Protocol):
    image_size: int

    def encode_images(self, pixels: Sequence[np.ndarray]) -> np.ndarray: ...


def _jpeg(image: Image.Image, quality: int = 95, **options: object) -> bytes:
    return encode(image, "JPEG", quality=quality, **options)


def _centre_crop(image: Image.Image, share: float = 0.88) -> Image.Image:
    width, height = image.size
    w, h = round(width * share), round(height * share)
    left, top = (width - w) // 2, (height - h) // 2
    return image.crop((left, top, left + w, top + h))


def _exif_rotated(image: Image.Image) -> bytes:
    """Stored sideways with EXIF orientation 6 ("rotate 90° clockwise to view"), as phones do."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(image.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())


# Each takes the upright original and returns the bytes of a copy, as a user would upload it.
TRANSFORMS: dict[str, Callable[[Image.Image], bytes]] = {
    "half_size": lambda im: _jpeg(im.resize((max(1, im.width // 2), max(1, im.height // 2)),
                                            Image.Resampling.LANCZOS)),
    "jpeg_q30": lambda im: _jpeg(im, quality=30),
    "png": lambda im: encode(im, "PNG"),
    "crop_88": lambda im: _jpeg(_centre_crop(im)),
    "brighter_30": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(1.3)),
    "darker_30": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(0.7)),
    "exif_rotated": _exif_rotated,
    "mirrored": lambda im: _jpeg(ImageOps.mirror(im)),
    "grayscale": lambda im: _jpeg(ImageOps.grayscale(im)),
}


def load(data: bytes | Path, max_side: int = 0) -> Image.Image:
    """Decode like the service (upright RGB, alpha on white); optionally no larger than `max_side`."""
    image = load_image(data).image
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def embed(model: ImageEncoder, images: Sequence[Image.Image],
          prepare: Callable[[Image.Image, int], np.ndarray] = to_model_input) -> np.ndarray:
    """Unit vectors of the images, through `prepare` (the service's resize and centre crop by default)."""
    out = [model.encode_images([prepare(im, model.image_size) for im in images[i:i + BATCH]])
           for i in range(0, len(images), BATCH)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def precision_at_k(vectors: np.ndarray, labels: Sequence[str], k: int) -> float:
    """Leave-one-out precision@k of cosine retrieval (rows are unit vectors)."""
    labels_ = np.asarray(labels)
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    nearest = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((labels_[nearest] == labels_[:, None]).mean())


def chance_precision(labels: Sequence[str]) -> float:
    """precision@k of a random ranking: the mean share of the other images that have the query's label."""
    labels_ = np.asarray(labels)
    same = (labels_[:, None] == labels_[None, :]).sum(axis=1) - 1
    return float((same / (len(labels_) - 1)).mean())


def recall_at_1(index: np.ndarray, queries: np.ndarray, targets: Sequence[int]) -> float:
    """Share of queries whose nearest indexed vector is their target row."""
    return float((np.argmax(queries @ index.T, axis=1) == np.asarray(targets)).mean())


def colour_histograms(images: Sequence[Image.Image], bins: int = 8) -> np.ndarray:
    """The baseline: a joint RGB histogram (bins³), square-rooted (Hellinger) and scaled to unit length."""
    out = []
    for image in images:
        pixels = np.asarray(image.convert("RGB").resize((128, 128)), dtype=np.int64) * bins // 256
        codes = (pixels[..., 0] * bins + pixels[..., 1]) * bins + pixels[..., 2]
        hist = np.sqrt(np.bincount(codes.ravel(), minlength=bins**3).astype(np.float64))
        out.append(hist / np.linalg.norm(hist))
    return np.asarray(out, dtype=np.float32)


def copies_of(originals: Sequence[Image.Image], queried: Sequence[int]) -> dict[str, list[Image.Image]]:
    """Per transform, the decoded copies of `originals[i]` for i in `queried` (made once, reused per model)."""
    return {name: [load(transform(originals[i])) for i in queried] for name, transform in TRANSFORMS.items()}


def near_duplicate_recall(model: ImageEncoder, index: np.ndarray, copies: dict[str, list[Image.Image]],
                          queried: Sequence[int],
                          prepare: Callable[[Image.Image, int], np.ndarray] = to_model_input) -> dict[str, float]:
    """recall@1 per transform: each copy of `originals[i]` searches the originals' vectors `index`."""
    return {name: recall_at_1(index, embed(model, images, prepare), queried) for name, images in copies.items()}
