"""One model's lane in a continuously batching worker: its decoding engine, the jobs waiting for slots (in
the order they were claimed) and the jobs whose samples are in the engine.

The lane decides who runs (as vLLM's scheduler does); the engine only runs what it is handed. A job's
samples enter the engine one by one as slots free, in order: a job waits behind the jobs claimed before
it, and its own samples may start at different steps (each sample's codes depend only on its seed).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from models import VideoGPT, sample_seed
from models.engine import DecodeEngine, SampleRequest

from .claimed import ClaimedJob


@dataclass
class LaneJob:
    """A claimed job in a lane: which of its samples are in the engine, and the codes of those done."""

    job: ClaimedJob
    next_sample: int = 0
    handles: dict[int, int] = field(default_factory=dict)  # engine handle -> sample index
    codes: dict[int, torch.Tensor] = field(default_factory=dict)
    first_slot_at: float | None = None
    done_at: float | None = None
    started: tuple[int, int] = (0, 0)  # the engine's steps and samples stepped when its first sample went in
    mean_samples: float = 0.0  # samples the engine stepped per step while the job ran

    @property
    def complete(self) -> bool:
        return len(self.codes) == self.job.n

    def request(self, index: int, frames: torch.Tensor | None, frames_per_step: int) -> SampleRequest:
        r = self.job.request
        return SampleRequest(seed=sample_seed(r.seed, index), class_label=r.class_label, cond_frames=frames,
                             temperature=r.temperature, top_k=r.top_k, top_p=r.top_p, guidance=r.guidance,
                             time_steps=None if r.num_frames is None else r.num_frames // frames_per_step,
                             tag=(self.job.id, index))


class ModelLane:
    def __init__(self, name: str, gpt: VideoGPT, slots: int, stride: int | None = None):
        """stride: latent time steps each later window of a long video adds (None: the engine's default)."""
        self.name, self.gpt, self.stride = name, gpt, stride
        self.engine = DecodeEngine(gpt, slots, stride=stride)
        self.waiting: deque[LaneJob] = deque()  # jobs with samples not yet in the engine, oldest first
        self.jobs: dict[str, LaneJob] = {}  # every job of the lane not yet handed on

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    def has_room(self) -> bool:
        """Whether a newly claimed job could start now: nobody waits and a sample would fit."""
        return not self.waiting and self.engine.main.free > 0

    def enqueue(self, job: ClaimedJob) -> LaneJob:
        lane_job = LaneJob(job)
        self.jobs[job.id] = lane_job
        self.waiting.append(lane_job)
        return lane_job

    def admit(self) -> None:
        """Move waiting samples into free slots, oldest job first, until the next one does not fit.

        A request the engine refuses (InputError) raises with the job attached: the caller fails that job.
        """
        while self.waiting:
            lane_job = self.waiting[0]
            frames = lane_job.job.frames.to(self.engine.device) if lane_job.job.frames is not None else None
            request = lane_job.request(lane_job.next_sample, frames, self.gpt.vqvae.config.downsample[0])
            if not self.engine.fits(request):
                return
            try:
                handle = self.engine.add(request)
            except Exception as exc:
                exc.lane_job = lane_job  # type: ignore[attr-defined]
                raise
            lane_job.handles[handle] = lane_job.next_sample
            lane_job.next_sample += 1
            if lane_job.first_slot_at is None:
                lane_job.first_slot_at = time.time()
                lane_job.started = (self.engine.steps, self.engine.samples_stepped)
            if lane_job.next_sample == lane_job.job.n:
                self.waiting.popleft()

    def step(self) -> list[LaneJob]:
        """One engine step; the jobs whose every sample is done now (taken out of the lane)."""
        if not self.engine.live:
            return []
        complete = []
        for finished in self.engine.step():
            job_id, index = finished.tag
            lane_job = self.jobs[job_id]
            lane_job.codes[index] = finished.codes
            del lane_job.handles[finished.handle]
            if lane_job.complete:
                lane_job.done_at = time.time()
                steps, samples = self.engine.steps - lane_job.started[0], \
                    self.engine.samples_stepped - lane_job.started[1]
                lane_job.mean_samples = samples / max(steps, 1)
                complete.append(self.jobs.pop(job_id))
        return complete

    def drop(self, job_id: str) -> LaneJob | None:
        """Take a job out of the lane (canceled, failed): its samples leave the engine at once."""
        lane_job = self.jobs.pop(job_id, None)
        if lane_job is None:
            return None
        for handle in list(lane_job.handles):
            self.engine.cancel(handle)
        if lane_job in self.waiting:
            self.waiting.remove(lane_job)
        return lane_job

    def progress(self, lane_job: LaneJob) -> float:
        """The fraction of the job's codes drawn so far (every window's)."""
        job = lane_job.job
        t, h, w = self.gpt.latent_shape
        per_sample = h * w * (t if job.request.num_frames is None else
                              job.request.num_frames // self.gpt.vqvae.config.downsample[0])
        done = per_sample * len(lane_job.codes)
        done += sum(self.engine.progress(handle)[0] for handle in lane_job.handles)
        return done / (per_sample * job.n)

    def reset(self) -> list[LaneJob]:
        """Empty the lane and start a fresh engine (after the device failed a step); the jobs it held."""
        held = list(self.jobs.values())
        self.jobs.clear()
        self.waiting.clear()
        self.engine = DecodeEngine(self.gpt, self.engine.slots, stride=self.stride)
        return held
