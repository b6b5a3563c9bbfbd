"""A static batch: the jobs of one model that waited together, sampled as one, then decoded, encoded and
stored (VGS_BATCHING=static).

Each job keeps its own mode, label, frames, seed and sampling settings: they become per-sample rows of a
single `sample` call (a prior trained with condition dropout mixes modes in one batch).
"""

from __future__ import annotations

import time
from typing import Any

import redis
import torch

from jobs.store import JobStore
from models import SamplingCancelled, VideoGPT, sample, sample_seed

from . import metrics
from .claimed import ClaimedJob
from .outputs import OutputWriter, finish_canceled, output_scale

PROGRESS_EVERY_S = 0.2


def batch_inputs(gpt: VideoGPT, jobs: list[ClaimedJob]) -> dict[str, Any]:
    """The keyword arguments of `sample` for every sample of these jobs, in order."""
    rows = [(job, i) for job in jobs for i in range(job.n)]
    c, vq = gpt.config, gpt.vqvae.config
    inputs: dict[str, Any] = {
        "temperature": [job.request.temperature for job, _ in rows],
        "top_k": [job.request.top_k for job, _ in rows], "top_p": [job.request.top_p for job, _ in rows],
        "guidance": [job.request.guidance for job, _ in rows],
        "seed": [sample_seed(job.request.seed, i) for job, i in rows]}
    if c.class_conditional:
        inputs["class_labels"] = torch.tensor([-1 if job.request.class_label is None else job.request.class_label
                                               for job, _ in rows])
    if c.frame_conditional and any(job.frames is not None for job in jobs):
        blank = torch.zeros(3, c.n_cond_frames, vq.resolution, vq.resolution)
        inputs["cond_frames"] = torch.stack([blank if job.frames is None else job.frames for job, _ in rows])
        has = [job.frames is not None for job, _ in rows]
        inputs["frames_present"] = None if all(has) else torch.tensor(has)
    return inputs


class BatchWatch:
    """What the sampler asks while it runs: whether to stop (all canceled, or past the time limit: those
    jobs end at once) and where to report progress."""

    def __init__(self, store: JobStore, jobs: list[ClaimedJob], timeout_s: float):
        self.store, self.jobs, self.timeout_s = store, jobs, timeout_s
        self.started = time.time()
        self.live = {job.id for job in jobs}
        self._last_progress = 0.0

    def should_stop(self) -> bool:
        try:
            return self._should_stop()
        except redis.exceptions.RedisError:
            return False  # Redis is away: keep sampling; the results are written when it is back

    def _should_stop(self) -> bool:
        if time.time() - self.started > self.timeout_s:
            for job in self.jobs:
                if job.id in self.live:
                    self.store.end(job.id, "failed", "timeout",
                                   f"the job ran longer than the limit of {self.timeout_s:g} s")
            self.live.clear()
            return True
        self.drop_canceled()
        return not self.live

    def drop_canceled(self) -> None:
        """End the live jobs a cancel was asked of."""
        live = [job for job in self.jobs if job.id in self.live]
        for job, canceled in zip(live, self.store.cancels_requested([job.id for job in live])):
            if canceled:
                self.live.discard(job.id)
                finish_canceled(self.store, job)

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_EVERY_S and done != total:
            return
        self._last_progress = now
        try:
            for job in self.jobs:
                if job.id in self.live:
                    self.store.update(job.id, progress=round(0.9 * done / total, 4))
        except redis.exceptions.RedisError:
            pass  # progress is best effort


def run_batch(gpt: VideoGPT, jobs: list[ClaimedJob], store: JobStore, writer: OutputWriter,
              timeout_s: float = float("inf"), window_stride: int | None = None) -> None:
    """Sample, decode, encode and store every job's videos; each job's record ends terminal.

    A job canceled while the batch runs is marked canceled at once (its rows are discarded); the batch
    stops early only when every job in it is canceled, or when it has sampled for longer than timeout_s
    (its jobs fail with code `timeout`). window_stride: latent time steps each later window of a long
    video adds (None: the sampler's default). Progress counts every window's codes.
    """
    lengths = {job.request.num_frames for job in jobs}
    if len(lengths) > 1:  # one sample() call draws grids of one length: a batch per length
        for length in sorted(lengths, key=lambda f: f or 0):
            run_batch(gpt, [job for job in jobs if job.request.num_frames == length], store, writer, timeout_s,
                      window_stride)
        return
    watch = BatchWatch(store, jobs, timeout_s)
    inputs = batch_inputs(gpt, jobs)
    num_frames = jobs[0].request.num_frames
    if num_frames is not None:
        inputs["time_steps"] = num_frames // gpt.vqvae.config.downsample[0]
    inputs["window_stride"] = window_stride
    metrics.SLOTS_IN_USE.labels(writer.model).set(sum(1 if g == 1 else 2 for g in inputs["guidance"]))
    try:
        codes = sample(gpt, sum(job.n for job in jobs), **inputs, progress=watch.progress,
                       should_stop=watch.should_stop)
    except SamplingCancelled:
        return
    finally:
        metrics.SLOTS_IN_USE.labels(writer.model).set(0)
    sampling_s = time.time() - watch.started
    shared = record_sampling(writer.model, codes, sampling_s, len(jobs))
    videos, decode_s = writer.decode(gpt.vqvae, codes)
    watch.drop_canceled()  # no encoding for a job canceled by now
    encodes, first = {}, 0
    for job in jobs:
        if job.id in watch.live:
            encodes[job.id] = writer.encode(job, videos[first:first + job.n])
        first += job.n
    for job in jobs:
        if job.id in encodes:
            if store.cancel_requested(job.id):
                finish_canceled(store, job)
                continue
            writer.succeed(job, encodes[job.id], {**shared, "decode_seconds": round(decode_s * job.n / len(codes), 4)})


def record_sampling(model: str, codes: torch.Tensor, sampling_s: float, n_jobs: int) -> dict[str, Any]:
    """Sampling metrics of a batch of codes (n, t, h, w); returns the figures its jobs report."""
    n, tokens = codes.shape[0], codes[0].numel()
    metrics.SAMPLING.labels(model).observe(sampling_s)
    metrics.TOKENS.labels(model).inc(n * tokens)
    metrics.TOKENS_PER_SECOND.labels(model).set(n * tokens / max(sampling_s, 1e-9))
    metrics.BATCH_SAMPLES.labels(model).observe(n)
    return {"sampling_seconds": round(sampling_s, 4), "tokens_per_second": round(n * tokens / max(sampling_s, 1e-9), 1),
            "batch_samples": n, "batch_jobs": n_jobs}


def output_writer(store: JobStore, storage: Any, gpt: VideoGPT, upscale: int) -> OutputWriter:
    return OutputWriter(store, storage, gpt.info.name, output_scale(gpt.vqvae.config.resolution, upscale))
