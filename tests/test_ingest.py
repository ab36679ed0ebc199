"""Folder ingest on the real stack: content sniffing, duplicates, resume, the API route, remote mode."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from scripts.devservices import REPO, Api, child_env, wait_for
from scripts.synthetic import encode, jpeg, photo
from shared.ingest import FileRef, walk_folder
from shared.jobs import JobCancelled, JobStore


def make_folder(root: Path, seed: int) -> dict[str, int]:
    """A folder of mixed content; returns the expected counts."""
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(6):
        (root / f"img{i}.jpg").write_bytes(jpeg(seed + i))
    for i in range(4):
        (root / "sub" / f"pic{i}.png").write_bytes(encode(photo(seed + 10 + i), "PNG"))
    (root / "sub" / "deeper" / "deep.webp").write_bytes(encode(photo(seed + 20), "WEBP"))
    (root / "no_extension").write_bytes(jpeg(seed + 21))  # recognised by content
    (root / "photo.dat").write_bytes(encode(photo(seed + 22), "PNG"))
    (root / "copy_of_img0.jpeg").write_bytes(jpeg(seed))  # same bytes as img0.jpg
    (root / "sub" / "also_img1.jpg").write_bytes(jpeg(seed + 1))
    (root / "notes.jpg").write_text("not an image at all\n")
    (root / "page.png").write_text("<!DOCTYPE html><html></html>")
    (root / "empty.jpg").write_bytes(b"")
    (root / "broken.jpg").write_bytes(jpeg(seed + 30)[:1200])
    return {"seen": 19, "skipped": 3, "failed": 1, "unique_good": 13, "content_duplicates": 2}


def run_script(env: dict[str, str], *args: str, timeout: float = 180) -> dict:
    result = subprocess.run(
        [sys.executable, "scripts/ingest_folder.py", *args], cwd=REPO, env=child_env(env),
        capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def vector_count(client) -> int:
    return client.get("/health").json()["vectors"]


def test_folder_ingest_then_resume(client, stack_env, tmp_path):
    expected = make_folder(tmp_path / "photos", seed=100)
    before = vector_count(client)
    first = run_script(stack_env, str(tmp_path / "photos"), "--recursive")
    assert first["state"] == "completed_with_errors"
    assert first["seen"] == expected["seen"]
    assert first["skipped"] == expected["skipped"]
    assert first["failed"] == expected["failed"]
    assert first["queued"] == expected["seen"] - expected["skipped"]
    assert first["duplicates"] == expected["content_duplicates"]
    assert set(first["skipped_reasons"]) == {
        "empty file (0 bytes)", "not an image: the file looks like plain text",
        "not an image: the file is an HTML document"}
    assert "broken.jpg" in first["errors"][0]["filename"]
    assert vector_count(client) == before + expected["unique_good"]

    # the content is searchable, and a file with no extension was indexed by content
    hit = client.post("/search", files={"file": ("q", jpeg(121))}).json()["results"][0]
    assert hit["filename"] == "no_extension" and hit["score"] > 0.999

    # run again: nothing is re-sent or re-embedded
    again = run_script(stack_env, str(tmp_path / "photos"), "--recursive")
    assert again["queued"] == 1  # only the broken file, which never got indexed
    assert again["duplicates"] == expected["unique_good"] + expected["content_duplicates"]
    assert vector_count(client) == before + expected["unique_good"]

    # a touched file is re-read, recognised by its content, and still not embedded twice
    os.utime(tmp_path / "photos" / "img3.jpg", ns=(1, 1))
    touched = run_script(stack_env, str(tmp_path / "photos"), "--recursive")
    assert touched["queued"] == 2 and touched["duplicates"] == again["duplicates"]
    assert vector_count(client) == before + expected["unique_good"]


def test_folder_ingest_into_collections_keeps_relative_paths(client, stack_env, tmp_path):
    expected = make_folder(tmp_path / "albums", seed=150)
    first = run_script(stack_env, str(tmp_path / "albums"), "-r", "--collection", "Set A")
    assert first["done"] == expected["unique_good"] + expected["content_duplicates"]
    deep_id = hashlib.sha256((tmp_path / "albums" / "sub" / "deeper" / "deep.webp").read_bytes()).hexdigest()
    meta = client.get(f"/images/{deep_id}/metadata").json()
    assert (meta["path"], meta["collections"]) == ("sub/deeper/deep.webp", ["Set A"])
    before = vector_count(client)
    again = run_script(stack_env, str(tmp_path / "albums"), "-r", "--collection", "Set B")  # nothing to embed
    assert again["queued"] == expected["failed"] and vector_count(client) == before  # the broken file, again
    assert client.get(f"/images/{deep_id}/metadata").json()["collections"] == ["Set A", "Set B"]
    query = {"file": ("q.jpg", jpeg(150))}
    in_b = client.post("/search", files=query, data={"collection": "Set B", "top_k": "100"}).json()["results"]
    assert len(in_b) == expected["unique_good"]
    under_sub = client.post("/search", files=query, data={"collection": "Set B", "path_prefix": "sub/",
                                                          "top_k": "100"}).json()["results"]
    distinct = {"sub/pic0.png", "sub/pic1.png", "sub/pic2.png", "sub/pic3.png", "sub/deeper/deep.webp"}
    # sub/also_img1.jpg holds img1.jpg's bytes: one image, stored with whichever path the worker met first
    assert distinct <= {r["path"] for r in under_sub} <= distinct | {"sub/also_img1.jpg"}
    albums = {c["name"]: c["images"] for c in client.get("/collections").json()["collections"]}
    assert albums["Set A"] == albums["Set B"] == expected["unique_good"]


def test_non_recursive_stays_in_the_folder(client, stack_env, tmp_path):
    make_folder(tmp_path / "p", seed=200)
    result = run_script(stack_env, str(tmp_path / "p"))
    assert result["seen"] == 13  # the top-level files only


def test_api_ingest_respects_allowed_roots(stack_settings, worker, tmp_path):
    from fastapi.testclient import TestClient

    from api.main import create_app

    allowed = tmp_path / "allowed"
    make_folder(allowed / "set", seed=300)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(jpeg(399))
    (allowed / "escape").symlink_to(outside, target_is_directory=True)
    (allowed / "set" / "link.jpg").symlink_to(outside / "secret.jpg")
    settings = stack_settings.model_copy(update={"ingest_roots": [allowed]})
    with TestClient(create_app(settings)) as api:
        started = api.post("/ingest", json={"path": str(allowed / "set"), "recursive": True})
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        wait_for(lambda: api.get(f"/jobs/{job_id}").json()["state"] in ("completed", "completed_with_errors"), 90,
                 "the folder job")
        job = api.get(f"/jobs/{job_id}").json()
        assert job["kind"] == "folder" and not job["walking"]
        assert job["skipped_reasons"].get("symlink pointing outside the allowed roots") == 1
        assert job["failed"] == 1 and job["rate_per_s"] and job["eta_s"] == 0.0
        for path in (str(outside), str(allowed / "escape"), "/etc", str(allowed / ".." / "outside"),
                     str(allowed) + "\x00/x"):
            response = api.post("/ingest", json={"path": path})
            assert response.status_code == 403, (path, response.text)
        assert api.post("/ingest", json={"path": str(allowed / "missing")}).status_code == 404
    with TestClient(create_app(stack_settings)) as api:  # no INGEST_ROOTS: disabled
        assert api.post("/ingest", json={"path": str(allowed)}).status_code == 403


def test_remote_mode_uploads_in_batches(stack_env, worker, tmp_path):
    server = Api(stack_env, tmp_path / "api.log")
    try:
        expected = make_folder(tmp_path / "remote", seed=400)
        args = [str(tmp_path / "remote"), "-r", "--api", server.url,
                "--state", str(tmp_path / "state.sqlite"), "--batch-size", "5"]
        first = run_script(stack_env, *args)
        assert first["state"] == "completed_with_errors"
        assert (first["seen"], first["skipped"], first["failed"]) == (
            expected["seen"], expected["skipped"], expected["failed"])
        assert first["done"] == expected["unique_good"] + expected["content_duplicates"]
        # A re-run where every image is indexed already and only a broken file is new (refused at upload,
        # so uploaded again each run): its duplicates count as done, so the job is not "failed".
        (tmp_path / "remote" / "bad_header.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 40)
        again = run_script(stack_env, *args)
        assert again["queued"] == 0 and again["duplicates"] >= expected["unique_good"]
        assert (again["state"], again["failed"]) == ("completed_with_errors", 1)
        assert again["done"] == again["duplicates"] and again["seen"] == expected["seen"] + 1
        assert again["skipped"] == expected["skipped"]
    finally:
        server.stop()


def test_walk_keeps_the_queue_bounded(redis_url, tmp_path):
    import redis

    for i in range(40):
        (tmp_path / f"{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(40))
    jobs = JobStore(redis.Redis.from_url(redis_url))
    job_id = jobs.create(kind="folder", sealed=False)
    in_queue: list[int] = []
    high_water = 0
    lock = threading.Lock()

    def enqueue(job, key, items):
        nonlocal high_water
        with lock:
            in_queue.append(len(items))
            high_water = max(high_water, len(in_queue))

    def consume():
        while True:
            time.sleep(0.01)
            with lock:
                if in_queue:
                    in_queue.pop(0)

    threading.Thread(target=consume, daemon=True).start()

    class NoManifest:
        def lookup(self, files: list[FileRef]):
            return [None] * len(files)

    stats = walk_folder(tmp_path, job_id, recursive=False, batch_size=2, jobs=jobs,
                        backend=None,  # never consulted: the manifest knows no file
                        manifest=NoManifest(), enqueue=enqueue, queue_depth=lambda: len(in_queue), max_queued=3)
    assert stats.queued == 40 and high_water <= 3
    assert jobs.get(job_id).total == 40 and not jobs.get(job_id).walking


def test_a_walk_waits_while_its_job_is_paused_and_stops_when_it_is_cancelled(redis_url, tmp_path):
    import redis

    for i in range(30):
        (tmp_path / f"{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes([i]) * 40)
    jobs = JobStore(redis.Redis.from_url(redis_url))
    job_id = jobs.create(kind="folder", sealed=False)
    sent: list[str] = []
    outcome: list[BaseException | None] = []

    class NoManifest:
        def lookup(self, files: list[FileRef]):
            return [None] * len(files)

    def enqueue(job, key, items):
        sent.append(key)
        if len(sent) == 2:
            jobs.pause(job_id)  # from the API, say, as the second batch goes out
        time.sleep(0.1)  # the queue takes its time: the cancel lands mid-way

    def walk() -> None:
        try:
            walk_folder(tmp_path, job_id, recursive=False, batch_size=2, jobs=jobs, backend=None,
                        manifest=NoManifest(), enqueue=enqueue, queue_depth=lambda: 0, max_queued=4)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)

    thread = threading.Thread(target=walk, daemon=True)
    thread.start()
    time.sleep(1.5)
    assert len(sent) == 2 and jobs.get(job_id).walking  # paused: nothing more sent, the walk waits
    jobs.resume(job_id)
    wait_for(lambda: len(sent) >= 4, 10, "the walk to go on")
    jobs.cancel(job_id)
    thread.join(10)
    assert isinstance(outcome[0], JobCancelled) and len(sent) < 15
    job = jobs.get(job_id)
    assert job.state == "cancelled" and not job.walking and job.total == 2 * len(sent)


def test_backfill_script_runs_on_the_stack(client, stack_env):
    """scripts/backfill_metadata.py against the live stack: its images were ingested with their metadata,
    so it reads every record and changes none (the backfill itself: tests/backends/test_backfill.py)."""
    result = subprocess.run([sys.executable, "scripts/backfill_metadata.py", "-q"], cwd=REPO,
                            env=child_env(stack_env), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["seen"] == vector_count(client) and report["updated"] == 0
