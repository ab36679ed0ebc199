"""Test data for backends: records, and (re-exported) embedding-like vectors."""

from __future__ import annotations

from scripts.synthetic import clustered
from shared.backends import ImageRecord

__all__ = ["clustered", "records"]


def records(n: int, *, start: int = 0, model: str = "test/model") -> list[ImageRecord]:
    return [
        ImageRecord(id=f"{i:064x}", filename=f"img-{i}.jpg", size_bytes=1000 + i, format="JPEG",
                    width=640 + i % 7, height=480, model=model)
        for i in range(start, start + n)
    ]
