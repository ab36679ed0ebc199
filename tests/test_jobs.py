"""Job records on a real Redis: counting is idempotent per batch, and the state follows the counts."""

from __future__ import annotations

import redis

from shared.jobs import MAX_ERRORS_KEPT, JobStore, is_job_id
from shared.types import FileError


def make_store(redis_url: str) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_url), ttl_s=60)


def test_counts_each_batch_once_and_derives_state(redis_url):
    jobs = make_store(redis_url)
    job_id = jobs.create(total=5)
    assert is_job_id(job_id)
    assert jobs.get(job_id).as_dict()["state"] == "queued"
    jobs.mark_running(job_id)
    assert jobs.get(job_id).as_dict()["state"] == "running"
    assert jobs.finish_batch(job_id, "b0", done=3, errors=[])
    assert not jobs.finish_batch(job_id, "b0", done=3, errors=[])  # redelivered batch: ignored
    assert jobs.get(job_id).as_dict()["state"] == "running"
    assert jobs.finish_batch(job_id, "b1", done=1, errors=[FileError("a" * 64, "x.jpg", "corrupt")])
    job = jobs.get(job_id).as_dict()
    assert (job["state"], job["done"], job["failed"]) == ("completed_with_errors", 4, 1)
    assert job["errors"] == [{"id": "a" * 64, "filename": "x.jpg", "message": "corrupt"}]
    assert redis.Redis.from_url(redis_url).ttl(f"proxima:job:{job_id}") > 0


def test_all_done_is_completed_and_all_failed_is_failed(redis_url):
    jobs = make_store(redis_url)
    ok = jobs.create(total=2)
    jobs.finish_batch(ok, "b0", done=2, errors=[])
    assert jobs.get(ok).as_dict()["state"] == "completed"
    bad = jobs.create(total=1)
    jobs.finish_batch(bad, "b0", done=0, errors=[FileError(None, "x", "no")])
    assert jobs.get(bad).as_dict()["state"] == "failed"


def test_unknown_and_malformed_ids(redis_url):
    jobs = make_store(redis_url)
    assert jobs.get("0" * 32) is None
    assert jobs.get("../../etc") is None
    assert not jobs.finish_batch("0" * 32, "b0", done=1, errors=[])  # a batch of a vanished job


def test_error_list_is_capped(redis_url):
    jobs = make_store(redis_url)
    job_id = jobs.create(total=MAX_ERRORS_KEPT + 5)
    errors = [FileError(None, f"{i}.jpg", "bad") for i in range(MAX_ERRORS_KEPT + 5)]
    jobs.finish_batch(job_id, "b0", done=0, errors=errors)
    job = jobs.get(job_id).as_dict()
    assert job["failed"] == MAX_ERRORS_KEPT + 5 and len(job["errors"]) == MAX_ERRORS_KEPT


def test_an_open_job_nobody_adds_to_is_reported_interrupted(redis_url):
    import time

    from shared.jobs import WALK_STALE_S

    jobs = make_store(redis_url)
    job_id = jobs.create(kind="folder", sealed=False, path="/photos")
    jobs.add(job_id, counts={"seen": 3, "total": 2})
    assert jobs.get(job_id).as_dict()["walking"] and "interrupted" not in jobs.get(job_id).as_dict()
    client = redis.Redis.from_url(redis_url)
    client.hset(f"proxima:job:{job_id}", "alive_at", time.time() - WALK_STALE_S - 1)  # as if its walk died
    job = jobs.get(job_id).as_dict()
    assert (job["walking"], job["interrupted"]) == (False, True)
    jobs.add(job_id, counts={"seen": 1})  # the walk was only slow: alive again
    assert jobs.get(job_id).as_dict()["walking"] and "interrupted" not in jobs.get(job_id).as_dict()
    client.hset(f"proxima:job:{job_id}", "alive_at", time.time() - WALK_STALE_S - 1)
    jobs.add(job_id, counts={}, seal=True)  # a sealed job is never "interrupted"
    assert "interrupted" not in jobs.get(job_id).as_dict() and not jobs.get(job_id).as_dict()["walking"]


def test_a_batch_sent_and_never_counted_is_reported_lost(redis_url):
    jobs = make_store(redis_url)
    job_id = jobs.create(total=8)
    items = [{"id": "a" * 64, "filename": "a.jpg"}]
    jobs.record_sent(job_id, "b0", "proxima.embed_batch", items)
    jobs.record_sent(job_id, "b1", "proxima.embed_batch", items)
    jobs.finish_batch(job_id, "b0", done=4, errors=[])
    assert [(j, k) for j, k, _, _ in jobs.lost_batches()] == [(job_id, "b1")]
    jobs.finish_batch(job_id, "b1", done=4, errors=[])  # the job is complete: nothing is lost any more
    assert not [j for j, _, _, _ in jobs.lost_batches() if j == job_id]
