"""Job records in Redis: one hash per job, written by the gateway and the workers, read by both.

A job moves queued -> running -> succeeded | failed | canceled (queued -> canceled directly). Every
transition is a compare-and-set on the status (a Lua script), so a cancel and a start that race cannot
both win. The record is the source of truth; the RQ queue only carries job ids to workers.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis

STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
JSON_FIELDS = ("request", "outputs", "error", "metrics")

# KEYS[1] = job hash; ARGV[1] = allowed current statuses (comma-separated), ARGV[2..] = field, value pairs.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
for allowed in string.gmatch(ARGV[1], '[^,]+') do
  if allowed == current then
    redis.call('HSET', KEYS[1], unpack(ARGV, 2))
    return 1
  end
end
return 0
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """Reads and writes job records under `{namespace}:job:{id}`; records expire after ttl_s."""

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: int):
        self.redis, self.namespace, self.ttl_s = client, namespace, ttl_s
        self._transition = client.register_script(_TRANSITION)

    def key(self, job_id: str) -> str:
        return f"{self.namespace}:job:{job_id}"

    def frames_key(self, job_id: str) -> str:
        return f"{self.namespace}:job:{job_id}:frames"

    def queue_name(self, model: str) -> str:
        """The RQ queue of a model: workers serving it listen there."""
        return f"{self.namespace}:{model}"

    def create(self, job_id: str, model: str, request: dict[str, Any], cond_frames: bytes | None = None,
               pipe: redis.client.Pipeline | None = None) -> dict[str, Any]:
        record = {"id": job_id, "model": model, "status": "queued", "progress": 0.0, "created_at": now_iso(),
                  "request": request, "attempts": 0, "cancel": 0}
        p = pipe if pipe is not None else self.redis.pipeline()
        p.hset(self.key(job_id), mapping=_encode(record))
        p.expire(self.key(job_id), self.ttl_s)
        if cond_frames is not None:
            p.set(self.frames_key(job_id), cond_frames, ex=self.ttl_s)
        if pipe is None:
            p.execute()
        return self.decode(_encode(record))

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self.key(job_id))
        return self.decode(raw) if raw else None

    def get_many(self, job_ids: list[str]) -> list[dict[str, Any] | None]:
        pipe = self.redis.pipeline()
        for job_id in job_ids:
            pipe.hgetall(self.key(job_id))
        return [self.decode(raw) if raw else None for raw in pipe.execute()]

    def cond_frames(self, job_id: str) -> bytes | None:
        return self.redis.get(self.frames_key(job_id))

    def transition(self, job_id: str, allowed: tuple[str, ...] | frozenset[str], **fields: Any) -> bool:
        """Set fields (status among them) only if the job's status is one of `allowed`; True if it was."""
        args = [",".join(allowed)]
        for name, value in _encode(fields).items():
            args += [name, value]
        return bool(self._transition(keys=[self.key(job_id)], args=args))

    def update(self, job_id: str, **fields: Any) -> None:
        """Write fields of a job that still exists (progress, metrics); never resurrects an expired one."""
        self.transition(job_id, STATUSES, **fields)

    def request_cancel(self, job_id: str) -> str | None:
        """Cancel: a queued job at once, a running one by flag (its worker stops). Returns the new status."""
        if self.transition(job_id, ("queued",), status="canceled", finished_at=now_iso(),
                           error={"code": "canceled", "message": "canceled before it started"}):
            return "canceled"
        self.transition(job_id, ("running",), cancel=1)
        record = self.get(job_id)
        return record["status"] if record else None

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(self.key(job_id), "cancel") in (b"1", "1")

    @staticmethod
    def decode(raw: dict) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for k, v in raw.items():
            k = k.decode() if isinstance(k, bytes) else k
            v = v.decode() if isinstance(v, bytes) else v
            if k in JSON_FIELDS:
                v = json.loads(v) if v else None
            elif k == "progress":
                v = float(v)
            elif k in ("attempts", "cancel"):
                v = int(v)
            record[k] = v
        return record

    def wait_terminal(self, job_id: str, timeout_s: float, poll_s: float = 0.1) -> dict[str, Any] | None:
        """The record once it is terminal, or its latest state after timeout_s (tests and the CLI client)."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.get(job_id)
            if record is None or record["status"] in TERMINAL or time.monotonic() > deadline:
                return record
            time.sleep(poll_s)


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in fields.items():
        if k in JSON_FIELDS:
            out[k] = json.dumps(v)
        elif isinstance(v, bool):
            out[k] = str(int(v))
        else:
            out[k] = str(v)
    return out
