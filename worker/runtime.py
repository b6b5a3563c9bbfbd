"""A worker process: models loaded once, announced in Redis, and the jobs it is handed run in batches.

RQ carries job ids: the worker is an RQ SimpleWorker (no fork, so the weights stay loaded and CUDA works)
whose job function is `worker.tasks.run_job`. RQ has no batching, so the job it hands over leads: with
continuous batching (worker/continuous.py) the loop keeps taking queued jobs into its engines' free slots
until nothing is left; with static batching it takes further waiting jobs of that model's queue, up to
the batch size and the wait window, and runs them as one batch.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import torch

from jobs.backend import Backend
from jobs.settings import ServiceSettings
from jobs.storage import S3Storage
from jobs.store import TERMINAL, now_iso
from models import VideoGPT, kernels

from . import encoder, metrics
from .batch import output_writer, run_batch
from .claimed import ClaimedJob, load_claimed
from .continuous import ContinuousServer
from .loading import load_models, model_info, window_stride
from .presence import Presence

log = logging.getLogger(__name__)


class WorkerRuntime:
    """Everything a job needs in this process: models by name, the jobs backend, settings."""

    def __init__(self, settings: ServiceSettings, connection: redis.Redis | None = None):
        self.settings = settings
        self.backend = Backend.open(settings, client=connection)
        self.jobs = self.backend.jobs
        if isinstance(self.backend.storage, S3Storage):
            self.backend.storage.ensure_bucket()
        if settings.threads:
            torch.set_num_threads(settings.threads)
        kernels.ENABLED = set(kernels.KERNELS) if settings.cpu_kernels else set()
        self.device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.models: dict[str, VideoGPT] = {}
        self.presence = Presence(self.backend, [])
        self.server: ContinuousServer | None = None
        # Set by the RQ worker loop (worker/main.py): RQ hears the leading job is alive; a warm stop was asked.
        self.keepalive: Callable[[], None] | None = None
        self.stop_requested: Callable[[], bool] = lambda: False

    @property
    def worker_id(self) -> str:
        return self.presence.worker_id

    def load(self, bundles: list[Path]) -> None:
        self.models.update(load_models(bundles, self.device, self.settings.precision))
        for gpt in self.models.values():  # a stride a model cannot take is refused now, not at its first long job
            window_stride(gpt, self.settings.window_stride)
        self.presence.models = list(self.models)
        if self.settings.batching == "continuous":  # the engines' caches are allocated once, now
            self.server = ContinuousServer(self)

    def queue_names(self) -> list[str]:
        return [self.backend.queue.name(name) for name in self.models]

    def announce(self) -> None:
        """Publish the models, and start beating (heartbeat, leases, reaper, webhooks)."""
        for gpt in self.models.values():
            self.backend.catalog.publish_model(model_info(gpt, self.settings))
        encoder.warm_up(Path(tempfile.gettempdir()))  # the finishing processes start now, not with a first job
        self.presence.start()
        self.presence.state = "idle"

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()  # what was handed to the finisher is stored first
        encoder.shut_down()
        self.presence.stop()

    def gather(self, leader: str, model: str) -> list[str]:
        """The leader and the ids waiting behind it in its queue, up to batch_size samples or the wait window."""
        queue = self.backend.queue
        ids, samples = [leader], self._samples(leader)
        deadline = time.monotonic() + self.settings.batch_wait_s
        while samples < self.settings.batch_size:
            entry = queue.take(model)
            if entry is None:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
                continue
            wanted = self._samples(entry.job_id)
            if samples + wanted > self.settings.batch_size:
                queue.put_back(model, entry)  # it leads the next batch
                break
            queue.forget(entry)
            ids.append(entry.job_id)
            samples += wanted
        return ids

    def _samples(self, job_id: str) -> int:
        record = self.jobs.get(job_id)
        return int(record["request"]["num_samples"]) if record else 0

    def claim(self, job_id: str) -> dict[str, Any] | None:
        """Move a queued job to running under this worker's lease; its record, or None if it was not queued."""
        record = self.jobs.get(job_id)
        if record is None or not self.jobs.transition(
                job_id, ("queued",), lease_s=self.settings.lease_s, status="running", started_at=now_iso(),
                worker=self.worker_id, attempts=record.get("attempts", 0) + 1):
            return None
        self.presence.running.add(job_id)
        try:
            record = self.jobs.get(job_id)
        except redis.exceptions.RedisError:
            self.release(job_id)
            raise
        if record is None:
            self.release(job_id)
        return record

    def release(self, job_id: str) -> None:
        """Stop renewing the lease of a job claimed but not run (Redis failed while it was being taken on):
        the lease lapses and the reaper requeues it. Left in `running`, its lease would be renewed for as
        long as this worker lives, with nothing running it."""
        self.presence.running.discard(job_id)

    def run(self, leader: str, model: str) -> None:
        """Run the job RQ handed over (and what queues up meanwhile); every claimed job ends terminal."""
        if self.server is not None:
            self.server.serve(leader, model, keepalive=self.keepalive, stop_requested=self.stop_requested)
        else:
            self.run_static(leader, model)

    def run_static(self, leader: str, model: str) -> None:
        """Claim the batch led by `leader`, run it, and leave every claimed job in a terminal state."""
        try:
            ids = self.gather(leader, model)
        except redis.exceptions.RedisError:
            log.exception("gathering a batch behind %s failed; it runs alone", leader)
            ids = [leader]
        claimed = []
        try:
            for job_id in ids:
                record = self.claim(job_id)
                if record is not None:
                    claimed.append(record)
        except redis.exceptions.RedisError:
            log.exception("claiming the batch behind %s failed; its claimed jobs are retried once their leases "
                          "end", leader)
            for record in claimed:
                self.release(record["id"])
            return
        if not claimed:
            return
        self.presence.state = "busy"
        metrics.BUSY.set(1)
        try:
            self.run_model(model, claimed)
        finally:
            self.presence.state = "idle"
            metrics.BUSY.set(0)
            self.presence.running.clear()

    def run_model(self, model: str, records: list[dict[str, Any]]) -> None:
        ids = [record["id"] for record in records]
        try:
            gpt = self.models.get(model)
            if gpt is None:
                raise LookupError(f"this worker does not serve model {model!r}")
            jobs = [load_claimed(self.jobs, record) for record in records]
            log.info("batch of %d jobs (%d samples) for %s", len(jobs), sum(j.n for j in jobs), model,
                     extra={"job_ids": ids, "model": model})
            with output_writer(self.jobs, self.backend.storage, gpt, self.settings.upscale) as writer:
                self._run_fitting(gpt, jobs, writer)
        except redis.exceptions.RedisError:
            # The jobs are fine; Redis is not. Their leases lapse and the reaper requeues them.
            log.exception("Redis failed during a batch of %s; its jobs are retried once their leases end", model,
                          extra={"job_ids": ids})
            return
        except Exception as exc:  # every claimed job must end terminal, whatever broke
            log.exception("batch for %s failed", model, extra={"job_ids": ids})
            for job_id in ids:
                self.jobs.end(job_id, "failed", "internal", f"{type(exc).__name__}: {exc}")
        self.count_outcomes(model, ids)

    def count_outcomes(self, model: str, job_ids: list[str]) -> None:
        for record in self.jobs.get_many(job_ids):
            if record is not None and record["status"] in TERMINAL:
                metrics.JOBS.labels(model, record["status"]).inc()

    def _run_fitting(self, gpt: VideoGPT, jobs: list[ClaimedJob], writer: Any) -> None:
        """Run the batch; out of GPU memory, run each half on its own, down to single jobs."""
        try:
            run_batch(gpt, jobs, self.jobs, writer, self.settings.job_timeout_s,
                      window_stride(gpt, self.settings.window_stride))
        except torch.cuda.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(jobs) == 1:
                self.jobs.end(jobs[0].id, "failed", "out_of_memory", f"{jobs[0].n} samples do not fit in the "
                              "GPU's memory even alone; ask for fewer num_samples")
                return
            half = len(jobs) // 2
            log.warning("out of memory with %d jobs; running %d and %d apart", len(jobs), half, len(jobs) - half,
                        extra={"job_ids": [job.id for job in jobs]})
            self._run_fitting(gpt, jobs[:half], writer)
            self._run_fitting(gpt, jobs[half:], writer)


_runtime: WorkerRuntime | None = None


def set_runtime(runtime: WorkerRuntime | None) -> None:
    global _runtime
    _runtime = runtime


def get_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("no worker runtime in this process: jobs run inside `videogpt-serve worker`")
    return _runtime
