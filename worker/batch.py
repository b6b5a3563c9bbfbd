"""One batch: the jobs of one model that waited together, sampled as one, then decoded, encoded and stored.

Each job keeps its own mode, label, frames, seed and sampling settings: they become per-sample rows of a
single `sample` call (a prior trained with condition dropout mixes modes in one batch).
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import torch

from media import MP4_CONTENT_TYPE, write_mp4
from models import SamplingCancelled, VideoGPT, sample, sample_seed
from models.data.frames import frames_to_tensor
from service.jobs import JobStore, now_iso
from service.requests import frames_from_bytes
from service.storage import Storage

from . import metrics
from .video import to_uint8_frames

log = logging.getLogger(__name__)
DECODE_CHUNK = 16
ENCODE_THREADS = 4


@dataclass
class BatchJob:
    """A claimed job: its id, validated request and conditioning frames, and timings so far."""

    id: str
    request: dict[str, Any]
    created_at: float
    frames: torch.Tensor | None = None  # (3, n_cond_frames, R, R)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.request["num_samples"])


def output_scale(resolution: int, configured: int) -> int:
    """The integer upscale of outputs: the configured one, or (0) the largest that stays within 256 pixels."""
    return configured if configured > 0 else max(1, 256 // resolution)


def _iso_to_epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def load_batch_jobs(store: JobStore, records: list[dict[str, Any]]) -> list[BatchJob]:
    jobs = []
    for record in records:
        job = BatchJob(record["id"], record["request"], _iso_to_epoch(record["created_at"]))
        if record["request"].get("cond_frames"):
            data = store.cond_frames(record["id"])
            if data is None:
                raise ValueError(f"job {record['id']}: its conditioning frames have expired")
            job.frames = frames_to_tensor(frames_from_bytes(data))
        jobs.append(job)
    return jobs


def run_batch(gpt: VideoGPT, jobs: list[BatchJob], store: JobStore, storage: Storage, upscale: int,
              timeout_s: float = float("inf"), on_progress: Callable[[float], None] | None = None) -> None:
    """Sample, decode, encode and store every job's videos; each job's record ends terminal.

    A job canceled while the batch runs is marked canceled at once (its rows are discarded); the batch
    stops early only when every job in it is canceled, or when it has sampled for longer than timeout_s
    (its jobs fail with code `timeout`).
    """
    started = time.time()
    rows = [(job, i) for job in jobs for i in range(job.n)]
    n = len(rows)
    c, vq = gpt.config, gpt.vqvae.config
    device = gpt.fc_in.weight.device
    labels = frames = present = None
    if c.class_conditional:
        labels = torch.tensor([job.request["class_label"] if job.request.get("class_label") is not None else -1
                               for job, _ in rows])
    if c.frame_conditional:
        blank = torch.zeros(3, c.n_cond_frames, vq.resolution, vq.resolution)
        frames = torch.stack([job.frames if job.frames is not None else blank for job, _ in rows]).to(device)
        has = [job.frames is not None for job, _ in rows]
        present = None if all(has) else torch.tensor(has)
        if not any(has):
            frames, present = None, None
    live = {job.id for job in jobs}
    last_poll = [0.0]

    def should_stop() -> bool:
        try:
            return _should_stop()
        except redis.exceptions.RedisError:
            return False  # Redis is away: keep sampling; the results are written when it is back

    def _should_stop() -> bool:
        if time.time() - started > timeout_s:
            for job in jobs:
                if job.id in live:
                    store.transition(job.id, ("running",), status="failed", finished_at=now_iso(),
                                     error={"code": "timeout", "message": f"the job ran longer than the limit of "
                                                                          f"{timeout_s:g} s"})
            live.clear()
            return True
        for job in jobs:
            if job.id in live and store.cancel_requested(job.id):
                live.discard(job.id)
                _finish_canceled(store, job)
        return not live

    def progress(done: int, total: int) -> None:
        fraction = 0.9 * done / total
        now = time.monotonic()
        if now - last_poll[0] >= 0.2 or done == total:
            last_poll[0] = now
            try:
                for job in jobs:
                    if job.id in live:
                        store.update(job.id, progress=round(fraction, 4))
            except redis.exceptions.RedisError:
                pass  # progress is best effort
        if on_progress:
            on_progress(fraction)

    try:
        codes = sample(gpt, n, class_labels=labels, cond_frames=frames, frames_present=present,
                       temperature=[job.request["temperature"] for job, _ in rows],
                       top_k=[job.request["top_k"] for job, _ in rows],
                       top_p=[job.request["top_p"] for job, _ in rows],
                       guidance=[job.request.get("guidance", 1.0) for job, _ in rows],
                       seed=[sample_seed(int(job.request["seed"]), i) for job, i in rows],
                       progress=progress, should_stop=should_stop)
    except SamplingCancelled:
        return
    sampled = time.time()
    sampling_s = sampled - started
    tokens = codes[0].numel()
    model = gpt.info.name if hasattr(gpt, "info") else "unnamed"
    metrics.SAMPLING.labels(model).observe(sampling_s)
    metrics.TOKENS.labels(model).inc(n * tokens)
    metrics.TOKENS_PER_SECOND.labels(model).set(n * tokens / max(sampling_s, 1e-9))
    metrics.BATCH_SAMPLES.labels(model).observe(n)
    with torch.no_grad():
        videos = torch.cat([gpt.vqvae.decode(codes[i:i + DECODE_CHUNK]).float().cpu()
                            for i in range(0, n, DECODE_CHUNK)])
    decode_s = time.time() - sampled
    metrics.DECODE.labels(model).observe(decode_s)
    scale = output_scale(vq.resolution, upscale)
    # What every job of the batch shares; each job adds its own queue, decode, encode and store times.
    batch_metrics = {"sampling_seconds": round(sampling_s, 4), "tokens_per_second": round(n * tokens / sampling_s, 1),
                     "batch_samples": n, "batch_jobs": len(jobs)}
    with tempfile.TemporaryDirectory(prefix="vgs-") as tmp, ThreadPoolExecutor(ENCODE_THREADS) as pool:
        # ffmpeg runs in its own processes: encoding every video of the batch at once keeps the cores busy.
        encodes: dict[tuple[str, int], Future] = {}
        row = 0
        for job in jobs:
            first, row = row, row + job.n  # the job's samples are rows first..row-1 of the batch
            if job.id in live and store.cancel_requested(job.id):  # no encoding for a job canceled by now
                live.discard(job.id)
                _finish_canceled(store, job)
            if job.id not in live:
                continue
            for i in range(job.n):
                encodes[job.id, i] = pool.submit(_timed_write_mp4, videos[first + i],
                                                 Path(tmp) / f"{job.id}-{i}.mp4", float(job.request["fps"]), scale)
        for job in jobs:
            if job.id not in live:
                continue
            if store.cancel_requested(job.id):
                _finish_canceled(store, job)
                continue
            _finish_succeeded(store, storage, job, encodes, model, started,
                              {**batch_metrics, "decode_seconds": round(decode_s * job.n / n, 4)})


def _timed_write_mp4(video: torch.Tensor, path: Path, fps: float, scale: int) -> tuple[Path, dict, float]:
    t0 = time.time()
    info = write_mp4(to_uint8_frames(video), path, fps=fps, scale=scale)
    return path, info, time.time() - t0


def _finish_succeeded(store: JobStore, storage: Storage, job: BatchJob, encodes: dict[tuple[str, int], Future],
                      model: str, started: float, shared_metrics: dict[str, float]) -> None:
    encode_s = store_s = 0.0
    outputs = []
    for i in range(job.n):
        path, info, seconds = encodes[job.id, i].result()
        encode_s += seconds
        t1 = time.time()
        key = f"{job.id}/{i}.mp4"
        storage.put(key, path, MP4_CONTENT_TYPE)
        store_s += time.time() - t1
        outputs.append({"key": key, **info})
    job_metrics = {
        "queue_seconds": round(job.metrics.get("claimed_at", started) - job.created_at, 4),
        **shared_metrics,
        "encode_seconds": round(encode_s, 4),
        "store_seconds": round(store_s, 4),
    }
    job.metrics.update(job_metrics)
    metrics.QUEUE_WAIT.labels(model).observe(job_metrics["queue_seconds"])
    metrics.ENCODE.labels(model).observe(encode_s)
    metrics.UPLOAD.labels(model).observe(store_s)
    _retrying(functools.partial(store.transition, job.id, ("running",), status="succeeded", progress=1.0,
                                finished_at=now_iso(), outputs=outputs, metrics=job_metrics))
    log.info("job %s succeeded: %d videos", job.id, job.n, extra={"job_id": job.id})


def _retrying(write: Callable[[], object], for_s: float = 30.0) -> None:
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


def _finish_canceled(store: JobStore, job: BatchJob) -> None:
    store.transition(job.id, ("running",), status="canceled", finished_at=now_iso(),
                     error={"code": "canceled", "message": "canceled while running"})
