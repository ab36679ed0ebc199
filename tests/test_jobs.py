"""Job records on a real Redis: counting is idempotent per batch, and the state follows the counts."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from shared.jobs import MAX_ERRORS_KEPT, JobCancelled, JobStore, is_job_id, wait_to_send
from shared.types import Conflict, FileError, NotFound


@pytest.fixture
def redis_url(redis_url: str) -> str:
    """A Redis database no stack uses: the list of jobs holds only this module's."""
    return redis_url.rsplit("/", 1)[0] + "/12"


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


# --- pause, resume, cancel ------------------------------------------------------------------------------

def test_a_paused_job_parks_its_batches_and_resume_hands_them_back_once(redis_url):
    jobs = make_store(redis_url)
    job_id = jobs.create(total=12)
    jobs.record_sent(job_id, "b0", "proxima.embed_batch", [{"id": "0" * 64}])
    jobs.mark_running(job_id)
    assert jobs.hold(job_id, "b0", "proxima.embed_batch", [{"id": "0" * 64}]) == "run"
    jobs.finish_batch(job_id, "b0", done=4, errors=[])
    assert jobs.pause(job_id).state == "paused"
    assert jobs.pause(job_id).state == "paused"  # again: nothing changes
    jobs.mark_running(job_id)  # a batch that started before the pause does not make it running again
    items = [{"id": "1" * 64, "filename": "a.jpg"}]
    assert jobs.hold(job_id, "b1", "proxima.embed_batch", items) == "parked"
    assert jobs.hold(job_id, "b1", "proxima.embed_batch", items) == "parked"  # redelivered: parked once
    assert jobs.hold(job_id, "b0", "proxima.embed_batch", items) == "dropped"  # counted already
    assert jobs.lost_batches() == []  # parked on purpose: the lost-batch sweep leaves them alone
    jobs.finish_batch(job_id, "b2", done=4, errors=[])  # a batch that was running when it was paused
    job = jobs.get(job_id)
    assert (job.state, job.done, job.eta_s) == ("paused", 8, None)
    job, parked = jobs.resume(job_id)
    assert job.state == "running" and parked == [("b1", "proxima.embed_batch", items)]
    assert jobs.resume(job_id)[1] == []  # handed back once
    assert jobs.hold(job_id, "b1", "proxima.embed_batch", items) == "run"
    jobs.finish_batch(job_id, "b1", done=4, errors=[])
    assert jobs.get(job_id).state == "completed"


def test_a_paused_job_whose_last_batch_finishes_completes(redis_url):
    jobs = make_store(redis_url)
    job_id = jobs.create(total=2)
    jobs.pause(job_id)
    assert jobs.get(job_id).state == "paused"
    jobs.finish_batch(job_id, "b0", done=2, errors=[])  # it was running when the job was paused
    assert jobs.get(job_id).state == "completed"


def test_a_resumed_job_that_never_started_is_queued_again(redis_url):
    jobs = make_store(redis_url)
    job_id = jobs.create(total=2)
    jobs.pause(job_id)
    assert jobs.resume(job_id)[0].state == "queued"


def test_cancel_drops_what_is_left_and_keeps_the_counts(redis_url):
    jobs = make_store(redis_url)
    job_id = jobs.create(total=12)
    for key in ("b0", "b1", "b2"):
        jobs.record_sent(job_id, key, "proxima.embed_batch", [])
    jobs.finish_batch(job_id, "b0", done=3, errors=[FileError(None, "x.jpg", "corrupt")])
    jobs.pause(job_id)
    jobs.hold(job_id, "b1", "proxima.embed_batch", [])
    job = jobs.cancel(job_id)
    assert (job.state, job.done, job.failed, job.as_dict()["dropped"]) == ("cancelled", 3, 1, 8)
    assert job.finished
    assert jobs.hold(job_id, "b2", "proxima.embed_batch", []) == "dropped"
    assert jobs.lost_batches() == []  # nothing of it is ever sent again
    jobs.finish_batch(job_id, "b3", done=4, errors=[])  # a batch that was running still counts
    job = jobs.get(job_id)
    assert (job.state, job.done) == ("cancelled", 7)
    for action in (jobs.pause, jobs.cancel, lambda j: jobs.resume(j)):
        try:
            action(job_id)
        except Conflict as exc:
            assert "cancelled" in str(exc)
        else:
            raise AssertionError("a cancelled job accepted a control")
    done = jobs.create(total=1)
    jobs.finish_batch(done, "b0", done=1, errors=[])
    with pytest.raises(Conflict, match="completed"):
        jobs.cancel(done)
    with pytest.raises(NotFound):
        jobs.pause("f" * 32)
    with pytest.raises(NotFound):
        jobs.pause("../../x")


def test_a_cancelled_open_job_takes_no_more_images(redis_url):
    jobs = make_store(redis_url)
    job_id = jobs.create(kind="folder", sealed=False, path="/photos")
    assert jobs.get(job_id).walking
    jobs.cancel(job_id)
    assert not jobs.get(job_id).walking and jobs.get(job_id).finished


def test_the_rate_leaves_out_the_time_spent_paused(redis_url):
    client = redis.Redis.from_url(redis_url)
    jobs = make_store(redis_url)
    job_id = jobs.create(total=100)
    jobs.mark_running(job_id)
    client.hset(f"proxima:job:{job_id}", "started_at", time.time() - 20)
    jobs.pause(job_id)
    client.hset(f"proxima:job:{job_id}", "paused_at", time.time() - 10)  # paused for the last 10 s
    jobs.resume(job_id)
    jobs.finish_batch(job_id, "b0", done=10, errors=[])
    assert jobs.get(job_id).rate_per_s == pytest.approx(1.0, rel=0.05)  # 10 images in 10 s not paused


def test_wait_to_send_waits_while_paused_and_stops_when_cancelled(redis_url):
    jobs = make_store(redis_url)
    job_id = jobs.create(kind="folder", sealed=False)
    wait_to_send(jobs, job_id, queue_depth=lambda: 0, max_queued=1)  # free to go: returns at once
    jobs.pause(job_id)
    returned = threading.Event()

    def walk() -> None:
        wait_to_send(jobs, job_id, queue_depth=lambda: 0, max_queued=1)
        returned.set()

    threading.Thread(target=walk, daemon=True).start()
    assert not returned.wait(1.0)
    jobs.resume(job_id)
    assert returned.wait(5.0)
    jobs.cancel(job_id)
    with pytest.raises(JobCancelled):
        wait_to_send(jobs, job_id)
    stop = threading.Event()
    stop.set()
    with pytest.raises(InterruptedError):
        wait_to_send(jobs, jobs.create(), queue_depth=lambda: 5, max_queued=1, stop=stop)


def test_jobs_are_listed_newest_first_by_kind_and_pruned_when_gone(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.delete("proxima:jobs", "proxima:jobs:upload", "proxima:jobs:folder")
    jobs = make_store(redis_url)
    made = [jobs.create(kind="upload" if i % 2 else "folder", sealed=True) for i in range(7)]
    jobs.finish_batch(made[-1], "b0", done=0, errors=[FileError(None, "x.jpg", "corrupt")])
    total, page = jobs.page(0, 3)
    assert total == 7 and [j.job_id for j in page] == made[::-1][:3]
    assert page[0].errors == ()  # a summary: the error list is left out
    assert [j.job_id for j in jobs.page(6, 3)[1]] == [made[0]]
    total, folders = jobs.page(0, 10, "folder")
    assert total == 4 and {j.kind for j in folders} == {"folder"}
    client.delete(f"proxima:job:{made[-1]}", f"proxima:job:{made[3]}")  # gone (expired early)
    total, page = jobs.page(0, 3)
    assert [j.job_id for j in page] == [made[5], made[4], made[2]]  # a full page all the same
    assert [j.job_id for j in jobs.page(3, 3)[1]] == [made[1], made[0]] and total == 5
