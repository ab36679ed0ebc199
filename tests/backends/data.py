"""Test data for backends: records, and (re-exported) embedding-like vectors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from scripts.synthetic import clustered
from shared.backends import ImageRecord

__all__ = ["CAMERAS", "clustered", "records", "rich_records"]


def records(n: int, *, start: int = 0, model: str = "test/model") -> list[ImageRecord]:
    return [
        ImageRecord(id=f"{i:064x}", filename=f"img-{i}.jpg", size_bytes=1000 + i, format="JPEG",
                    width=640 + i % 7, height=480, model=model)
        for i in range(start, start + n)
    ]


CAMERAS = [("Canon", "Canon EOS 5D"), ("NIKON CORPORATION", "NIKON D750"), ("Apple", "iPhone 13"), ("", "")]


def rich_records(n: int, *, seed: int = 0, model: str = "test/model") -> list[ImageRecord]:
    """Records with every metadata field varied independently of the vectors (the hard case for a filter
    inside an ANN search): collections `half` / `tenth` / `hundredth` on about 50% / 10% / 1% of them, the
    same fractions as tags, capture times over 2020–2024 (10% without one), GPS on 30%, PNG on 10%, paths
    under `a/`…`j/`, cameras from CAMERAS."""
    rng = np.random.default_rng(seed)
    start = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
    span = datetime(2025, 1, 1, tzinfo=UTC).timestamp() - start
    out = []
    for i in range(n):
        u = rng.random(8)
        collections = tuple(name for name, p, x in (("half", 0.5, u[0]), ("tenth", 0.1, u[1]),
                                                    ("hundredth", 0.01, u[2])) if x < p)
        tags = tuple(name for name, p, x in (("sunset", 0.5, u[3]), ("beach", 0.1, u[4]), ("rare", 0.01, u[5]))
                     if x < p)
        make, model_name = CAMERAS[i % len(CAMERAS)]
        gps = u[6] < 0.3
        out.append(ImageRecord(
            id=f"{i:064x}", filename=f"img-{i}.jpg", size_bytes=1000 + i, format="PNG" if u[7] < 0.1 else "JPEG",
            width=int(rng.integers(200, 6000)), height=int(rng.integers(200, 4000)), model=model,
            created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i),
            captured_at=None if i % 10 == 9 else datetime.fromtimestamp(start + float(rng.random()) * span, UTC)
            .replace(microsecond=0),
            camera_make=make, camera_model=model_name,
            latitude=round(float(rng.uniform(-60, 70)), 6) if gps else None,
            longitude=round(float(rng.uniform(-170, 170)), 6) if gps else None,
            orientation=int(rng.integers(1, 9)), path=f"{'abcdefghij'[i % 10]}/{i % 100:02d}/img-{i}.jpg",
            collections=collections, tags=tags,
        ))
    return out
