"""Near-duplicates across the whole collection: the same photo resized, recompressed, cropped, re-exported.

    find_pairs     every image's k nearest neighbours from the backend's own ANN index (streaming over
                   `scan()`, chunks of a batch at once through `neighbours`), keeping the pairs at or above a
                   cosine threshold
    UnionFind      pairs → groups (only images that have a pair take memory: never n × n anything)
    make_groups    each group's suggested keeper (KEEP_RULE) and every member's score to it
    DuplicateStore the last run's groups in Redis (they survive restarts), paged largest first, and the
                   run's progress (its cursor and pairs so far) so a run cut short resumes where it stopped

A run is resumable: every backend's `scan()` comes in a fixed order (pgvector and Milvus by image id,
Manticore by its document id, a hash of the image id), so the number of images already searched (the
run's position in that order) and the pairs found so far are enough to go on after a crash, skipping what
was searched. Images added or deleted behind that position while a run is stopped shift it by as many: an
image near it is then searched twice or not at all, and its pairs are still found from its neighbours' side.
One worker at a time holds a run (`DuplicateStore.claim`, a lease renewed after every batch): starting the
job again while it runs does not start it twice, and once its worker has been silent for LEASE_S it resumes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime

import numpy as np
import redis

from shared.backends import ImageRecord, VectorBackend

log = logging.getLogger(__name__)

# Cosine at or above which two images are a pair. Chosen precision first (a wrong pair may get an image deleted)
# on real photos with real weights (`scripts/bench_duplicates.py --quality`, docs/benchmarks.md "Near-duplicates"):
# the lowest thresholds with pair precision >= 0.99 were 0.889 (EfficientNet-Lite0), 0.909 (Lite2) and 0.935
# (Lite1). At 0.92 Lite0 has precision 0.996 and recall 0.72 (0.89 on the photographs), Lite2 0.992; every
# false pair above 0.90 there was one drawing in four versions that differ by a letter. Lite1 needs 0.94
# (pass it with the request); CLIP's real weights could not be measured offline.
DEFAULT_THRESHOLD = 0.92
DEFAULT_NEIGHBOURS = 10  # neighbours looked at per image: a group larger than this is still joined by its pairs
KEEP_RULE = "the most pixels, then the largest file, then the oldest capture time (then the smallest id)"
LEASE_S = 120  # a run's worker renews its lease after every batch; one silent this long is taken as dead
_PREFIX = "proxima:duplicates:"
# renew (or release, with ARGV[2] = 0) a lease only while this holder has it
_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) else redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


class RunTakenOver(RuntimeError):
    """This worker lost a run's lease (it was silent for longer than LEASE_S) and another took the run."""


class UnionFind:
    """Disjoint sets over image ids (path halving, union by size)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.size: dict[str, int] = {}

    def find(self, item: str) -> str:
        parent = self.parent.setdefault(item, item)
        while parent != item:
            grand = self.parent[parent]
            self.parent[item] = grand
            item, parent = parent, self.parent[grand]
        return item

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size.get(ra, 1) < self.size.get(rb, 1):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] = self.size.get(ra, 1) + self.size.pop(rb, 1)

    def groups(self) -> list[list[str]]:
        """Every set of two or more, members sorted, largest set first."""
        out: dict[str, list[str]] = {}
        for item in self.parent:
            out.setdefault(self.find(item), []).append(item)
        return sorted((sorted(m) for m in out.values() if len(m) > 1), key=lambda m: (-len(m), m[0]))


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    score: float


def find_pairs(backend: VectorBackend, *, threshold: float, k: int = DEFAULT_NEIGHBOURS, batch_size: int = 256,
               skip: int = 0, threads: int = 4, chunk: int = 64) -> Iterator[tuple[str, int, list[Pair]]]:
    """(last id searched, images searched, pairs) per batch of the scan, past its first `skip` images (those
    a run cut short had searched: the scan's order is the backend's, by image id or not). A batch's images are
    searched in chunks of at most `chunk` (`VectorBackend.neighbours`, ids and scores only), `threads` at once."""
    passed = 0
    with ThreadPoolExecutor(threads, thread_name_prefix="duplicates") as pool:
        for records, vectors in backend.scan(batch_size):
            start = max(0, skip - passed)
            passed += len(records)
            if start >= len(records):
                continue
            ids = [record.id for record in records]
            size = min(chunk, -(-(len(ids) - start) // threads))  # every thread gets a chunk

            def pairs(begin: int, ids: list[str] = ids, vectors: np.ndarray = vectors, size: int = size) -> list[Pair]:
                own = ids[begin:begin + size]
                found = backend.neighbours(own, vectors[begin:begin + size], k)
                return [Pair(min(a, b), max(a, b), round(score, 6))
                        for a, hits in zip(own, found, strict=True) for b, score in hits if score >= threshold]

            batch = [pair for chunk_pairs in pool.map(pairs, range(start, len(ids), size)) for pair in chunk_pairs]
            yield ids[-1], len(ids) - start, list(dict.fromkeys(batch))


@dataclass(frozen=True)
class Member:
    id: str
    score: float  # cosine similarity to the group's keeper (1.0 for the keeper)


@dataclass(frozen=True)
class Group:
    id: str  # the keeper's id: an image is in one group at most
    keeper: str
    members: tuple[Member, ...]  # the keeper first, then by score

    def as_dict(self) -> dict:
        return {"id": self.id, "keeper": self.keeper, "members": [asdict(m) for m in self.members]}

    @classmethod
    def from_dict(cls, data: dict) -> Group:
        return cls(id=data["id"], keeper=data["keeper"], members=tuple(Member(**m) for m in data["members"]))


def keep_key(record: ImageRecord) -> tuple:
    """Sort key of KEEP_RULE (smallest first = the one to keep)."""
    captured = record.captured_at.timestamp() if isinstance(record.captured_at, datetime) else float("inf")
    return (-record.width * record.height, -record.size_bytes, captured, record.id)


def make_group(ids: Sequence[str], records: dict[str, ImageRecord], vectors: dict[str, np.ndarray]) -> Group | None:
    """A group of the ids still indexed (None when fewer than two are), its keeper chosen by KEEP_RULE."""
    present = [i for i in ids if i in records and i in vectors]
    if len(present) < 2:
        return None
    keeper = min(present, key=lambda i: keep_key(records[i]))
    scores = {i: 1.0 if i == keeper else round(float(vectors[i] @ vectors[keeper]), 6) for i in present}
    members = sorted(present, key=lambda i: (i != keeper, -scores[i], i))
    return Group(id=keeper, keeper=keeper, members=tuple(Member(i, scores[i]) for i in members))


def make_groups(backend: VectorBackend, sets: Sequence[Sequence[str]], chunk: int = 500) -> Iterator[Group]:
    """Groups of `sets` of ids, reading records and vectors `chunk` ids at a time."""
    batch: list[Sequence[str]] = []
    size = 0
    for ids in [*sets, None]:
        if ids is not None:
            batch.append(ids)
            size += len(ids)
        if batch and (ids is None or size >= chunk):
            wanted = [i for group in batch for i in group]
            records, vectors = backend.get(wanted), backend.get_vectors(wanted)
            for group_ids in batch:
                group = make_group(group_ids, records, vectors)
                if group is not None:
                    yield group
            batch, size = [], 0


@dataclass
class RunState:
    """Where a run stands (kept in Redis while it runs)."""

    job_id: str
    threshold: float
    k: int
    cursor: str = ""  # the last id searched (for the record: a run resumes from `searched`)
    searched: int = 0  # images searched: the run's position in the backend's scan order


class DuplicateStore:
    """The groups of the last finished run, and the state of the run going on (Redis)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    # --- a run in progress --------------------------------------------------------------------------

    def begin(self, state: RunState) -> None:
        with self.redis.pipeline() as pipe:
            pipe.set(f"{_PREFIX}run:{state.job_id}", json.dumps(asdict(state)))
            pipe.sadd(f"{_PREFIX}runs", state.job_id)
            pipe.execute()

    def claim(self, job_id: str, holder: str, lease_s: int = LEASE_S) -> bool:
        """Take the run of `job_id` for `holder` (False while another holds it and is alive)."""
        return bool(self.redis.set(f"{_PREFIX}run:{job_id}:lease", holder, nx=True, ex=lease_s))

    def renew(self, job_id: str, holder: str, lease_s: int = LEASE_S) -> bool:
        """Extend `holder`'s lease; False if it lost it (silent for longer than the lease: another took over)."""
        return self.redis.eval(_LEASE, 1, f"{_PREFIX}run:{job_id}:lease", holder, lease_s) == 1

    def release(self, job_id: str, holder: str) -> None:
        self.redis.eval(_LEASE, 1, f"{_PREFIX}run:{job_id}:lease", holder, 0)

    def running(self, job_id: str) -> bool:
        """Whether a worker holds the run of `job_id` now."""
        return bool(self.redis.exists(f"{_PREFIX}run:{job_id}:lease"))

    def keep_apart(self, ids: Sequence[str], others: Sequence[str]) -> None:
        """Remember that each of `ids` is not a duplicate of any of `others` (a person un-grouped them):
        later runs do not join them again through these pairs."""
        pairs = {f"{min(a, b)} {max(a, b)}" for a in ids for b in others if a != b}
        if pairs:
            self.redis.sadd(f"{_PREFIX}apart", *pairs)

    def kept_apart(self) -> set[tuple[str, str]]:
        out = set()
        for raw in self.redis.sscan_iter(f"{_PREFIX}apart", count=10_000):
            a, _, b = (raw.decode() if isinstance(raw, bytes) else raw).partition(" ")
            out.add((a, b))
        return out

    def discard(self, job_id: str) -> None:
        """Forget a run that will never finish (its job expired)."""
        with self.redis.pipeline() as pipe:
            pipe.delete(f"{_PREFIX}run:{job_id}", f"{_PREFIX}run:{job_id}:pairs")
            pipe.srem(f"{_PREFIX}runs", job_id)
            pipe.execute()

    def unfinished(self) -> list[str]:
        """Job ids of runs begun and not published (a worker died, or one is running now)."""
        return sorted(i.decode() if isinstance(i, bytes) else i for i in self.redis.smembers(f"{_PREFIX}runs"))

    def run_state(self, job_id: str) -> RunState | None:
        raw = self.redis.get(f"{_PREFIX}run:{job_id}")
        return RunState(**json.loads(raw)) if raw else None

    def save_progress(self, state: RunState, pairs: Sequence[Pair]) -> None:
        """Record a searched batch: its pairs, then the cursor past it (one transaction)."""
        with self.redis.pipeline() as pipe:
            if pairs:
                pipe.rpush(f"{_PREFIX}run:{state.job_id}:pairs", *(json.dumps(asdict(p)) for p in pairs))
            pipe.set(f"{_PREFIX}run:{state.job_id}", json.dumps(asdict(state)))
            pipe.execute()

    def pairs(self, job_id: str) -> Iterator[Pair]:
        key, start = f"{_PREFIX}run:{job_id}:pairs", 0
        while chunk := self.redis.lrange(key, start, start + 9999):
            yield from (Pair(**json.loads(raw)) for raw in chunk)
            start += len(chunk)

    def publish(self, job_id: str, groups: Sequence[Group], info: dict) -> None:
        """Replace the current groups with this run's, in one transaction, and drop the run's working state."""
        old = [k for k in self.redis.scan_iter(f"{_PREFIX}group:*")]
        with self.redis.pipeline() as pipe:
            if old:
                pipe.delete(*old)
            pipe.delete(f"{_PREFIX}order")
            for group in groups:
                pipe.set(f"{_PREFIX}group:{group.id}", json.dumps(group.as_dict()))
                pipe.zadd(f"{_PREFIX}order", {group.id: -len(group.members)})
            pipe.set(f"{_PREFIX}info", json.dumps({**info, "job_id": job_id, "finished_at": time.time()}))
            pipe.delete(f"{_PREFIX}run:{job_id}", f"{_PREFIX}run:{job_id}:pairs")
            pipe.srem(f"{_PREFIX}runs", job_id)
            pipe.execute()

    # --- the results ----------------------------------------------------------------------------------

    def info(self) -> dict | None:
        raw = self.redis.get(f"{_PREFIX}info")
        return json.loads(raw) if raw else None

    def count(self) -> int:
        return int(self.redis.zcard(f"{_PREFIX}order"))

    def page(self, offset: int, limit: int) -> list[Group]:
        """Groups, the largest first (ties by keeper id): the order set scores each group by minus its size."""
        ids = [i.decode() if isinstance(i, bytes) else i
               for i in self.redis.zrange(f"{_PREFIX}order", offset, offset + limit - 1)]
        raws = self.redis.mget([f"{_PREFIX}group:{i}" for i in ids]) if ids else []
        return [Group.from_dict(json.loads(raw)) for raw in raws if raw]

    def get(self, group_id: str) -> Group | None:
        raw = self.redis.get(f"{_PREFIX}group:{group_id}")
        return Group.from_dict(json.loads(raw)) if raw else None

    def replace(self, group: Group, remade: Group | None) -> Group | None:
        """Put `remade` (what is left of `group`, perhaps with another keeper, so another id) in its place."""
        with self.redis.pipeline() as pipe:
            pipe.delete(f"{_PREFIX}group:{group.id}")
            pipe.zrem(f"{_PREFIX}order", group.id)
            if remade is not None:
                pipe.set(f"{_PREFIX}group:{remade.id}", json.dumps(remade.as_dict()))
                pipe.zadd(f"{_PREFIX}order", {remade.id: -len(remade.members)})
            pipe.execute()
        return remade


def run(backend: VectorBackend, store: DuplicateStore, state: RunState, *, on_batch: Callable[[RunState, int], None],
        threads: int = 4, batch_size: int = 256) -> list[Group]:
    """Search every image after `state.cursor` for its near-duplicates, recording progress as it goes, then
    join all the run's pairs into groups and publish them. `on_batch(state, searched)` after each batch."""
    for cursor, searched, pairs in find_pairs(backend, threshold=state.threshold, k=state.k, skip=state.searched,
                                              threads=threads, batch_size=batch_size):
        state.cursor = cursor
        state.searched += searched
        store.save_progress(state, pairs)
        on_batch(state, searched)
    sets, kept_apart = UnionFind(), store.kept_apart()
    for pair in store.pairs(state.job_id):
        if (pair.a, pair.b) not in kept_apart:
            sets.union(pair.a, pair.b)
    groups = list(make_groups(backend, sets.groups()))
    groups.sort(key=lambda g: (-len(g.members), g.id))
    store.publish(state.job_id, groups, {"threshold": state.threshold, "k": state.k, "searched": state.searched,
                                         "groups": len(groups),
                                         "images_in_groups": sum(len(g.members) for g in groups)})
    log.info("duplicates %s: %d groups of %d images", state.job_id, len(groups),
             sum(len(g.members) for g in groups))
    return groups
