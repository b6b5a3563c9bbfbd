"""No job is lost: running jobs whose worker died are retried (or failed), stranded queued jobs re-queued.

A worker holds a lease on each job it runs and renews it with its heartbeat. Every worker (and the
gateway) runs the reaper now and then; a Redis lock lets one at a time scan:
- running jobs whose lease ended: the worker is gone (SIGKILL, lost host). Requeued while attempts remain,
  else failed with code `worker_lost`; a cancel asked for meanwhile makes them canceled.
- queued jobs that sat for a while and are not on their queue: taken off it by a worker that died before
  claiming them. Requeued (a second queue entry would be harmless: only one claim can win).
- queued jobs of a model that is gone (no worker served it for model_ttl_s, so its catalog entry expired):
  failed with code `no_worker`, as nothing will ever run them.
- queue entries that carry no queued job (canceled, ended or expired jobs): taken off their queue, so that
  queue lengths (what an autoscaler watches) count only jobs that wait.
"""

from __future__ import annotations

import logging
import time
import uuid

from .catalog import Catalog
from .connection import as_text
from .settings import ServiceSettings
from .storage import Storage
from .store import JobStore

log = logging.getLogger(__name__)
STRANDED_AFTER_S = 30.0  # a queued job older than this is checked against its queue
SWEEP_EVERY_S = 60.0  # how often outputs older than the job retention are deleted


class Reaper:
    """Also enforces retention: outputs older than the job records' lifetime are deleted from storage."""

    def __init__(self, jobs: JobStore, settings: ServiceSettings, storage: Storage | None = None):
        self.jobs, self.settings, self.storage = jobs, settings, storage
        self.catalog = Catalog(jobs.redis, settings.namespace, settings.model_ttl_s)
        self.lock_key = f"{settings.namespace}:reaper-lock"
        self.token = uuid.uuid4().hex
        self.last = 0.0
        self.last_sweep = 0.0

    def maybe_reap(self) -> dict[str, int] | None:
        """Reap if reap_interval_s has passed since this process last did and no other reaper holds the lock."""
        if time.monotonic() - self.last < self.settings.reap_interval_s:
            return None
        self.last = time.monotonic()
        ttl_ms = int(max(self.settings.reap_interval_s, 1.0) * 1000)
        if not self.jobs.redis.set(self.lock_key, self.token, nx=True, px=ttl_ms):
            return None
        counts = self.reap()
        if self.storage is not None and time.monotonic() - self.last_sweep >= SWEEP_EVERY_S:
            self.last_sweep = time.monotonic()
            counts["swept"] = self.storage.sweep(self.settings.job_ttl_s)
        return counts

    def reap(self, now: float | None = None) -> dict[str, int]:
        now = time.time() if now is None else now
        counts = {"requeued": 0, "failed": 0, "canceled": 0, "stranded": 0, "no_worker": 0, "purged": 0}
        for raw in self.jobs.redis.zrangebyscore(self.jobs.running_index, "-inf", now):
            outcome = self._reap_running(as_text(raw))
            if outcome:
                counts[outcome] += 1
        names = self.catalog.names()
        self.catalog.forget_expired()
        for raw in self.jobs.redis.zrangebyscore(self.jobs.queued_index, "-inf", now - STRANDED_AFTER_S):
            outcome = self._reap_queued(as_text(raw), now)
            if outcome:
                counts[outcome] += 1
        for name in names:
            counts["purged"] += self.jobs.purge_queue(name)
        return counts

    def _reap_running(self, job_id: str) -> str | None:
        """A running job whose lease ended: canceled, failed or requeued (the outcome), or None."""
        jobs = self.jobs
        record = jobs.get(job_id)
        if record is None or record["status"] != "running":
            jobs.redis.zrem(jobs.running_index, job_id)
            return None
        lost = f"its worker {record.get('worker', '?')} stopped responding"
        if record.get("cancel"):
            return "canceled" if jobs.end(job_id, "canceled", "canceled", f"canceled ({lost})") else None
        if record.get("attempts", 0) >= self.settings.max_attempts:
            message = f"gave up after {record['attempts']} attempts: {lost} each time"
            if not jobs.end(job_id, "failed", "worker_lost", message):
                return None
            log.warning("job %s failed: %s", job_id, message, extra={"job_id": job_id})
            return "failed"
        if not jobs.requeue(job_id, record["model"], ("running",), progress=0.0, worker="", started_at=""):
            return None
        log.warning("job %s requeued: %s (attempt %d of %d)", job_id, lost, record.get("attempts", 0),
                    self.settings.max_attempts, extra={"job_id": job_id})
        return "requeued"

    def _reap_queued(self, job_id: str, now: float) -> str | None:
        """A job queued for a while: failed if its model is gone ("no_worker"), requeued if its queue entry is
        gone ("stranded"), else left waiting (None)."""
        jobs = self.jobs
        record = jobs.get(job_id)
        if record is None or record["status"] != "queued":
            jobs.redis.zrem(jobs.queued_index, job_id)
            return None
        model = record["model"]
        if self.catalog.model(model) is None:
            message = (f"no worker served model {model!r} for {self.settings.model_ttl_s:g} s (VGS_MODEL_TTL_S), "
                       "so the model was dropped; start a worker that serves it and submit the job again")
            if not jobs.end_queued(job_id, "failed", "no_worker", message):
                return None
            log.warning("job %s failed: %s", job_id, message, extra={"job_id": job_id})
            return "no_worker"
        if jobs.queue.is_queued(model, record.get("rq_id", "")):
            jobs.redis.zadd(jobs.queued_index, {job_id: now})  # waiting its turn: look again later
            return None
        if not jobs.requeue(job_id, model, ("queued",)):
            return None
        log.warning("job %s was off its queue while queued; requeued", job_id, extra={"job_id": job_id})
        return "stranded"
