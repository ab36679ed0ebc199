"""Content-addressed image files under `$DATA_DIR/images/`.

An image's id is the SHA-256 hex digest of its bytes; the file lives at `ab/cd/<id>` (two fan-out
levels keep directories small at a million images). Small WebP thumbnails for result pages are made on
first use under `.thumbs/`. Writes go to a temporary file in the same
filesystem and are renamed into place, so a reader never sees half a file. Paths are derived only from
validated ids, never from anything a client sent.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from shared.imaging import thumbnail_webp

_ID_RE = re.compile(r"[0-9a-f]{64}")
THUMBNAIL_SIDE = 320


def is_image_id(value: str) -> bool:
    return bool(_ID_RE.fullmatch(value))


def image_id_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._thumbs = self.root / ".thumbs"

    def path(self, image_id: str) -> Path:
        """Where the image with this id lives; raises ValueError for anything but a SHA-256 hex id."""
        if not is_image_id(image_id):
            raise ValueError(f"malformed image id {image_id[:80]!r}: expected 64 lowercase hex characters")
        return self.root / image_id[:2] / image_id[2:4] / image_id

    def exists(self, image_id: str) -> bool:
        return is_image_id(image_id) and self.path(image_id).is_file()

    def put(self, data: bytes, *, sync: bool = True) -> tuple[str, bool]:
        """Store `data`; returns (id, created). Storing the same bytes again writes nothing.

        `sync=False` skips the per-file fsync: the caller calls `sync_all()` once for a whole batch.
        """
        image_id = image_id_of(data)
        target = self.path(image_id)
        if target.is_file():
            return image_id, False
        self._write(target, data, sync=sync)
        return image_id, True

    def _write(self, target: Path, data: bytes, *, sync: bool) -> None:
        """Write through a temporary file and rename, so readers never see half a file."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="up-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if sync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    @staticmethod
    def sync_all() -> None:
        """Make every file written with `sync=False` durable (one sync for a batch, not one per file)."""
        os.sync()

    def iter_ids(self) -> Iterator[str]:
        """Every stored image id, in sorted order, one directory at a time (flat memory at any size)."""

        def subdirs(path: Path) -> list[Path]:
            return sorted(e for e in path.iterdir() if e.is_dir() and len(e.name) == 2 and not e.name.startswith("."))

        for top in subdirs(self.root) if self.root.is_dir() else ():
            for sub in subdirs(top):
                yield from sorted(e.name for e in os.scandir(sub) if e.is_file() and is_image_id(e.name))

    def iter_id_batches(self, size: int) -> Iterator[list[str]]:
        """`iter_ids` in lists of `size` (the last one shorter)."""
        batch: list[str] = []
        for image_id in self.iter_ids():
            batch.append(image_id)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def thumbnail(self, image_id: str, side: int = THUMBNAIL_SIDE) -> Path:
        """A WebP thumbnail of a stored image, made on first use. FileNotFoundError if the image is not
        stored, ImageError if it cannot be decoded."""
        target = self._thumbs / image_id[:2] / f"{image_id}-{side}.webp"
        if not target.is_file():
            # no fsync: a lost thumbnail is simply made again
            self._write(target, thumbnail_webp(self.path(image_id), side), sync=False)
        return target

    def delete(self, image_id: str) -> bool:
        for thumb in (self._thumbs / image_id[:2]).glob(f"{image_id}-*.webp") if is_image_id(image_id) else ():
            thumb.unlink(missing_ok=True)
        try:
            self.path(image_id).unlink()
        except FileNotFoundError:
            return False
        return True
