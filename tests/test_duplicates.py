"""Near-duplicates (`shared.duplicates`): the grouping logic on controlled data (union-find, the keep rule),
the run's store in Redis, and the whole path on the real stack: photos and their resized / recompressed
copies uploaded, a run on the worker (`POST /admin/duplicates`), the groups (`GET /duplicates`), resolving
them (`POST /duplicates/{group}/resolve`) and `scripts/find_duplicates.py`. Each backend runs the same
search path in tests/backends/test_duplicates_backends.py."""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import redis
from PIL import Image

from scripts.devservices import REPO, Api, child_env, free_port, wait_for
from scripts.synthetic import encode, photo
from shared.backends import ImageRecord
from shared.duplicates import (
    KEEP_RULE,
    LEASE_S,
    DuplicateStore,
    Group,
    Member,
    Pair,
    RunState,
    UnionFind,
    keep_key,
    make_group,
)
from shared.types import FINAL_STATES


def ident(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


# --- union-find -----------------------------------------------------------------------------------------------

def test_a_chain_of_pairs_is_one_group():
    sets = UnionFind()
    sets.union("a", "b")
    sets.union("b", "c")  # a and c were never paired: joined through b
    assert sets.groups() == [["a", "b", "c"]]
    assert sets.find("a") == sets.find("c") and sets.size[sets.find("a")] == 3


def test_separate_groups_largest_first_then_by_first_member():
    sets = UnionFind()
    for a, b in [("x", "y"), ("m", "n"), ("e", "f"), ("g", "f"), ("d", "c"), ("y", "x"), ("q", "q")]:
        sets.union(a, b)
    assert sets.groups() == [["e", "f", "g"], ["c", "d"], ["m", "n"], ["x", "y"]]  # members sorted too
    assert sets.find("q") == "q" and {sets.size[sets.find(i)] for i in "efg"} == {3}
    assert sets.find("never-seen") == "never-seen"  # a single image is no group
    assert len(sets.groups()) == 4


def test_unions_in_any_order_give_the_connected_components():
    rng = np.random.default_rng(3)
    items = [f"{i:03d}" for i in range(400)]
    edges = [(items[a], items[b]) for a, b in rng.integers(0, 400, size=(330, 2))]
    sets = UnionFind()
    for a, b in edges:
        sets.union(a, b)
    neighbours: dict[str, set[str]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    components, seen = [], set()
    for start in neighbours:  # plain breadth-first search
        if start in seen:
            continue
        todo, component = [start], set()
        while todo:
            item = todo.pop()
            if item not in component:
                component.add(item)
                todo += neighbours[item]
        seen |= component
        components.append(component)
    expected = sorted((sorted(c) for c in components if len(c) > 1), key=lambda m: (-len(m), m[0]))
    assert sets.groups() == expected
    for group in expected:
        root = sets.find(group[0])
        assert all(sets.find(i) == root for i in group) and sets.size[root] == len(group)


# --- the keep rule --------------------------------------------------------------------------------------------

def record(name: str, *, pixels: tuple[int, int] = (1000, 1000), size: int = 1000,
           captured: datetime | None = None) -> ImageRecord:
    return ImageRecord(id=ident(name), filename=f"{name}.jpg", size_bytes=size, format="JPEG", width=pixels[0],
                       height=pixels[1], model="m", captured_at=captured)


def test_keep_rule_pixels_then_bytes_then_oldest_capture_then_id():
    old, new = datetime(2010, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC)
    records = [
        record("tiny, huge file, oldest", pixels=(100, 100), size=10**9, captured=old - timedelta(days=999)),
        record("3 Mpx, smaller file, oldest", pixels=(3000, 1000), size=4000, captured=old - timedelta(days=1)),
        record("3 Mpx, 2020", pixels=(1500, 2000), size=5000, captured=new),  # 3 Mpx however laid out
        record("3 Mpx, 2010", pixels=(3000, 1000), size=5000, captured=old),
        record("3 Mpx, undated", pixels=(1000, 3000), size=5000),
        record("3 Mpx, undated 2", pixels=(1000, 3000), size=5000),
        record("4 Mpx, tiny file, new", pixels=(2000, 2000), size=10, captured=new),
    ]
    ranked = [r.filename[:-4] for r in sorted(records, key=keep_key)]
    undated = [r.filename[:-4] for r in sorted(records[4:6], key=lambda r: r.id)]  # last: the smallest id
    assert ranked == ["4 Mpx, tiny file, new", "3 Mpx, 2010", "3 Mpx, 2020", *undated,
                      "3 Mpx, smaller file, oldest", "tiny, huge file, oldest"]
    assert "pixels" in KEEP_RULE and "largest file" in KEEP_RULE and "oldest capture" in KEEP_RULE


def test_capture_times_compare_across_time_zones():
    early = record("taken 10:00 UTC", captured=datetime(2024, 5, 1, 12, tzinfo=UTC))
    late = record("taken 11:00 UTC", captured=datetime(2024, 5, 1, 13, tzinfo=UTC))
    assert min([late, early], key=keep_key) is early


def test_make_group_scores_every_member_against_the_keeper():
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    base /= np.linalg.norm(base)
    names = ["copy", "original", "other copy", "gone"]
    vectors = {}
    for i, name in enumerate(names):
        v = base + 0.05 * (i + 1) * rng.normal(size=16)
        vectors[ident(name)] = (v / np.linalg.norm(v)).astype(np.float32)
    records = {ident("copy"): record("copy", pixels=(500, 500)), ident("original"): record("original"),
               ident("other copy"): record("other copy", pixels=(999, 1000))}
    del vectors[ident("gone")]  # an id no longer indexed is left out
    group = make_group([ident(n) for n in names], records, vectors)
    assert group is not None
    keeper = ident("original")
    assert (group.id, group.keeper, group.members[0]) == (keeper, keeper, Member(keeper, 1.0))
    scores = {m.id: m.score for m in group.members[1:]}
    assert set(scores) == {ident("copy"), ident("other copy")}
    for image_id, score in scores.items():
        assert score == round(float(vectors[image_id] @ vectors[keeper]), 6)
    assert [m.score for m in group.members[1:]] == sorted(scores.values(), reverse=True)
    assert Group.from_dict(json.loads(json.dumps(group.as_dict()))) == group

    assert make_group([keeper, ident("gone")], records, vectors) is None  # fewer than two left
    twins = {ident("a"): np.ones(2) / np.sqrt(2), ident("b"): np.ones(2) / np.sqrt(2)}
    same = make_group([ident("b"), ident("a")], {i: record(n) for n, i in (("a", ident("a")), ("b", ident("b")))},
                      twins)
    assert same is not None and same.keeper == min(ident("a"), ident("b"))  # all else equal: the smallest id
    assert [m.score for m in same.members] == [1.0, 1.0]


# --- the store (a real Redis) ---------------------------------------------------------------------------------

@pytest.fixture
def store(redis_url: str) -> DuplicateStore:
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/9")  # a database no stack uses
    client.flushdb()
    return DuplicateStore(client)


def group_of(*names: str) -> Group:
    return Group(id=ident(names[0]), keeper=ident(names[0]),
                 members=tuple(Member(ident(n), 1.0 if i == 0 else 0.95) for i, n in enumerate(names)))


def test_store_pages_largest_first_and_a_publish_replaces_the_last_run(store):
    groups = [group_of("p", "q"), group_of("a", "b", "c"), group_of("k", "l"), group_of("z", "y", "x", "w")]
    store.begin(RunState(job_id="1" * 32, threshold=0.9, k=10))
    store.publish("1" * 32, groups, {"threshold": 0.9})
    pairs_first = sorted([g for g in groups if len(g.members) == 2], key=lambda g: g.id)
    expected = [groups[3], groups[1], *pairs_first]  # by size, ties by keeper id
    assert store.page(0, 10) == expected and store.count() == 4
    assert store.page(1, 2) == expected[1:3] and store.page(4, 10) == []
    assert store.get(groups[0].id) == groups[0] and store.get(ident("nothing")) is None
    info = store.info()
    assert info is not None and info["threshold"] == 0.9 and info["job_id"] == "1" * 32
    assert store.unfinished() == []

    store.begin(RunState(job_id="2" * 32, threshold=0.8, k=5))
    store.publish("2" * 32, [group_of("m", "n")], {"threshold": 0.8})
    assert store.page(0, 10) == [group_of("m", "n")] and store.get(groups[0].id) is None  # nothing left over
    assert (store.info() or {})["job_id"] == "2" * 32


def test_store_replaces_a_resolved_group(store):
    big = group_of("a", "b", "c")
    store.publish("1" * 32, [big, group_of("d", "e")], {})
    smaller = group_of("b", "c")  # the keeper went: another keeper, so another id
    assert store.replace(big, smaller) == smaller
    assert store.get(big.id) is None and store.get(smaller.id) == smaller and store.count() == 2
    assert store.replace(smaller, None) is None
    assert store.page(0, 10) == [group_of("d", "e")]


def test_store_keeps_a_runs_progress_and_pairs(store):
    state = RunState(job_id="3" * 32, threshold=0.9, k=10)
    store.begin(state)
    pairs = [Pair(f"{i:064x}", f"{i + 1:064x}", 0.95) for i in range(12_345)]  # read back in chunks of 10000
    state.cursor, state.searched = "f" * 64, 500
    store.save_progress(state, pairs[:5000])
    store.save_progress(state, [])
    store.save_progress(state, pairs[5000:])
    assert list(store.pairs(state.job_id)) == pairs
    assert store.run_state(state.job_id) == state and store.unfinished() == [state.job_id]
    store.discard(state.job_id)
    assert store.run_state(state.job_id) is None and list(store.pairs(state.job_id)) == []
    assert store.unfinished() == []


def test_one_worker_holds_a_run_at_a_time(store):
    job = "4" * 32
    assert not store.running(job)
    assert store.claim(job, "worker 1")
    assert store.running(job) and 0 < store.redis.ttl(f"proxima:duplicates:run:{job}:lease") <= LEASE_S
    assert not store.claim(job, "worker 2")
    assert store.renew(job, "worker 1") and not store.renew(job, "worker 2")
    store.release(job, "worker 2")  # not its lease: nothing happens
    assert store.running(job)
    store.release(job, "worker 1")
    assert not store.running(job) and store.claim(job, "worker 2")
    assert not store.renew(job, "worker 1")  # it lost the run: it must stop


# --- the real stack -------------------------------------------------------------------------------------------

THRESHOLD = 0.9995  # the tiny test model sees distinct photos at up to ~0.999, copies at 0.99994 and above


@functools.cache
def original(seed: int, size: tuple[int, int]) -> Image.Image:
    return photo(seed, size)


def copies() -> dict[str, bytes]:
    a, b, c = original(6101, (480, 360)), original(6102, (400, 300)), original(6103, (480, 360))
    return {
        "dup-a.jpg": encode(a, "JPEG", quality=92),  # keeper: as many pixels as the q60 copy, a larger file
        "dup-a-q60.jpg": encode(a, "JPEG", quality=60),
        "dup-a-small.jpg": encode(a.resize((384, 288)), "JPEG", quality=75),
        "dup-b.jpg": encode(b, "JPEG", quality=90),
        "dup-b-big.jpg": encode(b.resize((560, 420)), "JPEG", quality=85),  # keeper: upscaled, the most pixels
        "dup-b-small.png": encode(b.resize((320, 240)), "PNG"),
        "dup-c.jpg": encode(c, "JPEG", quality=90),  # no copy
    }


GROUP_A = ["dup-a.jpg", "dup-a-q60.jpg", "dup-a-small.jpg"]
GROUP_B = ["dup-b-big.jpg", "dup-b.jpg", "dup-b-small.png"]


def wait_job(client, job_id: str, timeout: float = 120) -> dict:
    wait_for(lambda: client.get(f"/jobs/{job_id}").json()["state"] in FINAL_STATES, timeout, f"job {job_id}")
    return client.get(f"/jobs/{job_id}").json()


def all_groups(client) -> list[dict]:
    groups, offset = [], 0
    while offset is not None:
        page = client.get("/duplicates", params={"offset": offset, "limit": 7}).json()
        groups += page["groups"]
        offset = page["next_offset"]
    return groups


def mine(groups: list[dict], ids: dict[str, str]) -> dict[frozenset, dict]:
    """The groups holding any of `ids` (name → id), keyed by the names of their members (a foreign member
    shows as its id)."""
    names = {v: k for k, v in ids.items()}
    return {frozenset(names.get(m["id"], m["id"]) for m in g["members"]): g for g in groups
            if any(m["id"] in names for m in g["members"])}


@pytest.fixture(scope="module")
def uploaded(client) -> dict[str, str]:
    files = copies()
    body = client.post("/images", files=[("files", (name, data)) for name, data in files.items()]).json()
    assert wait_job(client, body["job_id"])["state"] == "completed"
    return {img["filename"]: img["id"] for img in body["images"]}


@pytest.fixture(scope="module")
def first_run(client, uploaded) -> dict:
    response = client.post("/admin/duplicates", json={"threshold": THRESHOLD, "k": 10})
    assert response.status_code == 202, response.text
    return wait_job(client, response.json()["job_id"])


def test_a_run_groups_each_photo_with_its_copies(client, uploaded, first_run):
    vectors = client.get("/health").json()["vectors"]
    assert (first_run["kind"], first_run["state"]) == ("duplicates", "completed")
    assert first_run["done"] == first_run["total"] == vectors and first_run["eta_s"] == 0
    assert first_run["rate_per_s"] is not None and first_run["walking"] is False

    page = client.get("/duplicates").json()
    assert page["run"]["job_id"] == first_run["job_id"] and page["run"]["threshold"] == THRESHOLD
    assert page["run"]["searched"] == vectors and page["keep_rule"] == KEEP_RULE
    assert page["offset"] == 0 and page["total"] >= 2
    sizes = [g["size"] for g in all_groups(client)]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) == page["total"]

    found = mine(all_groups(client), uploaded)
    assert set(found) == {frozenset(GROUP_A), frozenset(GROUP_B)}  # dup-c.jpg has no copy: in no group
    for names in (GROUP_A, GROUP_B):
        group = found[frozenset(names)]
        members = group["members"]
        assert group["id"] == uploaded[names[0]] == members[0]["id"] and group["size"] == 3
        assert members[0]["filename"] == names[0] and members[0]["keeper"] and members[0]["score"] == 1.0
        assert [m["keeper"] for m in members[1:]] == [False, False]
        assert all(1.0 >= m["score"] >= THRESHOLD for m in members)
        assert members[1]["score"] >= members[2]["score"]
        for m in members:
            image = client.get(m["image_url"])
            thumbnail = client.get(m["thumbnail_url"])
            assert image.status_code == 200 and thumbnail.status_code == 200, m
            assert thumbnail.headers["content-type"].startswith("image/")
    keeper = found[frozenset(GROUP_B)]["members"][0]
    assert (keeper["width"], keeper["height"], keeper["format"]) == (560, 420, "JPEG")


def test_groups_survive_an_api_restart(stack_settings, uploaded, first_run, client):
    from fastapi.testclient import TestClient

    from api.main import create_app

    before = mine(all_groups(client), uploaded)
    with TestClient(create_app(stack_settings)) as restarted:
        after = mine(all_groups(restarted), uploaded)
        assert restarted.get("/duplicates").json()["run"]["job_id"] == first_run["job_id"]
    assert after == before and len(after) == 2


def test_a_start_while_a_run_is_unfinished_resumes_it(client, stack_settings, uploaded, first_run):
    """Starting again while a run is unfinished goes on with that run, queueing it again only when no worker
    holds it; other settings drop an unfinished run that no worker holds (Conflict while one does); a finished
    run is not run twice. The stack's own Proxima, its queue replaced by a list, so that this test is the
    worker."""
    from shared.services import Proxima
    from shared.types import Conflict

    proxima = Proxima.from_settings(stack_settings)
    sent: list[str] = []
    proxima.queue.find_duplicates = sent.append  # type: ignore[method-assign]
    try:
        dropped = proxima.start_duplicates(0.5, 3)
        job_id = proxima.start_duplicates(THRESHOLD, 10)
        assert job_id != dropped and proxima.duplicates.unfinished() == [job_id]  # other settings: a new run
        assert proxima.start_duplicates(THRESHOLD, 10) == job_id and sent == [dropped, job_id, job_id]
        assert proxima.duplicates.claim(job_id, "another worker")
        assert proxima.start_duplicates(THRESHOLD, 10) == job_id and len(sent) == 3  # held: not queued twice
        with pytest.raises(Conflict, match="is going on"):
            proxima.start_duplicates(0.5, 3)
        assert proxima.find_duplicates(job_id) == []  # this "worker" finds it held and leaves it
        proxima.duplicates.release(job_id, "another worker")
        groups = proxima.find_duplicates(job_id)
        assert {frozenset(m.id for m in g.members) for g in groups} >= \
            {frozenset(uploaded[n] for n in GROUP_A), frozenset(uploaded[n] for n in GROUP_B)}
        assert proxima.find_duplicates(job_id) == []  # a second delivery: done already
        job = client.get(f"/jobs/{job_id}").json()
        assert job["state"] == "completed" and job["done"] == job["total"] == client.get("/health").json()["vectors"]
        assert client.get("/duplicates").json()["run"] | {"finished_at": 0} == {
            "threshold": THRESHOLD, "k": 10, "searched": job["total"], "groups": len(groups),
            "images_in_groups": sum(len(g.members) for g in groups), "job_id": job_id, "finished_at": 0}
        assert proxima.duplicates.unfinished() == []
    finally:
        proxima.close()
    refused = client.post("/admin/duplicates", json={"threshold": 0})
    assert refused.status_code == 422 and client.post("/admin/duplicates", json={"k": 101}).status_code == 422


def test_a_paused_run_stops_resumes_from_its_cursor_and_a_cancelled_one_is_dropped(client, stack_settings, uploaded,
                                                                                    first_run):
    """Job control of a duplicates run, this test being the worker (as above)."""
    from shared.services import Proxima

    proxima = Proxima.from_settings(stack_settings)
    sent: list[str] = []
    proxima.queue.find_duplicates = sent.append  # type: ignore[method-assign]
    try:
        dropped = proxima.start_duplicates(0.5, 3)
        assert proxima.cancel_job(dropped).state == "cancelled"
        assert proxima.duplicates.unfinished() == [] and proxima.find_duplicates(dropped) == []  # a late delivery
        job_id = proxima.start_duplicates(THRESHOLD, 10)
        assert proxima.pause_job(job_id).state == "paused"
        assert proxima.find_duplicates(job_id) == []  # a worker taking it while paused leaves it, cursor kept
        job = proxima.job(job_id)
        assert (job.state, job.done) == ("paused", 0) and proxima.duplicates.unfinished() == [job_id]
        assert proxima.start_duplicates(THRESHOLD, 10) == job_id  # starting it again resumes it
        assert proxima.job(job_id).state == "queued" and sent == [dropped, job_id, job_id]
        proxima.pause_job(job_id)
        proxima.resume_job(job_id)
        assert sent[-1] == job_id and len(sent) == 4
        groups = proxima.find_duplicates(job_id)
        assert {frozenset(m.id for m in g.members) for g in groups} >= \
            {frozenset(uploaded[n] for n in GROUP_A), frozenset(uploaded[n] for n in GROUP_B)}
        assert proxima.job(job_id).state == "completed"
    finally:
        proxima.close()


# --- scripts/find_duplicates.py against a real API process ----------------------------------------------------

def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/find_duplicates.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=180, env=child_env())


@pytest.fixture(scope="module")
def api_url(stack_env, worker, client, tmp_path_factory):
    server = Api(stack_env, tmp_path_factory.mktemp("logs") / "find-duplicates-api.log")
    yield server.url
    server.stop()


def test_script_runs_summarises_and_exports(api_url, client, uploaded, first_run, tmp_path):
    out = script("--api", api_url, "--threshold", str(THRESHOLD), "--show", "1000", "--json", str(tmp_path / "d.json"),
                 "--csv", str(tmp_path / "d.csv"), "--html", str(tmp_path / "d.html"))
    assert out.returncode == 0, out.stderr
    assert "started" in out.stderr and f"wrote {tmp_path / 'd.csv'}" in out.stderr
    answer = json.loads((tmp_path / "d.json").read_text())
    groups = answer["groups"]
    assert answer["run"]["threshold"] == THRESHOLD and answer["run"]["job_id"] != first_run["job_id"]
    assert answer["keep_rule"] == KEEP_RULE
    assert set(mine(groups, uploaded)) == {frozenset(GROUP_A), frozenset(GROUP_B)}
    summary = answer["summary"]
    extra = [m for g in groups for m in g["members"][1:]]
    assert summary == {"groups": len(groups), "images_in_groups": sum(len(g["members"]) for g in groups),
                       "would_delete": len(extra), "bytes_freed": sum(m["size_bytes"] for m in extra)}
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"duplicates run {answer['run']['job_id']} (threshold {THRESHOLD}, k 10")
    assert f"groups:             {summary['groups']}" in lines
    assert f"would be deleted:   {summary['would_delete']} (keeping one image per group)" in lines
    assert any(line.endswith("dup-b-big.jpg") and "560×420" in line for line in lines)

    with (tmp_path / "d.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["group", "rank", "keeper", "id", "score", "filename", "width", "height", "size",
                             "captured_at"]
    assert len(rows) == summary["images_in_groups"]
    b_rows = [r for r in rows if r["group"] == uploaded["dup-b-big.jpg"]]
    assert [(r["rank"], r["keeper"], r["filename"]) for r in b_rows][0] == ("1", "1", "dup-b-big.jpg")
    assert sorted(r["filename"] for r in b_rows) == sorted(GROUP_B) and [r["keeper"] for r in b_rows[1:]] == ["0"] * 2
    assert (b_rows[0]["width"], b_rows[0]["height"], b_rows[0]["score"]) == ("560", "420", "1.000000")

    sheet = (tmp_path / "d.html").read_text(encoding="utf-8")
    assert sheet.count("<section>") == summary["groups"]
    assert "dup-a-small.jpg" in sheet and 'class="keeper"' in sheet and "data:image/" in sheet
    assert f"{api_url}/images/{uploaded['dup-a-q60.jpg']}" in sheet

    last = script("--api", api_url, "--last", "--csv", str(tmp_path / "last.csv"), "--show", "0")
    assert last.returncode == 0 and "started" not in last.stderr, last.stderr
    assert (tmp_path / "last.csv").read_text() == (tmp_path / "d.csv").read_text()


def test_script_says_what_is_wrong(api_url):
    down = script("--api", f"http://127.0.0.1:{free_port()}", "--last")
    assert down.returncode != 0 and "not reachable" in down.stderr
    assert "--threshold is a cosine" in script("--threshold", "1.5").stderr
    assert "no --threshold" in script("--last", "--threshold", "0.9").stderr


# --- resolving groups (last: it deletes images of this module) ------------------------------------------------

def test_resolve_deletes_and_ungroups(client, stack_settings, uploaded, first_run):
    from shared.imagestore import ImageStore

    found = mine(all_groups(client), uploaded)
    group_a = found[frozenset(GROUP_A)]["id"]
    vectors = client.get("/health").json()["vectors"]
    small = uploaded["dup-a-small.jpg"]
    resolved = client.post(f"/duplicates/{group_a}/resolve", json={"delete": [small]})
    assert resolved.status_code == 200, resolved.text
    body = resolved.json()
    assert body["deleted"] == 1 and body["group"]["id"] == group_a
    assert [m["filename"] for m in body["group"]["members"]] == ["dup-a.jpg", "dup-a-q60.jpg"]
    assert client.get(f"/images/{small}").status_code == 404  # the stored file is gone
    assert client.get(f"/images/{small}/metadata").status_code == 404  # and the vector
    assert not ImageStore(stack_settings.images_dir).exists(small)
    assert client.get("/health").json()["vectors"] == vectors - 1
    assert [m["id"] for m in mine(all_groups(client), uploaded)[frozenset(GROUP_A[:2])]["members"]] == \
        [group_a, uploaded["dup-a-q60.jpg"]]

    kept = client.post(f"/duplicates/{group_a}/resolve", json={"ungroup": [uploaded["dup-a-q60.jpg"]]}).json()
    assert kept == {"deleted": 0, "group": None}  # one image left: no group
    assert client.get(f"/images/{uploaded['dup-a-q60.jpg']}").status_code == 200  # kept
    assert client.post(f"/duplicates/{group_a}/resolve", json={}).status_code == 404  # the group is gone

    group_b = found[frozenset(GROUP_B)]["id"]
    assert group_b == uploaded["dup-b-big.jpg"]
    left = client.post(f"/duplicates/{group_b}/resolve", json={"delete": [group_b, group_b]}).json()
    assert left["deleted"] == 1 and left["group"]["id"] == uploaded["dup-b.jpg"]  # the next keeper: 400×300
    assert [m["filename"] for m in left["group"]["members"]] == ["dup-b.jpg", "dup-b-small.png"]
    assert left["group"]["members"][0]["keeper"] and left["group"]["members"][1]["score"] >= THRESHOLD
    assert set(mine(all_groups(client), uploaded)) == {frozenset(["dup-b.jpg", "dup-b-small.png"])}
    assert client.get(f"/images/{group_b}").status_code == 404

    # a later run keeps apart what a person un-grouped ("keep all"), and finds the rest again
    again = client.post("/admin/duplicates", json={"threshold": THRESHOLD, "k": 10})
    wait_job(client, again.json()["job_id"])
    assert set(mine(all_groups(client), uploaded)) == {frozenset(["dup-b.jpg", "dup-b-small.png"])}


def test_resolve_refuses_unknown_groups_and_strangers(client, uploaded, first_run):
    unknown = client.post(f"/duplicates/{'0' * 64}/resolve", json={"delete": []})
    assert unknown.status_code == 404 and "no duplicate group" in unknown.json()["detail"]
    assert client.post("/duplicates/not-an-id/resolve", json={}).status_code == 422
    group = next(iter(mine(all_groups(client), uploaded).values()))
    stranger = uploaded["dup-c.jpg"]
    refused = client.post(f"/duplicates/{group['id']}/resolve", json={"delete": [stranger]})
    assert refused.status_code == 422 and stranger in refused.json()["detail"]
    assert client.get(f"/images/{stranger}").status_code == 200  # nothing was deleted
    assert client.post(f"/duplicates/{group['id']}/resolve", json={"ungroup": ["x"]}).status_code == 422
    assert client.get("/duplicates", params={"limit": 0}).status_code == 422
