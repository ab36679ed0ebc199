"""Job records in Redis: what happened to each image of an upload or a folder ingest.

A job is a hash `proxima:job:<id>` with counters, a list of per-file errors, a hash of skip reasons, and
a set of the batch keys already counted. Every change goes through one Lua script that adds a batch's
counts only the first time its key is seen (so a batch redelivered after a worker crash is never counted
twice) and derives the state in the same step:

    queued → running → completed | completed_with_errors | failed (every image failed)

(`shared.types.JobState`; the Lua below applies `shared.types.final_state`.) Counters: `total` images,
`done` (embedded, or found already indexed: duplicates count as done for every kind of job), `failed`, and
for folder ingests `seen` (files walked), `skipped` (not images) and `duplicates` (part of `done`). A
folder job is open while its walk is still adding images; it completes only once sealed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from shared.types import FINAL_STATES, FileError, Job, JobState

_PREFIX = "proxima:job:"
_OPEN = "proxima:jobs:open"  # jobs not yet in a final state, for the lost-batch sweep
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
local f = redis.call('HMGET', KEYS[1], 'total', 'done', 'failed', 'sealed', 'state')
local total, done, failed = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
local state = f[5]
if f[4] == '1' and done + failed >= total then
  if failed == 0 then state = 'completed' elseif done == 0 then state = 'failed'
  else state = 'completed_with_errors' end
elseif done + failed > 0 then state = 'running' end
redis.call('HSET', KEYS[1], 'state', state, 'updated_at', ARGV[2])
if ARGV[1] == '' then redis.call('HSET', KEYS[1], 'alive_at', ARGV[2]) end  -- an add: its walk is alive
for k = 1, 4 do redis.call('EXPIRE', KEYS[k], ARGV[3]) end
return 1
"""


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

    @staticmethod
    def _keys(job_id: str) -> list[str]:
        base = _PREFIX + job_id
        return [base, base + ":batches", base + ":errors", base + ":skips", base + ":stages", base + ":sent"]

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
            pipe.execute()
        return job_id

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
            key, batches_key, *_, sent_key = self._keys(job_id)
            state = self.redis.hget(key, "state")
            if state is None or JobState(_text(state)) in FINAL_STATES:
                self.redis.srem(_OPEN, job_id)
                continue
            counted = self.redis.smembers(batches_key)
            for batch_key, value in self.redis.hgetall(sent_key).items():
                if batch_key not in counted:
                    sent = json.loads(value)
                    lost.append((job_id, _text(batch_key), sent["task"], sent["items"]))
        return lost


    def mark_running(self, job_id: str) -> None:
        key = self._keys(job_id)[0]
        if not self.redis.exists(key):
            return  # an expired or foreign job: don't create a partial record
        if self.redis.hsetnx(key, "started_at", time.time()):
            self.redis.hset(key, "state", "running")
            self.redis.expire(key, self.ttl_s)

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

    def get(self, job_id: str) -> Job | None:
        if not is_job_id(job_id):
            return None
        key, _, errors_key, skips_key, stages_key, _ = self._keys(job_id)
        with self.redis.pipeline() as pipe:
            pipe.hgetall(key)
            pipe.lrange(errors_key, 0, -1)
            pipe.hgetall(skips_key)
            pipe.hgetall(stages_key)
            fields, errors, skips, stages = pipe.execute()
        if not fields:
            return None
        f = {k.decode(): v.decode() for k, v in fields.items()}
        if "kind" not in f:
            return None  # not a job record we wrote
        counts = {name: int(f.get(name, 0)) for name in COUNTERS}
        walking = f["kind"] != "upload" and f.get("sealed") != "1"
        sealed = f.get("sealed") == "1"
        alive = float(f.get("alive_at") or f["updated_at"])
        interrupted = walking and time.time() - alive > WALK_STALE_S  # nobody added for a while: its walk died
        walking = walking and not interrupted
        started = float(f.get("started_at", 0)) or None
        updated = float(f["updated_at"])
        processed = counts["done"] + counts["failed"]
        rate = processed / (updated - started) if started and updated > started and processed else None
        remaining = counts["total"] - processed
        planned = f.get("planned") == "1"  # its total was known before the walk (a re-embed: the stored images)
        if rate and (planned or not walking) and remaining > 0:
            eta: float | None = round(remaining / rate, 1)
        else:
            eta = 0.0 if remaining <= 0 and sealed else None
        stage_s = None
        if stages:  # seconds per stage summed over batches (read and decode also over decode threads)
            stage_s = {k.decode(): round(float(v), 3) for k, v in stages.items() if k != b"batches"}
            stage_s["batches"] = int(stages.get(b"batches", 0))
        return Job(
            job_id=job_id, kind=f["kind"], state=JobState(f["state"]), **counts,
            errors=tuple(FileError(**json.loads(e)) for e in errors),
            created_at=float(f["created_at"]), started_at=started, updated_at=updated,
            rate_per_s=round(rate, 2) if rate else None, eta_s=eta,
            path=f.get("path") if f["kind"] != "upload" else None, walking=walking, interrupted=interrupted,
            skipped_reasons={k.decode(): int(v) for k, v in skips.items()}, stage_s=stage_s,
        )
