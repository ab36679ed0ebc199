"""Job records in Redis: what happened to each image of an upload (or, later, a folder ingest).

A job is a hash `proxima:job:<id>` with counters, a list of per-file errors, and a set of the batch keys
already counted. Workers report each finished batch through one Lua script that adds its counts only
the first time that batch key is seen, so a batch redelivered after a worker crash is never counted
twice. The state is derived in the same script:

    queued → running → completed | completed_with_errors | failed (every image failed)
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import redis

_PREFIX = "proxima:job:"
MAX_ERRORS_KEPT = 10_000

_FINISH_BATCH = """
-- KEYS: job hash, batch-key set, errors list
-- ARGV: batch key, done, failed, now, ttl, max errors, error json...
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
local done = redis.call('HINCRBY', KEYS[1], 'done', ARGV[2])
local failed = redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
local kept = redis.call('LLEN', KEYS[3])
for i = 7, #ARGV do
  if kept < tonumber(ARGV[6]) then redis.call('RPUSH', KEYS[3], ARGV[i]); kept = kept + 1 end
end
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
local sealed = redis.call('HGET', KEYS[1], 'sealed') == '1'
local state = 'running'
if sealed and done + failed >= total then
  if failed == 0 then state = 'completed' elseif done == 0 then state = 'failed'
  else state = 'completed_with_errors' end
end
redis.call('HSET', KEYS[1], 'state', state, 'updated_at', ARGV[4])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
return 1
"""


@dataclass(frozen=True)
class FileError:
    id: str | None
    filename: str
    message: str


def is_job_id(value: str) -> bool:
    try:
        return uuid.UUID(hex=value).hex == value
    except ValueError:
        return False


class JobStore:
    def __init__(self, client: redis.Redis, *, ttl_s: int = 30 * 86400) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._finish = client.register_script(_FINISH_BATCH)

    @staticmethod
    def _keys(job_id: str) -> list[str]:
        base = _PREFIX + job_id
        return [base, base + ":batches", base + ":errors"]

    def create(self, *, total: int, kind: str = "upload") -> str:
        """A new queued job expecting `total` images; report them with `finish_batch`."""
        job_id = uuid.uuid4().hex
        now = time.time()
        key = self._keys(job_id)[0]
        self.redis.hset(key, mapping={
            "kind": kind, "state": "queued", "total": total, "done": 0, "failed": 0,
            "sealed": 1, "created_at": now, "updated_at": now,
        })
        self.redis.expire(key, self.ttl_s)
        return job_id

    def mark_running(self, job_id: str) -> None:
        key = self._keys(job_id)[0]
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(key, "started_at", time.time())
            pipe.hget(key, "state")
            _, state = pipe.execute()
        if state == b"queued":
            self.redis.hset(key, mapping={"state": "running", "updated_at": time.time()})

    def finish_batch(self, job_id: str, batch_key: str, *, done: int, errors: list[FileError]) -> bool:
        """Count a finished batch once; False if this batch key was already counted (a redelivery)."""
        args = [batch_key, done, len(errors), time.time(), self.ttl_s, MAX_ERRORS_KEPT]
        args += [json.dumps(asdict(err)) for err in errors]
        return self._finish(keys=self._keys(job_id), args=args) == 1

    def get(self, job_id: str) -> dict[str, Any] | None:
        if not is_job_id(job_id):
            return None
        key, _, errors_key = self._keys(job_id)
        with self.redis.pipeline() as pipe:
            pipe.hgetall(key)
            pipe.lrange(errors_key, 0, -1)
            fields, errors = pipe.execute()
        if not fields:
            return None
        f = {k.decode(): v.decode() for k, v in fields.items()}
        return {
            "job_id": job_id,
            "kind": f["kind"],
            "state": f["state"],
            "total": int(f["total"]),
            "done": int(f["done"]),
            "failed": int(f["failed"]),
            "errors": [json.loads(e) for e in errors],
            "created_at": float(f["created_at"]),
            "updated_at": float(f["updated_at"]),
        }
