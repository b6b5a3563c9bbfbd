"""Finished jobs of a continuously batching worker, turned into stored mp4s on a thread of their own: the
VQ-VAE decodes their codes, ffmpeg encodes the videos, storage takes them, the record says succeeded.
The engine keeps stepping meanwhile; how long a step stalls while a job is decoded is in the benchmarks.
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
from .outputs import OutputWriter, finish_canceled

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
        future = self._pool.submit(self._finish, model, gpt, lane_job, shared_metrics)
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

    def _finish(self, model: str, gpt: VideoGPT, lane_job: LaneJob, shared_metrics: dict[str, float]) -> None:
        job = lane_job.job
        try:
            if self.store.cancel_requested(job.id):
                finish_canceled(self.store, job)
                return
            codes = torch.stack([lane_job.codes[i] for i in range(job.n)]).to(gpt.fc_in.weight.device)
            t0 = time.time()
            with torch.no_grad():
                videos = torch.cat([gpt.vqvae.decode_long(codes[i:i + DECODE_CHUNK]).float().cpu()
                                    for i in range(0, job.n, DECODE_CHUNK)])
            decode_s = time.time() - t0
            metrics.DECODE.labels(model).observe(decode_s)
            writer = self.writers[model]
            writer.succeed(job, writer.encode(job, videos), {**shared_metrics, "decode_seconds": round(decode_s, 4)})
        except redis.exceptions.RedisError:
            log.exception("Redis failed while finishing job %s; it is retried once its lease ends", job.id,
                          extra={"job_id": job.id})
        except Exception as exc:  # the job must end terminal, whatever broke
            log.exception("finishing job %s failed", job.id, extra={"job_id": job.id})
            try:
                self.store.end(job.id, "failed", "internal", f"{type(exc).__name__}: {exc}")
            except redis.exceptions.RedisError:
                pass
        finally:
            self.done(model, job.id)
