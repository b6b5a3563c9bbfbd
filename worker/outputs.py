"""Finished videos to stored mp4s and terminal job records: encode (ffmpeg, in the finishing processes of
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

from . import encoder, metrics
from .claimed import ClaimedJob
from .videos import decode_videos

log = logging.getLogger(__name__)


def output_scale(resolution: int, configured: int) -> int:
    """The integer upscale of outputs: the configured one, or (0) the largest that stays within 256 pixels."""
    return configured if configured > 0 else max(1, 256 // resolution)


class OutputWriter:
    """Encodes videos into a scratch folder (the finishing processes run several at once), then stores them
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

    def _path(self, job: ClaimedJob, index: int) -> Path:
        return Path(self._tmp.name) / f"{job.id}-{index}.mp4"

    def decode(self, vqvae: torch.nn.Module, codes: torch.Tensor) -> tuple[list[np.ndarray], float]:
        """Code grids (n, t, h, w) decoded here into videos of uint8 frames, and the seconds the VQ-VAE
        took (into the decode histogram)."""
        started = time.time()
        videos = decode_videos(vqvae, codes)
        seconds = time.time() - started
        metrics.DECODE.labels(self.model).observe(seconds)
        return videos, seconds

    def encode(self, job: ClaimedJob, videos: list[np.ndarray]) -> list[Future]:
        """Start encoding a job's videos (uint8 frames, see decode); one future per video."""
        return [encoder.encode(frames, self._path(job, i), float(job.request.fps), self.scale)
                for i, frames in enumerate(videos)]

    def decode_and_encode(self, job: ClaimedJob, codes: list[torch.Tensor]) -> list[Future]:
        """Start decoding and encoding a job's videos from their codes, in the finishing processes
        (encoder.use_decoders); one future per video."""
        # as numpy: torch pickles a tensor for another process into shared memory, ~0.7 ms a tensor
        return [encoder.decode_and_encode(self.model, grid.cpu().numpy(), self._path(job, i), float(job.request.fps),
                                          self.scale)
                for i, grid in enumerate(codes)]

    def discard(self, encodes: list[Future]) -> None:
        """Remove the files of encodes no one will store (their job was canceled meanwhile)."""
        for future in encodes:
            try:
                future.result().path.unlink(missing_ok=True)
            except Exception:  # nothing to remove
                pass

    def succeed(self, job: ClaimedJob, encodes: list[Future], shared_metrics: dict[str, float]) -> None:
        """Store the encoded videos and mark the job succeeded with its outputs and timings (the decoding
        seconds are the processes' where they decoded, else shared_metrics' decode_seconds)."""
        encode_s = store_s = decode_s = 0.0
        outputs = []
        for i, future in enumerate(encodes):
            encoded: encoder.Encoded = future.result()
            encode_s += encoded.encode_s
            decode_s += encoded.decode_s
            t1 = time.time()
            key = f"{job.id}/{i}.mp4"
            self.storage.put(key, encoded.path, MP4_CONTENT_TYPE)
            encoded.path.unlink(missing_ok=True)
            store_s += time.time() - t1
            outputs.append({"key": key, **encoded.info})
        if decode_s:
            shared_metrics = {**shared_metrics, "decode_seconds": round(decode_s, 4)}
            metrics.DECODE.labels(self.model).observe(decode_s)
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
