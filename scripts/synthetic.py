"""Photo-like images made on the fly, for tests and benchmarks (no binary fixtures in the repo)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth colour field with a few shapes: compresses and resizes like a photograph."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-1, 1, 3)
        freq = rng.uniform(1, 4)
        channels.append(128 + 100 * np.sin(freq * (a * xx / w + b * yy / h) * np.pi + c * 3))
    img = Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8), "RGB")
    _shapes(img, rng)
    return img.filter(ImageFilter.GaussianBlur(1.2))


def variant(base: Image.Image, seed: int) -> Image.Image:
    """`base` with six shapes of its own on top: a distinct photo-like image at a fraction of photo()'s cost
    (for the thousands of 12-megapixel images a GPU benchmark needs)."""
    img = base.copy()
    _shapes(img, np.random.default_rng(seed))
    return img


def _shapes(img: Image.Image, rng: np.random.Generator) -> None:
    w, h = img.size
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.integers(0, w - 20), rng.integers(0, h - 20)
        x1, y1 = x0 + rng.integers(10, w // 2), y0 + rng.integers(10, h // 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (320, 240), quality: int = 90) -> bytes:
    return encode(photo(seed, size), "JPEG", quality=quality)


def clustered(n: int, dim: int, *, seed: int = 0, latent: int = 24, clusters: int = 40,
              chunk: int = 100_000) -> np.ndarray:
    """Unit vectors that look like real embeddings: a Gaussian mixture in a low-dimensional latent space,
    mapped linearly into `dim` dimensions plus a little noise (see shared notes: isotropic data in 512-d
    makes all neighbours equidistant and no index looks good or bad for the right reasons)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, latent)) * 3
    projection = rng.normal(size=(latent, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        points = (centres[rng.integers(0, clusters, m)] + rng.normal(size=(m, latent))).astype(np.float32)
        mixed = points @ projection + 0.05 * rng.normal(size=(m, dim)).astype(np.float32)
        out[start:start + m] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    return out


def jpeg_with_exif(image: Image.Image, *, when: str | None = "2021:05:01 14:30:00", offset: str | None = "+02:00",
                   make: str = "Canon", model: str = "Canon EOS 5D",
                   gps: tuple[float, float] | None = (40.4168, -3.7038)) -> bytes:
    """`image` as a JPEG whose EXIF says when (DateTimeOriginal, OffsetTimeOriginal), with which camera and
    where (GPS degrees/minutes/seconds) it was taken."""
    from fractions import Fraction

    def dms(value: float) -> tuple[Fraction, Fraction, Fraction]:
        degrees, rest = divmod(abs(value) * 3600, 3600)
        minutes, seconds = divmod(rest, 60)
        return Fraction(int(degrees)), Fraction(int(minutes)), Fraction(round(seconds * 100), 100)

    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = make, model
    if when:
        sub = exif.get_ifd(0x8769)
        sub[0x9003] = when
        if offset:
            sub[0x9011] = offset
    if gps:
        g = exif.get_ifd(0x8825)
        g[1], g[2] = ("N" if gps[0] >= 0 else "S"), dms(gps[0])
        g[3], g[4] = ("E" if gps[1] >= 0 else "W"), dms(gps[1])
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=85, exif=exif.tobytes())
    return out.getvalue()
