"""Finished videos to stored mp4s and terminal job records: encode (ffmpeg, in the encoding processes of
worker/encoder.py), store, succeed."""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import redis
import torch

from jobs.storage import Storage
from jobs.store import JobStore, now_iso
from media import MP4_CONTENT_TYPE
from models.data.frames import to_uint8_frames

from . import encoder, metrics
from .claimed import ClaimedJob

log = logging.getLogger(__name__)


def output_scale(resolution: int, configured: int) -> int:
    """The integer upscale of outputs: the configured one, or (0) the largest that stays within 256 pixels."""
    return configured if configured > 0 else max(1, 256 // resolution)


def video_frames(videos: torch.Tensor) -> list[np.ndarray]:
    """Decoded videos (n, 3, T, H, W) as uint8 frames (T, H, W, 3), each: on the thread that runs torch.
    (torch's CPU thread pool belongs to the thread that uses it: a second thread running torch ops starts a
    second pool, and the two, spinning, slowed the decoding step 4x; the encoders get numpy only.)"""
    return [to_uint8_frames(video) for video in videos]


class OutputWriter:
    """Encodes videos into a scratch folder (the encoding processes run several at once), then stores them
    and marks their job succeeded."""

    def __init__(self, store: JobStore, storage: Storage, model: str, scale: int):
        self.store, self.storage, self.model, self.scale = store, storage, model, scale
        self._tmp = tempfile.TemporaryDirectory(prefix="vgs-")

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encode(self, job: ClaimedJob, videos: list[np.ndarray]) -> list[Future]:
        """Start encoding a job's videos (uint8 frames, see video_frames); one future per video."""
        return [encoder.encode(frames, Path(self._tmp.name) / f"{job.id}-{i}.mp4", float(job.request.fps), self.scale)
                for i, frames in enumerate(videos)]

    def succeed(self, job: ClaimedJob, encodes: list[Future], shared_metrics: dict[str, float]) -> None:
        """Store the encoded videos and mark the job succeeded with its outputs and timings."""
        encode_s = store_s = 0.0
        outputs = []
        for i, encode in enumerate(encodes):
            path, info, seconds = encode.result()
            encode_s += seconds
            t1 = time.time()
            key = f"{job.id}/{i}.mp4"
            self.storage.put(key, path, MP4_CONTENT_TYPE)
            path.unlink(missing_ok=True)
            store_s += time.time() - t1
            outputs.append({"key": key, **info})
        job.metrics.update({"queue_seconds": round(job.claimed_at - job.created_at, 4), **shared_metrics,
                            "encode_seconds": round(encode_s, 4), "store_seconds": round(store_s, 4)})
        metrics.QUEUE_WAIT.labels(self.model).observe(job.metrics["queue_seconds"])
        metrics.ENCODE.labels(self.model).observe(encode_s)
        metrics.UPLOAD.labels(self.model).observe(store_s)
        retrying(functools.partial(self.store.transition, job.id, ("running",), status="succeeded", progress=1.0,
                                   finished_at=now_iso(), outputs=outputs, metrics=job.metrics))
        log.info("job %s succeeded: %d videos", job.id, job.n, extra={"job_id": job.id})


def retrying(write: Callable[[], object], for_s: float = 30.0) -> None:
    """A final write that survives a short Redis outage (a restart); past for_s the error goes up."""
    deadline = time.monotonic() + for_s
    delay = 0.2
    while True:
        try:
            write()
            return
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 3.0)


def finish_canceled(store: JobStore, job: ClaimedJob) -> None:
    store.end(job.id, "canceled", "canceled", "canceled while running")
