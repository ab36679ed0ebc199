"""Fill in the EXIF metadata of images indexed before Proxima read it (capture time, camera, GPS,
orientation), from their stored files, without re-embedding: each record is written back with its stored
vector (`upsert` keeps collections, tags and path). Safe to run while the system runs and to run again: a
record that already has metadata, or whose file has none, is left alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from shared.backends import ImageRecord, VectorBackend
from shared.imagestore import ImageStore
from shared.metadata import PhotoMetadata, read_metadata


@dataclass
class BackfillReport:
    seen: int = 0  # records read
    without: int = 0  # records with no metadata at all (those that were looked at)
    updated: int = 0  # records that got metadata from their file
    missing_files: int = 0  # records whose file is gone (`scripts/reconcile.py` reports them too)


def has_metadata(record: ImageRecord) -> bool:
    return bool(record.captured_at or record.camera_make or record.camera_model or record.has_gps
                or record.orientation != 1)


def backfill_metadata(backend: VectorBackend, images: ImageStore, *, batch_size: int = 500,
                      on_progress: Callable[[BackfillReport], None] = lambda report: None) -> BackfillReport:
    """Read the metadata of every record that has none from its stored file; write back those that gained
    some, in one upsert per batch, with their stored vectors."""
    report = BackfillReport()
    for records, vectors in backend.scan(batch_size):
        report.seen += len(records)
        changed, keep = [], []
        for i, record in enumerate(records):
            if has_metadata(record):
                continue
            report.without += 1
            path = images.path(record.id)
            if not path.is_file():
                report.missing_files += 1
                continue
            found = read_metadata(path)
            if found != PhotoMetadata():
                changed.append(dataclasses.replace(record, **dataclasses.asdict(found)))
                keep.append(i)
        if changed:
            backend.upsert(changed, vectors[keep])
            report.updated += len(changed)
        on_progress(report)
    return report
