"""A worker process: models loaded once, announced in Redis, and jobs gathered into batches.

RQ carries job ids: the worker is an RQ SimpleWorker (no fork, so the weights stay loaded and CUDA
works) whose job function is `worker.tasks.run_job`. RQ has no batching, so the job it hands over leads
a batch: it takes further waiting ids of the same model's queue, up to the batch size and the wait window.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
import torch
from rq import Queue

from models import VideoGPT, load_gpt
from service.catalog import Catalog
from service.jobs import TERMINAL, JobStore, now_iso
from service.reaper import Reaper
from service.settings import ServiceSettings
from service.storage import S3Storage, open_storage
from service.views import job_view
from service.webhooks import Deliverer, start_deliverer

from . import metrics
from .batch import BatchJob, load_batch_jobs, run_batch

log = logging.getLogger(__name__)


def model_info(gpt: VideoGPT) -> dict[str, Any]:
    """What the gateway validates requests against, published in Redis."""
    info, c, vq = gpt.info, gpt.config, gpt.vqvae.config
    class_names = info.class_names or ([str(i) for i in range(c.class_cond_dim)] if c.class_conditional else None)
    return {"name": info.name, "modes": c.modes, "class_names": class_names,
            "n_classes": c.class_cond_dim or 0, "n_cond_frames": c.n_cond_frames, "frames": vq.sequence_length,
            "resolution": vq.resolution, "fps": info.fps, "latent_shape": list(vq.latent_shape),
            "guidance": info.guidance, "guidance_supported": c.conditions_optional,
            "class_guidance": gpt.class_guide.scale if gpt.class_guide else None,
            "unconditional": info.unconditional}


class WorkerRuntime:
    """Everything a job needs in this process: models by name, the job store, storage, settings."""

    def __init__(self, settings: ServiceSettings, connection: redis.Redis | None = None):
        self.settings = settings
        self.redis = connection or redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5,
                                                        health_check_interval=15)
        self.jobs = JobStore(self.redis, settings.namespace, settings.job_ttl_s)
        self.catalog = Catalog(self.redis, settings.namespace)
        self.storage = open_storage(settings)
        if isinstance(self.storage, S3Storage):
            self.storage.ensure_bucket()
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.models: dict[str, VideoGPT] = {}
        self.state = "starting"
        self.current: set[str] = set()  # ids of the jobs this worker runs now (their leases are renewed)
        self._stop = threading.Event()

    def load(self, bundles: list[Path]) -> None:
        for bundle in bundles:
            started = time.time()
            gpt = load_gpt(bundle, device=self.device)
            c = gpt.config
            if c.class_conditional and c.frame_conditional and not c.conditions_optional:
                raise ValueError(f"{bundle}: this prior needs a class and frames together, which no API mode "
                                 "asks for; serve priors that need one condition, or trained with condition dropout")
            name = gpt.info.name
            if name in self.models:
                raise ValueError(f"two bundles are named {name!r}: {bundle} and another; model names must differ")
            self.models[name] = gpt
            metrics.MODEL_LOAD.labels(name).set(time.time() - started)
            log.info("loaded %s from %s in %.2f s on %s", name, bundle, time.time() - started, self.device)

    def queue_names(self) -> list[str]:
        return [self.jobs.queue(name).name for name in self.models]

    def announce(self) -> None:
        for gpt in self.models.values():
            self.catalog.publish_model(model_info(gpt))
        self.beat()

    def beat(self) -> None:
        metrics.beat()
        self.catalog.heartbeat(self.worker_id, list(self.models), ttl_s=3 * self.settings.heartbeat_s,
                               state=self.state)

    def start_heartbeat(self) -> None:
        """A thread that renews the worker's presence and its jobs' leases, and reaps other workers' jobs."""
        reaper = Reaper(self.jobs, self.settings, self.storage)

        def loop() -> None:
            while not self._stop.wait(self.settings.heartbeat_s):
                try:
                    self.beat()
                    self.jobs.extend_leases(list(self.current), self.settings.lease_s)
                    reaper.maybe_reap()
                except redis.exceptions.RedisError as exc:
                    log.warning("heartbeat failed: %s", exc)

        threading.Thread(target=loop, name="heartbeat", daemon=True).start()
        deliverer = Deliverer(self.jobs, self.settings, lambda r: job_view(r, self.storage, self.settings.url_ttl_s))
        start_deliverer(deliverer, self._stop)

    def stop(self) -> None:
        self._stop.set()
        try:
            self.catalog.retire(self.worker_id)
        except redis.exceptions.RedisError:
            pass

    def gather(self, leader: str, queue: Queue) -> list[str]:
        """The leader and the ids waiting behind it in its queue, up to batch_size samples or the wait window."""
        ids, samples = [leader], self._samples(leader)
        deadline = time.monotonic() + self.settings.batch_wait_s
        while samples < self.settings.batch_size:
            raw = self.redis.lpop(queue.key)  # rq's pop_job_id raises on an empty queue
            job_id = raw.decode() if isinstance(raw, bytes) else raw
            if job_id is None:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
                continue
            rq_job = queue.fetch_job(job_id)
            if rq_job is None:
                continue
            ours = rq_job.args[0]
            wanted = self._samples(ours)
            if samples + wanted > self.settings.batch_size:
                queue.push_job_id(job_id, at_front=True)  # it leads the next batch
                break
            rq_job.delete(remove_from_queue=False)
            ids.append(ours)
            samples += wanted
        return ids

    def _samples(self, job_id: str) -> int:
        record = self.jobs.get(job_id)
        return int(record["request"]["num_samples"]) if record else 0

    def run(self, leader: str, queue: Queue) -> None:
        """Claim the batch led by `leader`, run it, and leave every claimed job in a terminal state."""
        try:
            ids = self.gather(leader, queue) if queue is not None else [leader]
        except redis.exceptions.RedisError:
            log.exception("gathering a batch behind %s failed; it runs alone", leader)
            ids = [leader]
        claimed = []
        for job_id in ids:
            record = self.jobs.get(job_id)
            if record is None:
                continue
            if self.jobs.transition(job_id, ("queued",), lease_s=self.settings.lease_s, status="running",
                                    started_at=now_iso(), worker=self.worker_id,
                                    attempts=record.get("attempts", 0) + 1):
                self.current.add(job_id)
                claimed.append(self.jobs.get(job_id))
        if not claimed:
            return
        by_model: dict[str, list[dict]] = {}
        for record in claimed:
            by_model.setdefault(record["model"], []).append(record)
        self.state = "busy"
        metrics.BUSY.set(1)
        try:
            for model, records in by_model.items():
                self._run_model(model, records)
        finally:
            self.state = "idle"
            metrics.BUSY.set(0)
            self.current.clear()

    def _run_model(self, model: str, records: list[dict]) -> None:
        claimed_at = time.time()
        try:
            gpt = self.models.get(model)
            if gpt is None:
                raise LookupError(f"this worker does not serve model {model!r}")
            jobs: list[BatchJob] = load_batch_jobs(self.jobs, records)
            for job in jobs:
                job.metrics["claimed_at"] = claimed_at
            log.info("batch of %d jobs (%d samples) for %s", len(jobs), sum(j.n for j in jobs), model,
                     extra={"job_ids": [job.id for job in jobs], "model": model})
            self._run_fitting(gpt, jobs)
            self._count_outcomes(model, [job.id for job in jobs])
        except redis.exceptions.RedisError:
            # The jobs are fine; Redis is not. Their leases lapse and the reaper requeues them.
            log.exception("Redis failed during a batch of %s; its jobs are retried once their leases end", model,
                          extra={"job_ids": [r["id"] for r in records]})
        except Exception as exc:  # every claimed job must end terminal, whatever broke
            log.exception("batch for %s failed", model, extra={"job_ids": [r["id"] for r in records]})
            for record in records:
                self.jobs.transition(record["id"], ("running",), status="failed", finished_at=now_iso(),
                                     error={"code": "internal", "message": f"{type(exc).__name__}: {exc}"})
            self._count_outcomes(model, [record["id"] for record in records])

    def _count_outcomes(self, model: str, job_ids: list[str]) -> None:
        for record in self.jobs.get_many(job_ids):
            if record is not None and record["status"] in TERMINAL:
                metrics.JOBS.labels(model, record["status"]).inc()

    def _run_fitting(self, gpt: VideoGPT, jobs: list[BatchJob]) -> None:
        """Run the batch; out of GPU memory, run each half on its own, down to single jobs."""
        try:
            run_batch(gpt, jobs, self.jobs, self.storage, self.settings.upscale, self.settings.job_timeout_s)
        except torch.cuda.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(jobs) == 1:
                job = jobs[0]
                self.jobs.transition(job.id, ("running",), status="failed", finished_at=now_iso(), error={
                    "code": "out_of_memory", "message": f"{job.n} samples do not fit in the GPU's memory even "
                                                        "alone; ask for fewer num_samples"})
                return
            half = len(jobs) // 2
            log.warning("out of memory with %d jobs; running %d and %d apart", len(jobs), half, len(jobs) - half,
                        extra={"job_ids": [job.id for job in jobs]})
            self._run_fitting(gpt, jobs[:half])
            self._run_fitting(gpt, jobs[half:])


_runtime: WorkerRuntime | None = None


def set_runtime(runtime: WorkerRuntime | None) -> None:
    global _runtime
    _runtime = runtime


def get_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("no worker runtime in this process: jobs run inside `videogpt-serve worker`")
    return _runtime
