"""Finished jobs of a continuously batching worker, turned into stored mp4s: the VQ-VAE decodes their
codes and ffmpeg encodes the videos in the finishing processes (worker/encoder.py; on a GPU worker the VQ-VAE
decodes here, on the engine's thread, between two steps: torch's thread pool belongs to the thread that
uses it, and on the CPU a second one slowed the steps 4x), then storage takes them and the record says
succeeded on a thread of their own while the engine steps on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import redis
import torch

from jobs.store import JobStore
from models import VideoGPT

from . import encoder
from .lane import LaneJob
from .outputs import OutputWriter, finish_canceled

log = logging.getLogger(__name__)


class Finisher:
    def __init__(self, store: JobStore, writers: dict[str, OutputWriter], done: Callable[[str, str], None]):
        """done(model, job id) is called once a job's record is terminal (or given up on)."""
        self.store, self.writers, self.done = store, writers, done
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="finish")
        self._pending: set[Future] = set()
        self._lock = threading.Lock()

    def submit(self, model: str, gpt: VideoGPT, lane_job: LaneJob, shared_metrics: dict[str, float]) -> None:
        """Start the job's videos (decoded in the finishing processes where they hold the model's VQ-VAE, else
        here and now) and store them in the background."""
        job, writer = lane_job.job, self.writers[model]
        codes = [lane_job.codes[i] for i in range(job.n)]
        try:
            if encoder.decodes(model):
                encodes = writer.decode_and_encode(job, codes)
            else:
                videos, decode_s = writer.decode(gpt.vqvae, torch.stack(codes))  # the VQ-VAE moves them to its device
                shared_metrics = {**shared_metrics, "decode_seconds": round(decode_s, 4)}
                encodes = writer.encode(job, videos)
        except Exception as exc:  # the job must end terminal, whatever broke
            self._fail(model, lane_job, exc)
            return
        future = self._pool.submit(self._finish, model, lane_job, encodes, shared_metrics)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        """Finish what was handed over, then stop."""
        self._pool.shutdown(wait=True)

    def _finish(self, model: str, lane_job: LaneJob, encodes: list[Future], shared_metrics: dict[str, float]) -> None:
        job, writer = lane_job.job, self.writers[model]
        try:
            if self.store.cancel_requested(job.id):
                writer.discard(encodes)
                finish_canceled(self.store, job)
            else:
                writer.succeed(job, encodes, shared_metrics)
        except redis.exceptions.RedisError:
            log.exception("Redis failed while finishing job %s; it is retried once its lease ends", job.id,
                          extra={"job_id": job.id})
        except Exception as exc:
            self._fail(model, lane_job, exc)
            return
        self.done(model, job.id)

    def _fail(self, model: str, lane_job: LaneJob, exc: Exception) -> None:
        job = lane_job.job
        log.error("finishing job %s failed: %s", job.id, exc, exc_info=exc, extra={"job_id": job.id})
        try:
            self.store.end(job.id, "failed", "internal", f"{type(exc).__name__}: {exc}")
        except redis.exceptions.RedisError:
            pass
        self.done(model, job.id)
