"""Job records in Redis: what happened to each image of an upload or a folder ingest.

A job is a hash `proxima:job:<id>` with counters, a list of per-file errors, a hash of skip reasons, and
a set of the batch keys already counted. Every change goes through one Lua script that adds a batch's
counts only the first time its key is seen (so a batch redelivered after a worker crash is never counted
twice) and derives the state in the same step:

    queued → running → completed | completed_with_errors | failed (every image failed)
    queued | running ⇄ paused;  queued | running | paused → cancelled

(`shared.types.JobState`; the Lua below applies `shared.types.final_state`.) Pausing and cancelling set a
`control` field that workers read as a batch starts (`hold`): a batch of a paused job is parked in the job
record instead of run (resuming sends the parked batches again), one of a cancelled job is dropped; the
walks that feed a job wait while it is paused and stop when it is cancelled (`wait_to_send`). Counters: `total` images,
`done` (embedded, or found already indexed: duplicates count as done for every kind of job), `failed`, and
for folder ingests `seen` (files walked), `skipped` (not images) and `duplicates` (part of `done`). A
folder job is open while its walk is still adding images; it completes only once sealed.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, cast

import redis
from redis.typing import EncodableT, FieldT

from shared.types import FINAL_STATES, Conflict, FileError, Job, JobState, NotFound

_PREFIX = "proxima:job:"
_OPEN = "proxima:jobs:open"  # jobs not yet in a final state, for the lost-batch sweep
_INDEX = "proxima:jobs"  # every job by creation time (a sorted set), for `GET /jobs`; also one per kind
PAUSED, CANCELLED = "paused", "cancelled"  # values of a job's `control` field
MAX_ERRORS_KEPT = 10_000
COUNTERS = ("total", "done", "failed", "seen", "skipped", "duplicates")
WALK_STALE_S = 120  # an open job nobody added to for this long is reported as interrupted

_UPDATE = """
-- KEYS: job hash, batch-key set, errors list, skip-reasons hash
-- ARGV: batch key ('' = not a batch), now, ttl, max errors, seal (0/1), n counters,
--       counter name/delta pairs, n reasons, reason/count pairs, error json...
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[1] ~= '' and redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
local i = 7
for _ = 1, tonumber(ARGV[6]) do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2
end
local n_reasons = tonumber(ARGV[i]); i = i + 1
for _ = 1, n_reasons do
  redis.call('HINCRBY', KEYS[4], ARGV[i], ARGV[i + 1]); i = i + 2
end
local kept = redis.call('LLEN', KEYS[3])
for j = i, #ARGV do
  if kept < tonumber(ARGV[4]) then redis.call('RPUSH', KEYS[3], ARGV[j]); kept = kept + 1 end
end
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'sealed', 1) end
local f = redis.call('HMGET', KEYS[1], 'total', 'done', 'failed', 'sealed', 'state', 'control')
local total, done, failed = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
local state = f[5]
if state == 'cancelled' then  -- final: what batches still running finish is counted, the state stays
elseif f[4] == '1' and done + failed >= total then
  if failed == 0 then state = 'completed' elseif done == 0 then state = 'failed'
  else state = 'completed_with_errors' end
elseif f[6] == 'paused' then state = 'paused'
elseif done + failed > 0 then state = 'running' end
redis.call('HSET', KEYS[1], 'state', state, 'updated_at', ARGV[2])
if ARGV[1] == '' then redis.call('HSET', KEYS[1], 'alive_at', ARGV[2]) end  -- an add: its walk is alive
for k = 1, 4 do redis.call('EXPIRE', KEYS[k], ARGV[3]) end
return 1
"""

_START = """
-- KEYS: job hash; ARGV: now, ttl. The first batch started: queued → running (not a paused or cancelled job)
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1]) == 1 and redis.call('HGET', KEYS[1], 'state') == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'running')
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

_HOLD = """
-- KEYS: job hash, batch-key set, parked hash; ARGV: batch key, batch json, ttl
-- A worker is about to run a batch: 'run', or 'parked' (the job is paused: kept for its resume), 'dropped'
-- (cancelled, or a redelivery of a batch already counted while paused)
local control = redis.call('HGET', KEYS[1], 'control')
if control == 'cancelled' then return 'dropped' end
if control ~= 'paused' then return 'run' end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 'dropped' end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 'parked'
"""

_CONTROL = """
-- KEYS: job hash, parked hash, sent hash, open set; ARGV: pause | resume | cancel, now, job id
-- Returns {-1} (no such job), {0, state} (already final), {1} (done; a resume adds the parked batches as
-- key, json pairs), {2} (nothing to do: pausing a paused job, resuming one that is not paused)
local f = redis.call('HMGET', KEYS[1], 'state', 'control', 'paused_at', 'paused_s', 'done', 'failed', 'started_at')
local state, control = f[1], f[2]
if not state then return {-1} end
if state == 'completed' or state == 'completed_with_errors' or state == 'failed' or state == 'cancelled' then
  return {0, state}
end
local now = tonumber(ARGV[2])
local paused_s = tonumber(f[4] or '0')
if control == 'paused' then paused_s = paused_s + now - tonumber(f[3]) end
if ARGV[1] == 'pause' then
  if control == 'paused' then return {2} end
  redis.call('HSET', KEYS[1], 'control', 'paused', 'state', 'paused', 'paused_at', now)
  return {1}
end
if ARGV[1] == 'resume' then
  if control ~= 'paused' then return {2} end
  local resumed = 'queued'
  if f[7] or tonumber(f[5]) + tonumber(f[6]) > 0 then resumed = 'running' end
  redis.call('HDEL', KEYS[1], 'control', 'paused_at')
  redis.call('HSET', KEYS[1], 'state', resumed, 'paused_s', paused_s)
  local out = {1}
  for _, v in ipairs(redis.call('HGETALL', KEYS[2])) do out[#out + 1] = v end
  redis.call('DEL', KEYS[2])
  return out
end
redis.call('HSET', KEYS[1], 'control', 'cancelled', 'state', 'cancelled', 'cancelled_at', now, 'paused_s', paused_s)
redis.call('HDEL', KEYS[1], 'paused_at')
redis.call('DEL', KEYS[2], KEYS[3])  -- parked and sent batches: nothing will send them again
redis.call('SREM', KEYS[4], ARGV[3])
return {1}
"""


class JobCancelled(InterruptedError):
    """The job was cancelled (`POST /jobs/{id}/cancel`): whatever feeds or runs it stops."""


class JobPaused(InterruptedError):
    """The job was paused: a long-running task of it (a duplicates run) stops where it is, to be resumed."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def is_job_id(value: str) -> bool:
    try:
        return uuid.UUID(hex=value).hex == value
    except ValueError:
        return False


class JobStore:
    def __init__(self, client: redis.Redis, *, ttl_s: int = 30 * 86400) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._update = client.register_script(_UPDATE)
        self._start = client.register_script(_START)
        self._hold = client.register_script(_HOLD)
        self._control = client.register_script(_CONTROL)

    @staticmethod
    def _keys(job_id: str) -> list[str]:
        base = _PREFIX + job_id
        return [base, base + ":batches", base + ":errors", base + ":skips", base + ":stages", base + ":sent",
                base + ":parked"]

    def add_stage_times(self, job_id: str, seconds: dict[str, float]) -> None:
        """Add a batch's seconds per stage (read, decode, transfer, encode, upsert): where a job's time goes.
        Diagnostic only: a redelivered batch adds its times again."""
        if not is_job_id(job_id):
            return
        key = self._keys(job_id)[4]
        with self.redis.pipeline(transaction=False) as pipe:
            for stage, value in seconds.items():
                pipe.hincrbyfloat(key, stage, value)
            pipe.hincrby(key, "batches", 1)
            pipe.expire(key, self.ttl_s)
            pipe.execute()

    def create(self, *, total: int = 0, kind: str = "upload", sealed: bool = True, **info: str) -> str:
        """A new queued job expecting `total` images (more may be added until it is sealed)."""
        job_id = uuid.uuid4().hex
        now = time.time()
        key = self._keys(job_id)[0]
        fields: dict[FieldT, EncodableT] = {name: 0 for name in COUNTERS}
        # labels and paths may hold anything (a path that is not UTF-8, a client's lone surrogates): stored as
        # valid UTF-8, with what cannot be encoded replaced
        fields.update(kind=kind, state="queued", total=total, sealed=int(sealed), created_at=now,
                      updated_at=now, alive_at=now,
                      **{k: v.encode("utf-8", "replace").decode("utf-8") for k, v in info.items()})
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.ttl_s)
            pipe.sadd(_OPEN, job_id)
            pipe.zadd(_INDEX, {job_id: now})
            pipe.zadd(f"{_INDEX}:{kind}", {job_id: now})
            pipe.execute()
        return job_id

    def page(self, offset: int = 0, limit: int = 20, kind: str | None = None) -> tuple[int, list[Job]]:
        """(number of jobs, the jobs `offset` .. `offset + limit`), newest first; `kind` only those. Jobs
        past their time to live leave the index here."""
        index = f"{_INDEX}:{kind}" if kind else _INDEX
        self.redis.zremrangebyscore(index, "-inf", time.time() - self.ttl_s)
        jobs: list[Job] = []
        position = offset
        while len(jobs) < limit:
            ids = cast(list[bytes], self.redis.zrevrange(index, position, position + limit - len(jobs) - 1))
            if not ids:
                break
            found = [(raw, self.get(_text(raw), errors=False)) for raw in ids]
            gone = [raw for raw, job in found if job is None]  # records that expired early or were deleted
            if gone:
                self.redis.zrem(index, *gone)  # the ones after them move up: `position` counts only those kept
            jobs += [job for _, job in found if job is not None]
            position += len(ids) - len(gone)
        return int(self.redis.zcard(index)), jobs

    # --- pause, resume, cancel --------------------------------------------------------------------------

    def control(self, job_id: str) -> str | None:
        """PAUSED, CANCELLED, or None (the job runs)."""
        value = self.redis.hget(self._keys(job_id)[0], "control")
        return _text(value) if value is not None else None

    def check_going(self, job_id: str) -> None:
        """Raise JobCancelled or JobPaused if the job was cancelled or paused."""
        control = self.control(job_id)
        if control == CANCELLED:
            raise JobCancelled(f"job {job_id} was cancelled")
        if control == PAUSED:
            raise JobPaused(f"job {job_id} is paused")

    def hold(self, job_id: str, batch_key: str, task: str, items: list[dict]) -> str:
        """Asked by a worker about to run a batch: "run", "parked" (the job is paused: the batch is kept and
        sent again on resume; the worker acknowledges it) or "dropped" (the job was cancelled)."""
        if not is_job_id(job_id):
            return "run"
        base, batches, *_, parked = self._keys(job_id)
        payload = json.dumps({"task": task, "items": items})
        return _text(self._hold(keys=[base, batches, parked], args=[batch_key, payload, self.ttl_s]))

    def pause(self, job_id: str) -> Job:
        """No new batch of the job starts (those running finish); its walk, if any, waits."""
        self._set_control(job_id, "pause")
        return self._must_get(job_id)

    def resume(self, job_id: str) -> tuple[Job, list[tuple[str, str, list[dict]]]]:
        """Let the job go on; returns it and its parked batches (batch key, task, items), to be sent again."""
        values = self._set_control(job_id, "resume")
        parked = [(_text(k), json.loads(v)) for k, v in zip(values[1::2], values[2::2], strict=True)]
        return self._must_get(job_id), [(key, batch["task"], batch["items"]) for key, batch in parked]

    def cancel(self, job_id: str) -> Job:
        """Drop the job's remaining batches (parked ones at once, queued ones as workers take them); what
        was done stays done and counted."""
        self._set_control(job_id, "cancel")
        return self._must_get(job_id)

    def _set_control(self, job_id: str, action: str) -> list:
        if not is_job_id(job_id):
            raise NotFound(f"no job with id {job_id[:64]!r}")
        base, *_, sent, parked = self._keys(job_id)
        result = self._control(keys=[base, parked, sent, _OPEN], args=[action, time.time(), job_id])
        if result[0] == -1:
            raise NotFound(f"no job with id {job_id[:64]!r}")
        if result[0] == 0:
            done = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
            raise Conflict(f"job {job_id} is {_text(result[1])}: it cannot be {done} any more")
        return list(result)

    def _must_get(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id[:64]!r}")
        return job

    def record_sent(self, job_id: str, batch_key: str, task: str, items: list[dict]) -> None:
        """Remember a batch handed to the queue, so one the queue loses can be sent again (`lost_batches`)."""
        key = self._keys(job_id)[5]
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, batch_key, json.dumps({"task": task, "items": items}))
            pipe.expire(key, self.ttl_s)
            pipe.execute()

    def lost_batches(self) -> list[tuple[str, str, str, list[dict]]]:
        """(job id, batch key, task, items) of every batch sent and never counted, in jobs not yet finished.

        Call it only when nothing is queued or being worked on (queue empty, no unacknowledged message): a
        batch still missing then was lost. (kombu's Redis transport takes a message off the queue before it
        records it as unacknowledged, so a worker killed in that instant loses it.)"""
        lost = []
        for raw in self.redis.smembers(_OPEN):
            job_id = _text(raw)
            key, batches_key, *_, sent_key, _ = self._keys(job_id)
            state = self.redis.hget(key, "state")
            if state is None or JobState(_text(state)) in FINAL_STATES:
                self.redis.srem(_OPEN, job_id)
                continue
            if self.control(job_id) == PAUSED:  # its batches are parked on purpose until it is resumed
                continue
            counted = self.redis.smembers(batches_key)
            for batch_key, value in self.redis.hgetall(sent_key).items():
                if batch_key not in counted:
                    sent = json.loads(value)
                    lost.append((job_id, _text(batch_key), sent["task"], sent["items"]))
        return lost


    def mark_running(self, job_id: str) -> None:
        """A first batch started (an expired or foreign job gets no partial record)."""
        self._start(keys=[self._keys(job_id)[0]], args=[time.time(), self.ttl_s])

    def finish_batch(self, job_id: str, batch_key: str, *, done: int, errors: Sequence[FileError],
                     duplicates: int = 0) -> bool:
        """Count a finished batch once; False if this batch key was already counted (a redelivery)."""
        return self._apply(job_id, batch_key, {"done": done, "failed": len(errors), "duplicates": duplicates},
                           errors=errors)

    def add(self, job_id: str, *, counts: Mapping[str, int], reasons: Mapping[str, int] | None = None,
            seal: bool = False) -> None:
        """Progress of a folder walk: add counters and skip reasons; `seal` once nothing more will come.
        Also a sign of life of whoever adds to the job (see `touch`)."""
        self._apply(job_id, "", counts, reasons=reasons or {}, seal=seal)

    def add_found(self, job_id: str, *, seen: int = 0, skipped: int = 0, duplicates: int = 0,
                  reasons: Mapping[str, int] | None = None, seal: bool = False) -> None:
        """What a walk found besides the images it queues: files seen, skipped (with reasons), and files
        indexed by an earlier run, which are duplicates and so done at once."""
        self.add(job_id, counts={"seen": seen, "skipped": skipped, "duplicates": duplicates, "done": duplicates,
                                 "total": duplicates}, reasons=reasons, seal=seal)

    def touch(self, job_id: str) -> None:
        """The walk (or client) adding to this open job is alive. One silent for WALK_STALE_S is reported as
        `interrupted` (its process died before sealing the job): run the same ingest again to finish."""
        key = self._keys(job_id)[0]
        if self.redis.exists(key):
            self.redis.hset(key, "alive_at", time.time())

    def _apply(self, job_id: str, batch_key: str, counts: Mapping[str, int], *, errors: Sequence[FileError] = (),
               reasons: Mapping[str, int] | None = None, seal: bool = False) -> bool:
        counts = {k: v for k, v in counts.items() if v}
        reasons = reasons or {}
        args: list[Any] = [batch_key, time.time(), self.ttl_s, MAX_ERRORS_KEPT, int(seal), len(counts)]
        for name, delta in counts.items():
            if name not in COUNTERS:
                raise ValueError(f"unknown job counter {name!r}")
            args += [name, delta]
        args.append(len(reasons))
        for reason, n in reasons.items():
            args += [reason, n]
        args += [json.dumps(asdict(err)) for err in errors]
        return self._update(keys=self._keys(job_id)[:4], args=args) == 1

    def get(self, job_id: str, *, errors: bool = True) -> Job | None:
        """The job, or None; `errors=False` leaves its per-file error list out (a cheap summary)."""
        if not is_job_id(job_id):
            return None
        key, _, errors_key, skips_key, stages_key, *_ = self._keys(job_id)
        with self.redis.pipeline() as pipe:
            pipe.hgetall(key)
            pipe.hgetall(skips_key)
            pipe.hgetall(stages_key)
            if errors:
                pipe.lrange(errors_key, 0, -1)
            fields, skips, stages, *error_list = pipe.execute()
        if not fields:
            return None
        f = {k.decode(): v.decode() for k, v in fields.items()}
        if "kind" not in f:
            return None  # not a job record we wrote
        counts = {name: int(f.get(name, 0)) for name in COUNTERS}
        sealed = f.get("sealed") == "1"
        alive = float(f.get("alive_at") or f["updated_at"])
        state = JobState(f["state"])
        is_open = f["kind"] != "upload" and not sealed and state is not JobState.CANCELLED
        # nobody added for a while: its walk died (a paused job's walk may wait as long as it likes)
        interrupted = is_open and state is not JobState.PAUSED and time.time() - alive > WALK_STALE_S
        walking = is_open and not interrupted
        started = float(f.get("started_at", 0)) or None
        updated = float(f["updated_at"])
        processed = counts["done"] + counts["failed"]
        busy = updated - (started or updated) - float(f.get("paused_s") or 0)  # time spent not paused
        rate = processed / busy if started and busy > 0 and processed else None
        remaining = counts["total"] - processed
        planned = f.get("planned") == "1"  # its total was known before the walk (a re-embed: the stored images)
        if state in (JobState.PAUSED, JobState.CANCELLED):
            eta: float | None = None
        elif rate and (planned or not walking) and remaining > 0:
            eta = round(remaining / rate, 1)
        else:
            eta = 0.0 if remaining <= 0 and sealed else None
        stage_s = None
        if stages:  # seconds per stage summed over batches (read and decode also over decode threads)
            stage_s = {k.decode(): round(float(v), 3) for k, v in stages.items() if k != b"batches"}
            stage_s["batches"] = int(stages.get(b"batches", 0))
        return Job(
            job_id=job_id, kind=f["kind"], state=state, **counts,
            errors=tuple(FileError(**json.loads(e)) for e in (error_list[0] if error_list else [])),
            created_at=float(f["created_at"]), started_at=started, updated_at=updated,
            rate_per_s=round(rate, 2) if rate else None, eta_s=eta,
            path=f.get("path") if f["kind"] != "upload" else None, walking=walking, interrupted=interrupted,
            skipped_reasons={k.decode(): int(v) for k, v in skips.items()}, stage_s=stage_s,
        )


def wait_to_send(jobs: JobStore, job_id: str, *, queue_depth: Callable[[], int] | None = None, max_queued: int = 0,
                 stop: threading.Event | None = None) -> None:
    """Return when a walk may go on feeding job `job_id`: not paused, and (with `queue_depth`) fewer than
    `max_queued` batches waiting in the queue. Meanwhile the job is told every 10 s that its walk is alive.
    Raises JobCancelled when the job is cancelled, InterruptedError when `stop` is set."""
    stop = stop or threading.Event()
    touched = time.monotonic()
    while True:
        control = jobs.control(job_id)
        if control == CANCELLED:
            raise JobCancelled(f"job {job_id} was cancelled")
        if control != PAUSED and (queue_depth is None or queue_depth() < max_queued):
            return
        if time.monotonic() - touched > 10:
            jobs.touch(job_id)  # still alive, only waiting (for the workers, or for a resume)
            touched = time.monotonic()
        if stop.wait(0.5 if control == PAUSED else 0.05):
            raise InterruptedError(f"the walk of job {job_id} was stopped")
