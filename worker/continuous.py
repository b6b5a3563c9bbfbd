"""Continuous batching (VGS_BATCHING=continuous): the worker's loop around one engine per model.

RQ hands the worker one job id (it leads); the loop claims it, then keeps stepping every model's engine,
and between steps (every POLL_S while slots are free) takes newly queued jobs of its models into free
slots. A finished job goes to the finisher (decode, encode, store) while the engines step on; cancels, the
job time limit and progress are looked at every few steps. The loop returns to RQ once nothing runs and
nothing is queued, or after a stop request (SIGTERM) once what it holds is done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import redis
import torch

from jobs.backend import Backend
from jobs.settings import ServiceSettings
from jobs.store import JobStore
from models import InputError, VideoGPT
from models.engine import step_read_bytes

from . import encoder, metrics
from .batch import output_writer
from .claimed import load_claimed
from .finisher import Finisher
from .lane import LaneJob, ModelLane
from .loading import window_stride
from .outputs import finish_canceled


class Host(Protocol):
    """What the loop needs of its worker process (worker/runtime.py's WorkerRuntime)."""

    settings: ServiceSettings
    backend: Backend
    jobs: JobStore
    models: dict[str, VideoGPT]
    presence: Any

    def claim(self, job_id: str) -> dict[str, Any] | None: ...

    def release(self, job_id: str) -> None: ...

    def count_outcomes(self, model: str, job_ids: list[str]) -> None: ...

log = logging.getLogger(__name__)
POLL_S = 0.01  # how often a lane with free slots looks for queued jobs
CHECK_S = 0.1  # how often cancels and the job time limit are looked at
PROGRESS_S = 0.2
KEEPALIVE_S = 30.0  # how often RQ hears that the leading job is still running
RATE_WINDOW_S = 2.0


class ContinuousServer:
    def __init__(self, runtime: Host, slots: int | None = None):
        self.runtime, self.store = runtime, runtime.jobs
        settings = runtime.settings
        on_cpu = {name for name, gpt in runtime.models.items() if gpt.fc_in.weight.device.type == "cpu"}
        cache = last_level_cache_bytes() if on_cpu else None
        self.lanes = {name: ModelLane(name, gpt, slots or engine_slots(
            gpt, settings.engine_slots, settings.batch_size, cache if name in on_cpu else None),
            window_stride(gpt, settings.window_stride)) for name, gpt in runtime.models.items()}
        writers = {name: output_writer(self.store, runtime.backend.storage, gpt, settings.upscale)
                   for name, gpt in runtime.models.items()}
        self.finisher = Finisher(self.store, writers, self._done)
        # A CPU engine's thread is its bottleneck at saturation: the finishing processes decode its codes
        encoder.use_decoders({name: runtime.models[name].vqvae for name in on_cpu})
        self._rates = {name: (time.monotonic(), lane.engine.steps) for name, lane in self.lanes.items()}
        self._threads = torch.get_num_threads() if len(on_cpu) == len(self.lanes) else 0

    def close(self) -> None:
        self.finisher.close()

    def serve(self, leader: str, model: str, keepalive: Callable[[], None] | None = None,
              stop_requested: Callable[[], bool] = lambda: False) -> None:
        """Run the leader and whatever queues up meanwhile, until idle (or stopped and drained)."""
        self._claim(model, leader)
        last = {"poll": 0.0, "check": 0.0, "progress": 0.0, "keepalive": time.monotonic()}
        while True:
            now = time.monotonic()
            stopping = stop_requested()
            if not stopping and now - last["poll"] >= POLL_S:
                last["poll"] = now
                self._take_queued()
            if now - last["check"] >= CHECK_S:
                last["check"] = now
                self._check()
            if now - last["progress"] >= PROGRESS_S:
                last["progress"] = now
                self._report_progress()
                self._update_gauges()
            if keepalive is not None and now - last["keepalive"] >= KEEPALIVE_S:
                last["keepalive"] = now
                keepalive()
            self._share_cores()
            if not self._step_lanes() and (stopping or not self._take_queued()):
                break  # nothing runs, nothing waits in the queues: back to RQ, which blocks on them
        self._update_gauges()

    def _share_cores(self) -> None:
        """On CPU, while videos encode the engine steps on one thread fewer. Its threads wait for each other
        at every operation, so a core taken by ffmpeg stalls them all: with two threads on two cores beside
        an encoder the shipped model's steps took 3x as long, while one thread alone is only ~15% slower than
        two (and the engine, never idle under load, would otherwise starve the encoders behind it)."""
        if self._threads < 2:
            return
        wanted = self._threads - 1 if self.finisher.pending else self._threads
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)

    def _step_lanes(self) -> bool:
        """Admit waiting samples and step every busy lane once; whether any lane holds jobs."""
        busy = False
        for lane in self.lanes.values():
            self._admit(lane)
            try:
                complete = lane.step()
            except torch.cuda.OutOfMemoryError:
                self._lost_lane(lane)
                continue
            for lane_job in complete:
                self._hand_over(lane, lane_job)
            busy = busy or lane.busy
        return busy

    def _admit(self, lane: ModelLane) -> None:
        while True:
            try:
                lane.admit()
                return
            except Exception as exc:  # the job at the head cannot run: it fails, the rest go on
                lane_job: LaneJob = exc.lane_job  # type: ignore[attr-defined]
                lane.drop(lane_job.job.id)
                code = "invalid_request" if isinstance(exc, InputError) else \
                    "out_of_memory" if isinstance(exc, torch.cuda.OutOfMemoryError) else "internal"
                log.warning("job %s failed to start: %s", lane_job.job.id, exc, extra={"job_id": lane_job.job.id})
                self._end(lane.name, lane_job.job.id, "failed", code, f"{type(exc).__name__}: {exc}")

    def _lost_lane(self, lane: ModelLane) -> None:
        torch.cuda.empty_cache()
        for lane_job in lane.reset():
            self._end(lane.name, lane_job.job.id, "failed", "out_of_memory",
                      "the GPU ran out of memory while decoding; retry, or lower VGS_ENGINE_SLOTS")

    def _claim(self, model: str, job_id: str) -> bool:
        """Claim a queued job into its model's lane; False if it was not queued (canceled, taken)."""
        record = self.runtime.claim(job_id)
        if record is None:
            return False
        try:
            job = load_claimed(self.store, record)
        except ValueError as exc:
            self._end(model, job_id, "failed", "frames_expired", str(exc))
            return True
        except redis.exceptions.RedisError:
            self.runtime.release(job_id)  # its lease lapses: the reaper requeues it
            raise
        if model not in self.lanes:
            self._end(model, job_id, "failed", "internal", f"this worker does not serve model {model!r}")
            return True
        self.lanes[model].enqueue(job)
        log.info("job %s (%d samples) joins %s", job_id, job.n, model, extra={"job_id": job_id, "model": model})
        return True

    def _take_queued(self) -> bool:
        """Take the next queued job of every lane that could start one now; whether any was taken."""
        queue, took = self.store.queue, False
        try:
            for model, lane in self.lanes.items():
                if not lane.has_room():
                    continue
                entry = queue.take(model)
                if entry is None:
                    continue
                queue.forget(entry)
                took = self._claim(model, entry.job_id) or took
        except redis.exceptions.RedisError as exc:
            log.warning("taking queued jobs failed: %s", exc)
        return took

    def _check(self) -> None:
        """End the jobs a cancel was asked of, and those past the time limit."""
        held = [(lane, lane_job) for lane in self.lanes.values() for lane_job in list(lane.jobs.values())]
        if not held:
            return
        try:
            canceled = self.store.cancels_requested([lane_job.job.id for _, lane_job in held])
        except redis.exceptions.RedisError:
            return  # Redis is away: keep decoding; the results are written when it is back
        limit = self.runtime.settings.job_timeout_s
        for (lane, lane_job), cancel in zip(held, canceled):
            job = lane_job.job
            if cancel:
                lane.drop(job.id)
                finish_canceled(self.store, job)
                self._done(lane.name, job.id)
            elif time.time() - job.claimed_at > limit:
                lane.drop(job.id)
                self._end(lane.name, job.id, "failed", "timeout", f"the job ran longer than the limit of {limit:g} s")

    def _report_progress(self) -> None:
        progress = {lane_job.job.id: round(0.9 * lane.progress(lane_job), 4)
                    for lane in self.lanes.values() for lane_job in lane.jobs.values()}
        try:
            self.store.report_progress(progress)
        except redis.exceptions.RedisError:
            pass  # progress is best effort

    def _hand_over(self, lane: ModelLane, lane_job: LaneJob) -> None:
        """A job whose codes are all drawn: its sampling figures, then to the finisher."""
        job, n = lane_job.job, lane_job.job.n
        tokens = int(lane_job.codes[0].numel())  # every window's codes of one sample
        sampling_s = max(lane_job.done_at - lane_job.first_slot_at, 1e-9)
        wait_s = lane_job.first_slot_at - job.claimed_at
        mean_samples = lane_job.mean_samples
        metrics.SAMPLING.labels(lane.name).observe(sampling_s)
        metrics.SLOT_WAIT.labels(lane.name).observe(wait_s)
        metrics.TOKENS.labels(lane.name).inc(n * tokens)
        metrics.TOKENS_PER_SECOND.labels(lane.name).set(n * tokens / sampling_s)
        metrics.BATCH_SAMPLES.labels(lane.name).observe(mean_samples)
        shared = {"sampling_seconds": round(sampling_s, 4), "slot_wait_seconds": round(wait_s, 4),
                  "tokens_per_second": round(n * tokens / sampling_s, 1), "batch_samples": round(mean_samples, 2)}
        self.finisher.submit(lane.name, lane.gpt, lane_job, shared)

    def _end(self, model: str, job_id: str, status: str, code: str, message: str) -> None:
        try:
            self.store.end(job_id, status, code, message)
        except redis.exceptions.RedisError:
            log.warning("could not end job %s (%s); its lease will", job_id, code, extra={"job_id": job_id})
        self._done(model, job_id)

    def _done(self, model: str, job_id: str) -> None:
        """A job has left this worker (its record terminal, or left to the reaper)."""
        self.runtime.presence.running.discard(job_id)
        try:
            self.runtime.count_outcomes(model, [job_id])
        except redis.exceptions.RedisError:
            pass

    def _update_gauges(self) -> None:
        """Slots in use, steps per second (over the last RATE_WINDOW_S or more), busy."""
        busy, now = False, time.monotonic()
        for lane in self.lanes.values():
            metrics.SLOTS_IN_USE.labels(lane.name).set(lane.engine.rows_in_use)
            since, steps = self._rates[lane.name]
            if now - since >= RATE_WINDOW_S:
                metrics.STEPS_PER_SECOND.labels(lane.name).set((lane.engine.steps - steps) / (now - since))
                self._rates[lane.name] = (now, lane.engine.steps)
            busy = busy or lane.busy
        metrics.BUSY.set(1 if busy or self.finisher.pending else 0)
        self.runtime.presence.state = "busy" if busy else "idle"


def engine_slots(gpt, configured: int | None, batch_size: int, cache_bytes: int | None = None) -> int:
    """Slots of a model's engine: VGS_ENGINE_SLOTS, else room for VGS_BATCH_SIZE samples (two slots each
    when the model can be guided, as guided samples take a second row), and on a CPU (cache_bytes: its
    last-level cache) no more samples than keep what a step reads of the KV cache within a third of it.

    A CPU step reads every row's cache; past the cache it streams from memory. On a 32 MB L3 (AMD EPYC, one
    thread, as under load) the shipped prior's step took 0.146 / 0.136-0.150 / 0.162 / 0.171-0.175 /
    0.192-0.219 ms per guided sample at 3 / 4 / 5 / 6 / 8 samples (a step reads 2.4 MB a sample on
    average, its full cache is twice that): the best, 4, is the most within a third; the rest of the cache
    holds the weights, the activations and the other processes' data. With 8 the worker's capacity under
    load was 1.01-1.10x static batching's, with 4 1.20-1.38x (docs/models.md).
    """
    if configured:
        return configured
    per_sample = 2 if gpt.config.conditions_optional else 1
    samples = batch_size
    if cache_bytes:
        guide = getattr(gpt, "class_guide", None)
        read = per_sample * step_read_bytes(gpt) + (2 * step_read_bytes(guide.prior) if guide is not None else 0)
        samples = max(1, min(batch_size, int(cache_bytes / 3 // read)))
    return samples * per_sample


def last_level_cache_bytes() -> int | None:
    """The size of this machine's largest CPU cache (Linux sysfs); None where it cannot be read."""
    sizes = []
    for folder in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            size = (folder / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        if size[-1:] in units and size[:-1].isdigit():
            sizes.append(int(size[:-1]) * units[size[-1]])
        elif size.isdigit():
            sizes.append(int(size))
    return max(sizes, default=None)
