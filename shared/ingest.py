"""Folder ingest: walk a directory tree and hand its images to the workers, a batch of paths at a time.

The walk streams (`os.scandir`, one directory at a time, nothing proportional to the number of files is
kept), recognises images by their first bytes, and skips files it has indexed before: a manifest maps
(path, size, mtime) to the image id, so an unchanged file costs one `stat` on the next run. Batches of
paths go to the queue only while it holds fewer than `max_queued` batches (backpressure), so the first
batches are embedded while the walk goes on and Redis never holds a million messages.

Workers read each file, hash it, copy it into the content-addressed store, and report back through the
job record and the manifest (`shared.pipeline.ingest_files`).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import redis

from shared.backends import VectorBackend
from shared.decode import Decoder
from shared.embedder import Embedder
from shared.imagestore import ImageStore
from shared.imaging import describe_non_image, sniff
from shared.jobs import JobStore, wait_to_send
from shared.pipeline import Enqueue, Pending, add_to_collections, embed_pending, indexed_ids
from shared.types import BatchResult, FileError, PathNotAllowed, StageTimes

_CHUNK = 512  # files looked up in the manifest (and backend) per round trip


@dataclass(frozen=True)
class FileRef:
    path: str  # absolute
    size: int
    mtime_ns: int

    def as_item(self, base: str = "", collections: Sequence[str] = ()) -> dict:
        """The queue item of this file: with its path relative to `base` (kept as metadata) and the
        collections its images go into."""
        item: dict = {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}
        if base:
            item["rel"] = os.path.relpath(self.path, base)
        if collections:
            item["collections"] = list(collections)
        return item


def ingest_base(folder: Path, roots: Sequence[Path] | None) -> Path:
    """What stored paths are relative to: the allowed root holding `folder` (so two ingests under one root
    agree on paths), else the folder itself."""
    real = Path(os.path.realpath(folder))
    for root in roots or ():
        real_root = Path(os.path.realpath(root))
        if real == real_root or real_root in real.parents:
            return real_root
    return real


def resolve_under(path: str | Path, roots: Sequence[Path]) -> Path:
    """`path` with symlinks resolved, if it lies under one of `roots`; raises PathNotAllowed otherwise."""
    if "\x00" in str(path):
        raise PathNotAllowed("path contains a NUL byte")
    real = Path(os.path.realpath(path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if real == real_root or real_root in real.parents:
            return real
    allowed = ", ".join(str(r) for r in roots) or "none configured (set INGEST_ROOTS)"
    raise PathNotAllowed(f"{str(path)[:300]!r} is not under an allowed ingest root ({allowed})")


def iter_files(root: Path, *, recursive: bool, roots: Sequence[Path] | None = None,
               on_skip: Callable[[str], None] = lambda reason: None) -> Iterator[FileRef]:
    """Regular files under `root`, depth first, in directory order. Directory symlinks are not followed;
    file symlinks are, if `roots` is None or their target stays under `roots`."""
    stack = [str(root)]
    while stack:
        directory = stack.pop()
        try:
            entries = os.scandir(directory)
        except OSError as exc:
            on_skip(f"unreadable directory ({exc.strerror or exc})")
            continue
        subdirs = []
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if recursive:
                            subdirs.append(entry.path)
                        continue
                    if entry.is_symlink():
                        if roots is not None:
                            try:
                                resolve_under(entry.path, roots)
                            except PathNotAllowed:
                                on_skip("symlink pointing outside the allowed roots")
                                continue
                        st = os.stat(entry.path)
                    else:
                        st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    on_skip(f"unreadable ({exc.strerror or exc})")
                    continue
                if not stat.S_ISREG(st.st_mode):
                    on_skip("not a regular file")
                    continue
                yield FileRef(os.path.abspath(entry.path), st.st_size, st.st_mtime_ns)
        stack.extend(reversed(sorted(subdirs)))


# --- manifests: (path, size, mtime) → image id of files indexed before ---------------------------------


class Manifest(Protocol):
    def lookup(self, files: Sequence[FileRef]) -> list[str | None]:
        """The image id of each file if it was indexed with this same size and mtime, else None."""

    def record(self, entries: Sequence[tuple[FileRef, str]]) -> None:
        """Remember that these files were indexed as these image ids."""


class RedisManifest:
    """In Redis, shared by the walker and every worker: ~70 bytes per file, spread over 65,536 small hashes
    (Redis stores small hashes compactly). No expiry: it is what makes a re-run cheap."""

    _PREFIX = "proxima:manifest:"

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def _key(self, path: str) -> tuple[str, bytes]:
        digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=12).digest()
        return self._PREFIX + digest[:2].hex(), digest[2:]

    def lookup(self, files: Sequence[FileRef]) -> list[str | None]:
        with self.redis.pipeline(transaction=False) as pipe:
            for f in files:
                pipe.hget(*self._key(f.path))
            values = pipe.execute()
        out: list[str | None] = []
        for f, value in zip(files, values, strict=True):
            if value and len(value) == 48:
                size, mtime_ns, raw_id = struct.unpack(">qq32s", value)
                out.append(raw_id.hex() if (size, mtime_ns) == (f.size, f.mtime_ns) else None)
            else:
                out.append(None)
        return out

    def record(self, entries: Sequence[tuple[FileRef, str]]) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            for f, image_id in entries:
                pipe.hset(*self._key(f.path), struct.pack(">qq32s", f.size, f.mtime_ns, bytes.fromhex(image_id)))
            pipe.execute()


class SqliteManifest:
    """A local file, for ingesting into a remote API (`--api`) where Redis is out of reach."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
                         "mtime_ns INTEGER, image_id TEXT)")
        self._lock = threading.Lock()

    def lookup(self, files: Sequence[FileRef]) -> list[str | None]:
        out: list[str | None] = []
        with self._lock:
            for f in files:
                row = self._db.execute("SELECT size, mtime_ns, image_id FROM files WHERE path = ?",
                                       (f.path,)).fetchone()
                out.append(row[2] if row and (row[0], row[1]) == (f.size, f.mtime_ns) else None)
        return out

    def record(self, entries: Sequence[tuple[FileRef, str]]) -> None:
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                                 [(f.path, f.size, f.mtime_ns, image_id) for f, image_id in entries])

    def close(self) -> None:
        self._db.close()


# --- the walk ---------------------------------------------------------------------------------------


@dataclass
class WalkStats:
    seen: int = 0
    queued: int = 0
    duplicates: int = 0  # unchanged since an earlier run and still indexed
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    walking: bool = True


def walk_folder(
    root: Path,
    job_id: str,
    *,
    recursive: bool,
    batch_size: int,
    jobs: JobStore,
    backend: VectorBackend,
    manifest: Manifest,
    enqueue: Enqueue,
    queue_depth: Callable[[], int],
    max_queued: int,
    roots: Sequence[Path] | None = None,
    on_progress: Callable[[WalkStats], None] = lambda stats: None,
    stop: threading.Event | None = None,
    collections: Sequence[str] = (),
) -> WalkStats:
    """Walk `root`, queue its new images as path batches of job `job_id`, and seal the job at the end.
    Each image keeps its path relative to `ingest_base(root, roots)` and goes into `collections` (images
    indexed by an earlier run are added to them here, without being queued).

    The job is sealed even when the walk is stopped or fails, so it completes with what was queued; a later
    run picks up the rest.
    """
    stats = WalkStats()
    last = WalkStats()  # what the job record has been told so far
    batch: list[dict] = []
    pending: list[FileRef] = []
    batch_no = 0
    base = str(ingest_base(root, roots))

    def skip(reason: str) -> None:
        stats.skipped += 1
        stats.reasons[reason] += 1

    def skip_unlisted(reason: str) -> None:  # files iter_files could not even list
        stats.seen += 1
        skip(reason)

    def report(seal: bool = False) -> None:
        jobs.add_found(job_id, seen=stats.seen - last.seen, skipped=stats.skipped - last.skipped,
                       duplicates=stats.duplicates - last.duplicates, reasons=dict(stats.reasons - last.reasons),
                       seal=seal)
        last.seen, last.skipped, last.duplicates = stats.seen, stats.skipped, stats.duplicates
        last.reasons = stats.reasons.copy()
        on_progress(stats)

    def send(items: list[dict]) -> None:
        nonlocal batch_no
        wait_to_send(jobs, job_id, queue_depth=queue_depth, max_queued=max_queued, stop=stop)
        jobs.add(job_id, counts={"total": len(items)})
        enqueue(job_id, f"w{batch_no}", items)
        batch_no += 1
        stats.queued += len(items)

    def flush_pending() -> None:
        wait_to_send(jobs, job_id, stop=stop)  # paused: the walk waits too; cancelled: it ends
        known = manifest.lookup(pending)
        still_indexed = indexed_ids(backend, [i for i in known if i])
        add_to_collections(backend, sorted(still_indexed), collections)
        for ref, image_id in zip(pending, known, strict=True):
            if image_id and image_id in still_indexed:
                stats.duplicates += 1
                continue
            try:
                with open(ref.path, "rb") as fh:
                    head = fh.read(32)
            except OSError as exc:
                skip(f"unreadable ({exc.strerror or exc})")
                continue
            if sniff(head) is None:
                skip("not an image: " + describe_non_image(head))
                continue
            batch.append(ref.as_item(base, collections))
            if len(batch) >= batch_size:
                send(batch.copy())
                batch.clear()
        pending.clear()
        report()

    try:
        for ref in iter_files(root, recursive=recursive, roots=roots, on_skip=skip_unlisted):
            if stop is not None and stop.is_set():
                raise InterruptedError
            stats.seen += 1
            if ref.size == 0:
                skip("empty file (0 bytes)")
                continue
            pending.append(ref)
            if len(pending) >= _CHUNK:
                flush_pending()
        if pending:
            flush_pending()
        if batch:
            send(batch.copy())
            batch.clear()
    finally:
        stats.walking = False
        report(seal=True)
    return stats


# --- the worker side --------------------------------------------------------------------------------


def ingest_files(
    items: Sequence[dict],
    *,
    images: ImageStore,
    backend: VectorBackend,
    embedder: Embedder,
    manifest: Manifest,
    decoder: Decoder,
    times: StageTimes | None = None,
) -> BatchResult:
    """Read a batch of files by path, copy the new ones into the store, embed and upsert them.

    Files whose content is already indexed (under any name) count as duplicates and are not embedded again.
    A file that cannot be read or decoded fails alone. BackendUnavailable propagates (retry the batch).
    """
    refs = [FileRef(item["path"], int(item["size"]), int(item["mtime_ns"])) for item in items]
    extra = {item["path"]: (str(item.get("rel", "")), tuple(item.get("collections", ()))) for item in items}

    times = times or StageTimes()

    def read(ref: FileRef) -> tuple[FileRef, str, bytes] | FileError:
        with times.timing("read"):
            try:
                data = Path(ref.path).read_bytes()
            except OSError as exc:
                return FileError(None, ref.path, f"cannot read the file: {exc.strerror or exc}")
            # Stored here, in parallel; bytes already in the store are not written again.
            image_id, created = images.put(data, sync=False)
        written.append(created)
        return ref, image_id, data

    written: list[bool] = []
    read_results = list(decoder.pool.map(read, refs))
    if any(written):
        images.sync_all()  # durable before anything points at these files
    errors = [r for r in read_results if isinstance(r, FileError)]
    files = [r for r in read_results if not isinstance(r, FileError)]
    indexed = set(backend.get(list({image_id for _, image_id, _ in files})))
    # files already indexed under any name join the job's collections (every item of a job names the same)
    add_to_collections(backend, sorted({i for _, i, _ in files if i in indexed}),
                       tuple(dict.fromkeys(c for item in items for c in item.get("collections", ()))))

    pending: dict[str, Pending] = {}
    owners: dict[str, list[FileRef]] = {}  # every file with the same content as a pending image
    duplicates: list[tuple[FileRef, str]] = []
    for ref, image_id, data in files:
        if image_id in indexed:
            duplicates.append((ref, image_id))
        elif image_id in pending:
            owners[image_id].append(ref)
        else:
            rel, collections = extra[ref.path]
            pending[image_id] = Pending(image_id, os.path.basename(ref.path), data, len(data), path=rel,
                                        collections=collections)
            owners[image_id] = [ref]

    embedded, failed = embed_pending(list(pending.values()), backend=backend, embedder=embedder, decoder=decoder,
                                     times=times)
    ok: list[tuple[FileRef, str]] = []
    for image_id, same_content in owners.items():
        if image_id in failed:
            images.delete(image_id)
            errors += [FileError(image_id, ref.path, failed[image_id]) for ref in same_content]
        else:
            ok += [(ref, image_id) for ref in same_content]
    manifest.record(ok + duplicates)
    copies = len(ok) - embedded  # files whose content another file of this batch brought in
    return BatchResult(done=len(ok) + len(duplicates), errors=errors, duplicates=copies + len(duplicates),
                       embedded=tuple(i for i in pending if i not in failed))
