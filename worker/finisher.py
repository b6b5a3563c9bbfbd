"""Finished jobs of a continuously batching worker, turned into stored mp4s: the VQ-VAE decodes their
codes on the engine's thread (`decode`, between two steps: torch's CPU thread pool belongs to the thread
that uses it, and a second one slowed the steps 4x), then ffmpeg encodes the videos, storage takes them and
the record says succeeded on a thread of their own while the engine steps on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import redis
import torch

from jobs.store import JobStore
from models import VideoGPT

from . import metrics
from .lane import LaneJob
from .outputs import OutputWriter, finish_canceled, video_frames

log = logging.getLogger(__name__)
DECODE_CHUNK = 16


class Finisher:
    def __init__(self, store: JobStore, writers: dict[str, OutputWriter], done: Callable[[str, str], None]):
        """done(model, job id) is called once a job's record is terminal (or given up on)."""
        self.store, self.writers, self.done = store, writers, done
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="finish")
        self._pending: set[Future] = set()
        self._lock = threading.Lock()

    def submit(self, model: str, gpt: VideoGPT, lane_job: LaneJob, shared_metrics: dict[str, float]) -> None:
        """Decode the job's codes here and now, then encode and store them in the background."""
        try:
            videos, decode_s = decode(model, gpt, lane_job)
        except Exception as exc:  # the job must end terminal, whatever broke
            self._fail(model, lane_job, exc)
            return
        future = self._pool.submit(self._finish, model, lane_job, videos, {**shared_metrics,
                                                                           "decode_seconds": round(decode_s, 4)})
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

    def _finish(self, model: str, lane_job: LaneJob, videos: list, shared_metrics: dict[str, float]) -> None:
        job = lane_job.job
        try:
            if self.store.cancel_requested(job.id):
                finish_canceled(self.store, job)
                return
            writer = self.writers[model]
            writer.succeed(job, writer.encode(job, videos), shared_metrics)
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


@torch.no_grad()
def decode(model: str, gpt: VideoGPT, lane_job: LaneJob) -> tuple[list, float]:
    """The job's videos as uint8 frames, and the seconds the VQ-VAE took."""
    job = lane_job.job
    codes = torch.stack([lane_job.codes[i] for i in range(job.n)])  # the VQ-VAE moves them to its device
    started = time.time()
    videos = torch.cat([gpt.vqvae.decode_long(codes[i:i + DECODE_CHUNK]).float().cpu()
                        for i in range(0, job.n, DECODE_CHUNK)])
    seconds = time.time() - started
    metrics.DECODE.labels(model).observe(seconds)
    return video_frames(videos), seconds
