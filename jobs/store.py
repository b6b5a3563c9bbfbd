"""Job records in Redis: one hash per job, written by the gateway and the workers, read by both.

A job moves queued -> running -> succeeded | failed | canceled (queued -> canceled directly). Every
transition is a compare-and-set on the status (a Lua script), so a cancel and a start that race cannot
both win. The record is the source of truth; the queue (jobs/queue.py) only carries job ids to workers.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis

from .connection import as_text
from .queue import JobQueue
from .request import JobRequest

STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
JSON_FIELDS = ("request", "outputs", "error", "metrics")

# A compare-and-set of a job's status that also keeps the status indexes: `{ns}:queued` (score: when it was
# queued) and `{ns}:running` (score: when its worker's lease ends), which the reaper scans.
# It also queues the webhook events the change causes (`start` on running, `completed` on a terminal
# state) in the outbox, in the same atomic step.
# KEYS: job hash, queued index, running index, webhook outbox. ARGV: allowed statuses (comma-separated), job
# id, new status ('' = unchanged), index score, then field/value pairs.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
local ok = false
for allowed in string.gmatch(ARGV[1], '[^,]+') do
  if allowed == current then ok = true end
end
if not ok then return 0 end
if #ARGV >= 6 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
local status = ARGV[3]
if status == 'queued' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
elseif status == 'running' then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[2])
elseif status ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
end
local wanted = redis.call('HGET', KEYS[1], 'webhook_events')
if wanted and status ~= '' and status ~= current then
  local event = nil
  if status == 'running' then event = 'start' end
  if status == 'succeeded' or status == 'failed' or status == 'canceled' then event = 'completed' end
  if event and string.find(',' .. wanted .. ',', ',' .. event .. ',', 1, true) then
    redis.call('ZADD', KEYS[4], redis.call('TIME')[1], ARGV[2] .. '|' .. event .. '|0')
  end
end
return 1
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """Reads and writes job records under `{namespace}:job:{id}`; records expire after ttl_s."""

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: int):
        self.redis, self.namespace, self.ttl_s = client, namespace, ttl_s
        self.queue = JobQueue(client, namespace, failure_ttl_s=ttl_s)
        self._transition = client.register_script(_TRANSITION)

    def key(self, job_id: str) -> str:
        return f"{self.namespace}:job:{job_id}"

    def frames_key(self, job_id: str) -> str:
        return f"{self.namespace}:job:{job_id}:frames"

    @property
    def queued_index(self) -> str:
        return f"{self.namespace}:queued"

    @property
    def running_index(self) -> str:
        return f"{self.namespace}:running"

    @property
    def webhook_outbox(self) -> str:
        return f"{self.namespace}:webhooks"

    def create(self, job_id: str, request: JobRequest, cond_frames: bytes | None = None,
               owner: str = "anonymous") -> dict[str, Any]:
        """Write a queued job and its queue entry in one transaction: no record without the other."""
        pipe = self.redis.pipeline(transaction=True)
        rq_id = self.queue.enqueue(job_id, request.model, pipe)
        record = {"id": job_id, "model": request.model, "status": "queued", "progress": 0.0,
                  "created_at": now_iso(), "request": request.to_dict(), "attempts": 0, "cancel": 0,
                  "rq_id": rq_id, "owner": owner}
        if request.webhook:  # the transition script reads these to queue webhook events
            record.update(webhook=request.webhook, webhook_events=",".join(request.webhook_events))
        pipe.hset(self.key(job_id), mapping=_encode(record))
        pipe.expire(self.key(job_id), self.ttl_s)
        pipe.zadd(self.queued_index, {job_id: time.time()})
        if cond_frames is not None:
            pipe.set(self.frames_key(job_id), cond_frames, ex=self.ttl_s)
        pipe.execute()
        return self.decode(_encode(record))

    def requeue(self, job_id: str, model: str, allowed: tuple[str, ...], **fields: Any) -> bool:
        """Put a job back on its queue (a new queue entry) if its status is one of `allowed`."""
        if not self.transition(job_id, allowed, status="queued", **fields):
            return False
        pipe = self.redis.pipeline(transaction=True)
        rq_id = self.queue.enqueue(job_id, model, pipe)
        pipe.hset(self.key(job_id), "rq_id", rq_id)
        pipe.execute()
        return True

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

    def transition(self, job_id: str, allowed: tuple[str, ...] | frozenset[str], lease_s: float = 0.0,
                   **fields: Any) -> bool:
        """Set fields (status among them) only if the job's status is one of `allowed`; True if it was.

        A move to running holds a lease of lease_s seconds (see extend_leases).
        """
        status = fields.get("status", "")
        score = time.time() + lease_s if status == "running" else time.time()
        args = [",".join(allowed), job_id, status, repr(score)]
        for name, value in _encode(fields).items():
            args += [name, value]
        keys = [self.key(job_id), self.queued_index, self.running_index, self.webhook_outbox]
        return bool(self._transition(keys=keys, args=args))

    def extend_leases(self, job_ids: list[str], lease_s: float) -> None:
        """The worker running these jobs is alive: their leases end lease_s from now."""
        if job_ids:
            until = time.time() + lease_s
            self.redis.zadd(self.running_index, {job_id: until for job_id in job_ids}, xx=True)

    def end(self, job_id: str, status: str, code: str, message: str,
            allowed: tuple[str, ...] = ("running",)) -> bool:
        """End a job that did not succeed (failed or canceled) with an error the user sees."""
        return self.transition(job_id, allowed, status=status, finished_at=now_iso(),
                               error={"code": code, "message": message})

    def update(self, job_id: str, **fields: Any) -> None:
        """Write fields of a job that still exists (progress, metrics); never resurrects an expired one."""
        self.transition(job_id, STATUSES, **fields)

    def report_progress(self, progress: dict[str, float]) -> None:
        """Write the progress of several running jobs in one round trip."""
        if not progress:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id, fraction in progress.items():
            keys = [self.key(job_id), self.queued_index, self.running_index, self.webhook_outbox]
            self._transition(keys=keys, args=["running", job_id, "", repr(time.time()), "progress", str(fraction)],
                             client=pipe)
        pipe.execute()

    def end_queued(self, job_id: str, status: str, code: str, message: str) -> bool:
        """End a job that is still queued (its queue entry goes too); False if it was not queued."""
        if not self.end(job_id, status, code, message, allowed=("queued",)):
            return False
        record = self.get(job_id)
        if record is not None:
            self.queue.remove(record["model"], record.get("rq_id", ""))
        return True

    def request_cancel(self, job_id: str) -> str | None:
        """Cancel: a queued job at once (its queue entry goes too), a running one by flag (its worker
        stops). Returns the new status."""
        if self.end_queued(job_id, "canceled", "canceled", "canceled before it started"):
            return "canceled"
        self.transition(job_id, ("running",), cancel=1)
        record = self.get(job_id)
        return record["status"] if record else None

    def _live_entries(self, model: str) -> tuple[list[str], list[str]]:
        """(ids of the queued jobs in model's queue, RQ ids of entries that carry no queued job: canceled,
        ended or expired jobs, and second entries of one job)."""
        entries = self.queue.entries(model)
        pipe = self.redis.pipeline()
        for entry in entries:
            pipe.hmget(self.key(entry.job_id), "status", "rq_id")
        live, dead = [], []
        for entry, (status, rq_id) in zip(entries, pipe.execute()):
            if as_text(status) == "queued" and as_text(rq_id) == entry.rq_id:
                live.append(entry.job_id)
            else:
                dead.append(entry.rq_id)
        return live, dead

    def queued_count(self, model: str) -> int:
        """How many queued jobs wait in model's queue (entries that carry none are not counted)."""
        return len(self._live_entries(model)[0])

    def purge_queue(self, model: str) -> int:
        """Take the entries that carry no queued job off model's queue; returns how many went."""
        dead = self._live_entries(model)[1]
        for rq_id in dead:
            self.queue.remove(model, rq_id)
        return len(dead)

    def cancel_requested(self, job_id: str) -> bool:
        return self.cancels_requested([job_id])[0]

    def cancels_requested(self, job_ids: list[str]) -> list[bool]:
        """Whether a cancel was asked of each job (one round trip for all)."""
        pipe = self.redis.pipeline()
        for job_id in job_ids:
            pipe.hget(self.key(job_id), "cancel")
        return [as_text(flag) == "1" for flag in pipe.execute()]

    @staticmethod
    def decode(raw: dict) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for k, v in raw.items():
            k, v = as_text(k), as_text(v)
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
