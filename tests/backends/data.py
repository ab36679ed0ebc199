"""Vectors that look like real embeddings: a Gaussian mixture in a low-dimensional latent space."""

from __future__ import annotations

import numpy as np

from shared.backends import ImageRecord


def clustered(n: int, dim: int, *, seed: int = 0, latent: int = 24, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, latent)) * 3
    points = centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, latent))
    mixed = points @ rng.normal(size=(latent, dim)) + 0.05 * rng.normal(size=(n, dim))
    return (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)


def records(n: int, *, start: int = 0, model: str = "test/model") -> list[ImageRecord]:
    return [
        ImageRecord(id=f"{i:064x}", filename=f"img-{i}.jpg", size_bytes=1000 + i, format="JPEG",
                    width=640 + i % 7, height=480, model=model)
        for i in range(start, start + n)
    ]
