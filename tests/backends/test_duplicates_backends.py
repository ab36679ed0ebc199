"""Near-duplicate runs (`shared.duplicates.run`) on every backend: planted groups in controlled vectors come
out exactly, with the keepers KEEP_RULE names, and a run cut short after a few batches resumes to the same
groups without searching an image twice; the backends' batched `neighbours` agree with exact cosines."""

from __future__ import annotations

import hashlib
from contextlib import closing
from datetime import UTC, datetime

import numpy as np
import pytest
import redis

from shared.backends import ImageRecord
from shared.backends.base import neighbours_by_search
from shared.duplicates import DuplicateStore, RunState, find_pairs, run
from shared.types import ModelInfo

DIM = 64
MODEL = ModelInfo("test-model", "random", DIM)
THRESHOLD = 0.9
BATCH = 64  # scan batches: a run of the ~340 images below takes six
# the job's default: each thread asks `neighbours` for a chunk of a batch (16 images here) in one call (one
# search per image, a Milvus server answering each Strong search after ~0.2 s, took 9 s sixteen at a time)
THREADS = 4


def image_id(n: int) -> str:
    """Ids in no particular order to the numbering (the scan's order is the backend's)."""
    return hashlib.sha256(f"image {n}".encode()).hexdigest()


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def near(base: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly `cosine` to the unit vector `base`, in a random direction."""
    other = rng.normal(size=base.shape)
    other = unit(other - (other @ base) * base)
    return (cosine * base + np.sqrt(1 - cosine**2) * other).astype(np.float32)


def record(n: int, *, pixels: tuple[int, int] = (640, 480), size: int = 100_000,
           captured: datetime | None = None) -> ImageRecord:
    return ImageRecord(id=image_id(n), filename=f"img-{n}.jpg", size_bytes=size, format="JPEG", width=pixels[0],
                       height=pixels[1], model="test/model", captured_at=captured)


def when(year: int) -> datetime:
    return datetime(year, 6, 1, 12, tzinfo=UTC)


class Planted:
    """300 random unit vectors, then groups of 2-5 near copies (cosine 0.97-0.99 to their original, ~0.94 to
    each other), a chain whose ends are far apart (joined through its middle), and decoys at cosine 0.8 to a
    group's original; each group's records make a different clause of KEEP_RULE decide its keeper."""

    def __init__(self, seed: int = 5) -> None:
        rng = np.random.default_rng(seed)
        self.records: list[ImageRecord] = []
        vectors: list[np.ndarray] = []
        self.groups: list[set[str]] = []
        self.keepers: list[str] = []

        def add(rec: ImageRecord, vector: np.ndarray) -> str:
            self.records.append(rec)
            vectors.append(vector.astype(np.float32))
            return rec.id

        n = 0
        for _ in range(300):  # random directions in 64-d: cosines around ±0.12, none near the threshold
            add(record(n, pixels=(800, 600), size=200_000 + n), unit(rng.normal(size=DIM)))
            n += 1

        def group(members: list[dict], keeper: int, decoy: bool = True) -> None:
            nonlocal n
            base = unit(rng.normal(size=DIM))
            ids = []
            for i, fields in enumerate(members):
                ids.append(add(record(n, **fields), base if i == 0 else near(base, float(rng.uniform(0.97, 0.99)),
                                                                             rng)))
                n += 1
            if decoy:  # near the group, not near enough: stays alone
                add(record(n, pixels=(4000, 3000), size=9_000_000), near(base, 0.8, rng))
                n += 1
            self.groups.append(set(ids))
            self.keepers.append(ids[keeper])

        # the most pixels wins, whatever the file size or capture time
        group([{"pixels": (640, 480), "size": 900_000, "captured": when(2001)},
               {"pixels": (1920, 1080), "size": 100, "captured": when(2020)}], keeper=1)
        # the same pixels (however laid out): the largest file
        group([{"pixels": (1200, 800), "size": 300_000}, {"pixels": (800, 1200), "size": 400_000},
               {"pixels": (1200, 800), "size": 350_000}], keeper=1)
        # the same pixels and size: the oldest capture time; one without a capture time comes last
        group([{"captured": when(2015)}, {"captured": None}, {"captured": when(2010)}, {"captured": when(2012)}],
              keeper=2)
        # everything equal (no capture times): the smallest id
        equal = [{} for _ in range(5)]
        group(equal, keeper=min(range(5), key=lambda i: image_id(n + i)))
        # a pair with the keeper second
        group([{"pixels": (100, 100)}, {"pixels": (101, 100)}], keeper=1, decoy=False)
        # a chain a - b - c: a, b at 0.96 and b, c at 0.96 but a, c at 0.84; one group through b
        a, turn = unit(rng.normal(size=DIM)), rng.normal(size=DIM)
        turn = unit(turn - (turn @ a) * a)
        angle = np.arccos(0.96)
        chain = [add(record(n + i, pixels=(500 + i, 500)), np.cos(i * angle) * a + np.sin(i * angle) * turn)
                 for i in range(3)]
        n += 3
        self.groups.append(set(chain))
        self.keepers.append(chain[2])
        self.vectors = np.stack(vectors)
        self.by_id = {r.id: i for i, r in enumerate(self.records)}

    def cosine(self, a: str, b: str) -> float:
        return float(self.vectors[self.by_id[a]] @ self.vectors[self.by_id[b]])


PLANTED = Planted()


@pytest.fixture
def store(redis_url: str) -> DuplicateStore:
    """A Redis database of its own (9: no stack uses it), emptied."""
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/9")
    client.flushdb()
    return DuplicateStore(client)


@pytest.fixture
def loaded(backend):
    backend.ensure_schema(MODEL)
    order = np.random.default_rng(1).permutation(len(PLANTED.records))  # not in id order, not in group order
    backend.upsert([PLANTED.records[i] for i in order], PLANTED.vectors[order])
    return backend


def test_planted_data_is_what_it_says():
    """Every pair of images not planted together is well under the threshold; every planted group is joined
    at 0.96 or more (each copy to its original; the chain link by link, its ends at 0.84)."""
    group_of = {i: n for n, members in enumerate(PLANTED.groups) for i in members}
    label = np.array([group_of.get(r.id, -1 - i) for i, r in enumerate(PLANTED.records)])
    sims = PLANTED.vectors @ PLANTED.vectors.T
    assert sims[label[:, None] != label[None, :]].max() < THRESHOLD - 0.02
    for members in PLANTED.groups[:-1]:
        first, *copies = (r.id for r in PLANTED.records if r.id in members)
        assert min(PLANTED.cosine(first, c) for c in copies) >= 0.969
    a, b, c = (r.id for r in PLANTED.records[-3:])
    assert PLANTED.cosine(a, b) == pytest.approx(0.96, abs=1e-4) == PLANTED.cosine(b, c)
    assert PLANTED.cosine(a, c) == pytest.approx(0.8432, abs=1e-3)


def test_neighbours_are_other_images_best_first_with_their_cosines(loaded):
    """`neighbours` of stored vectors, several at once or one: up to k other images each (never the query's
    own id), best first, each score the pair's cosine, the k nearest by exact cosine (up to ties within the
    index's precision); the same as the plain version through `search` (`neighbours_by_search`)."""
    five = next(sorted(members) for members in PLANTED.groups if len(members) == 5)
    rows = [PLANTED.by_id[i] for i in five] + [0, 1, 150, 299, len(PLANTED.records) - 1]  # a group, others
    ids = [PLANTED.records[r].id for r in rows]
    exact = PLANTED.vectors[rows] @ PLANTED.vectors.T
    for k in (3, 10):
        found = loaded.neighbours(ids, PLANTED.vectors[rows], k)
        assert len(found) == len(ids)
        for row, own, hits, cosines in zip(rows, ids, found, exact, strict=True):
            assert len(hits) == k and own not in {image_id for image_id, _ in hits}
            assert len({image_id for image_id, _ in hits}) == k
            scores = [score for _, score in hits]
            assert scores == sorted(scores, reverse=True)
            for image_id, score in hits:
                assert score == pytest.approx(PLANTED.cosine(own, image_id), abs=1e-4)
            others = np.delete(cosines, row)
            assert min(scores) >= np.sort(others)[-k] - 2e-3  # the k nearest
            if own in five:  # its group first: the other four (k = 3: three of them)
                assert {image_id for image_id, _ in hits[:min(k, 4)]} <= set(five)
            single = loaded.neighbours([own], PLANTED.vectors[[row]], k)
            assert [image_id for image_id, _ in single[0]] == [image_id for image_id, _ in hits]
        plain = neighbours_by_search(loaded, ids, PLANTED.vectors[rows], k)
        assert [[image_id for image_id, _ in hits] for hits in plain] == \
            [[image_id for image_id, _ in hits] for hits in found]
    assert loaded.neighbours([], PLANTED.vectors[:0], 10) == []


def check_groups(groups, store: DuplicateStore) -> None:
    found = {frozenset(m.id for m in g.members): g for g in groups}
    assert set(found) == {frozenset(g) for g in PLANTED.groups}
    for members, keeper in zip(PLANTED.groups, PLANTED.keepers, strict=True):
        group = found[frozenset(members)]
        assert (group.id, group.keeper, group.members[0].id) == (keeper, keeper, keeper)
        assert group.members[0].score == 1.0
        rest = group.members[1:]
        assert [m.score for m in rest] == sorted((m.score for m in rest), reverse=True)
        for member in rest:  # the score to the keeper, whether or not the pair was found (the chain's ends)
            assert member.score == pytest.approx(PLANTED.cosine(member.id, keeper), abs=2e-3)
    # stored largest first, ties by keeper id; readable by page
    sizes = [(-len(g.members), g.id) for g in groups]
    assert sizes == sorted(sizes)
    assert store.count() == len(groups)
    assert store.page(0, 100) == groups
    assert store.page(2, 3) == groups[2:5]
    assert store.get(groups[0].id) == groups[0]


def test_a_run_finds_exactly_the_planted_groups(loaded, store):
    state = RunState(job_id="a" * 32, threshold=THRESHOLD, k=10)
    store.begin(state)
    batches: list[int] = []
    groups = run(loaded, store, state, on_batch=lambda s, searched: batches.append(searched), batch_size=BATCH,
                 threads=THREADS)
    assert sum(batches) == state.searched == len(PLANTED.records) and len(batches) == -(-state.searched // BATCH)
    check_groups(groups, store)
    info = store.info()
    assert info is not None
    assert (info["job_id"], info["threshold"], info["k"], info["searched"], info["groups"]) == \
        ("a" * 32, THRESHOLD, 10, len(PLANTED.records), len(PLANTED.groups))
    assert info["images_in_groups"] == sum(len(g) for g in PLANTED.groups)
    assert store.unfinished() == [] and store.run_state("a" * 32) is None  # its working state is gone


def test_a_run_cut_short_resumes_where_it_stopped(loaded, store):
    searched: list[str] = []
    neighbours = loaded.neighbours

    def recording(ids, vectors, k):
        searched.extend(ids)  # the images whose neighbours find_pairs asks for
        return neighbours(ids, vectors, k)

    loaded.neighbours = recording
    order = [r.id for records, _ in loaded.scan(BATCH) for r in records]  # the backend's own order
    assert sorted(order) == sorted(PLANTED.by_id)
    state = RunState(job_id="b" * 32, threshold=THRESHOLD, k=10)
    store.begin(state)
    with closing(find_pairs(loaded, threshold=THRESHOLD, k=10, batch_size=BATCH, threads=THREADS)) as batches:
        for cursor, n, pairs in batches:
            state.cursor, state.searched = cursor, state.searched + n
            store.save_progress(state, pairs)
            if state.searched >= 2 * BATCH:
                break  # the worker dies here
    first = list(searched)
    assert sorted(first) == sorted(order[:2 * BATCH])

    assert store.unfinished() == ["b" * 32]
    resumed = store.run_state("b" * 32)
    assert resumed is not None and (resumed.searched, resumed.cursor) == (2 * BATCH, order[2 * BATCH - 1])
    assert all(p.a in first or p.b in first for p in store.pairs("b" * 32))
    searched.clear()
    groups = run(loaded, store, resumed, on_batch=lambda s, n: None, batch_size=BATCH, threads=THREADS)
    assert sorted(searched) == sorted(order[2 * BATCH:])  # every image searched once, over both runs
    assert resumed.searched == len(PLANTED.records)
    check_groups(groups, store)
    assert store.unfinished() == []
