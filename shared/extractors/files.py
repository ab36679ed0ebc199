"""Helpers every extractor shares: checkpoint paths, their stamps, seeded random weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RANDOM_SEED = 20261124  # MODEL_PRETRAINED=random: the same weights in every process


def looks_like_path(value: str) -> bool:
    """Whether MODEL_PRETRAINED names a file rather than a tag."""
    return "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def weights_stamp(pretrained: str) -> str:
    """A checkpoint file's path, size and modification time (a replaced file makes an export stale)."""
    if not looks_like_path(pretrained):
        return pretrained
    stat = Path(pretrained).stat()
    return f"{Path(pretrained).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


@contextmanager
def seeded() -> Iterator[None]:
    """Model construction inside gets the same random weights in every process (torch's global RNG restored)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        yield
