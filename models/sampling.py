"""`sample`: the simple public entry to generating code grids, built on the decoding engine.

Every sample has its own temperature, top-k, top-p and seed; its random numbers come from its own stream,
so a seed gives the same video whatever else shares the batch (models/engine.py, models/decoding.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .controls import check_sampling, check_seed, drawn_class, random_seed, sample_seed, uniform_stream
from .engine import DecodeEngine, SampleRequest, check_class_guidance
from .errors import InputError
from .gpt import VideoGPT
from .limits import MAX_GUIDANCE, is_guidance_scale

PROGRESS_INTERVAL_S = 0.2
STOP_POLL_INTERVAL_S = 0.05


@dataclass
class ClassGuide:
    """What steers a frames prior toward the class its given frame shows (ours; `set-class-guide`): a
    class prior trained with condition dropout on the same codes, a frame recognizer, and a scale. A frames
    sample of a prior carrying one (`gpt.class_guide`) adds scale x (the class prior's logits for the class
    the recognizer reads off the first given frame - its logits without a class) to its own, which keeps
    the given digit that digit rather than letting it drift into a neighbouring shape."""

    prior: VideoGPT
    recognizer: torch.nn.Module
    scale: float

    @torch.no_grad()
    def classes(self, cond_frames: torch.Tensor) -> torch.Tensor:
        """The class (B,) the recognizer reads off each sample's first given frame (B, 3, n, H, W)."""
        return self.recognizer(cond_frames[:, :, 0].float()).argmax(dim=1)


class SamplingCancelled(Exception):
    """should_stop() answered True; decoding stopped at the step given by `done_steps`."""

    def __init__(self, done_steps: int, total_steps: int):
        super().__init__(f"sampling cancelled after {done_steps} of {total_steps} steps")
        self.done_steps = done_steps
        self.total_steps = total_steps


def _is_sequence(value: object) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, torch.Tensor) and value.dim() == 1)


def _per_sample(name: str, value: object, n: int) -> list:
    """value as n per-sample entries: a sequence of n as it is, anything else repeated."""
    if not _is_sequence(value):
        return [value] * n
    if len(value) != n:  # type: ignore[arg-type]
        raise InputError(f"{name} has {len(value)} entries for {n} samples")  # type: ignore[arg-type]
    return value.tolist() if isinstance(value, torch.Tensor) else list(value)  # type: ignore[union-attr]


@dataclass
class SamplingControls:
    """Per-sample sampling settings of a batch, validated; seeds expanded (an int seed: sample_seed(seed, i))."""

    temperature: list[float]
    top_k: list[int | None]
    top_p: list[float | None]
    seeds: list[int]

    @classmethod
    def build(cls, n: int, temperature: object = 1.0, top_k: object = None, top_p: object = None,
              seed: object = None) -> SamplingControls:
        temps, ks, ps = (_per_sample(name, v, n) for name, v in
                         (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)))
        for t, k, p in zip(temps, ks, ps):
            check_sampling(t, k, p)
        if seed is None:
            seeds = [random_seed() for _ in range(n)]
        elif _is_sequence(seed):
            seeds = [check_seed(s) for s in _per_sample("seed", seed, n)]
        else:
            seeds = [sample_seed(check_seed(seed), i) for i in range(n)]
        return cls(temps, ks, ps, seeds)

    def classes(self, n_classes: int) -> torch.Tensor:
        """(n,) a class per sample, drawn uniformly from a stream of its seed apart from its codes' stream."""
        return torch.tensor([drawn_class(s, n_classes) for s in self.seeds])

    def uniforms(self, steps: int) -> torch.Tensor:
        """(n, steps) uniform numbers in [0, 1), each row from its sample's own generator."""
        return torch.stack([uniform_stream(s, steps) for s in self.seeds])


def _as_batch_tensor(value: object, device: torch.device) -> torch.Tensor | None:
    if value is None:
        return None
    return torch.as_tensor(value, device=device)


def _guidance(gpt: VideoGPT, guidance: object, n: int) -> list[float]:
    values = [1.0 if g is None else g for g in _per_sample("guidance", guidance, n)]
    for g in values:
        if not is_guidance_scale(g):
            raise InputError(f"guidance must be a number in [0, {MAX_GUIDANCE}] (1: no guidance), got {g!r}")
    if any(g != 1 for g in values) and not gpt.config.conditions_optional:
        raise InputError("guidance needs a prior trained with condition dropout (conditions_optional); "
                         "this one always needs its conditions: leave guidance at 1")
    return [float(g) for g in values]


def _requests(n: int, labels: torch.Tensor | None, cond_frames: torch.Tensor | None,
              present: torch.Tensor | None, controls: SamplingControls, guidance: list[float],
              class_guidance: object) -> list[SampleRequest]:
    requests = []
    for i in range(n):
        has_frames = cond_frames is not None and (present is None or bool(present[i]))
        label = None if labels is None or int(labels[i]) == -1 else int(labels[i])
        requests.append(SampleRequest(
            seed=controls.seeds[i], class_label=label, cond_frames=cond_frames[i] if has_frames else None,
            temperature=controls.temperature[i], top_k=controls.top_k[i], top_p=controls.top_p[i],
            guidance=guidance[i], class_guidance=class_guidance, tag=i))
    return requests


@torch.no_grad()
def sample(gpt: VideoGPT, n: int, *, class_labels: object = None, cond_frames: torch.Tensor | None = None,
           frames_present: object = None, temperature: object = 1.0, top_k: object = None,
           top_p: object = None, seed: object = None, guidance: object = None, class_guidance: object = None,
           progress: Callable[[int, int], None] | None = None,
           should_stop: Callable[[], bool] | None = None, cuda_graph: bool | None = None,
           time_steps: int | None = None, window_stride: int | None = None,
           later_frames: str = "generated", later_context: str = "reencoded") -> torch.Tensor:
    """Sample n code grids (n, t, h, w); `gpt.vqvae.decode` turns them into video.

    temperature, top_k, top_p, guidance and seed are one value for all samples or a sequence of n (one per
    sample, as when the worker batches several requests). An int seed gives sample i the seed
    `sample_seed(seed, i)`; a sequence gives each sample its own. progress(done, total) is called at most
    every 0.2 s and at the end; should_stop() is polled about every 50 ms, and SamplingCancelled is raised
    when it answers True.
    With a prior trained with condition dropout, label -1 is "no class" and frames_present (n bools) says
    which samples of cond_frames have frames: one batch can mix modes. A bundle whose `unconditional` is
    "classes" gives each sample without a class one drawn uniformly from its seed instead.
    guidance (None or 1 = off) is classifier-free guidance for such a prior: each step's logits become
    u + s * (c - u), c with the sample's conditions and u with them dropped, so the codes follow the class
    or frames more closely; a guided sample takes a second row.
    A frames prior with a class guide (`gpt.class_guide`) also follows its class prior toward the class
    recognised in each sample's first frame; class_guidance (None: the guide's own scale; 0: off) sets how
    strongly. It runs the class prior beside the frames prior, two rows per sample.
    On CUDA the decode step is captured once as a CUDA graph and replayed (cuda_graph=False turns it off).
    time_steps (None: the model's t) asks for longer (or shorter) grids (n, time_steps, h, w): a window slides
    over time, each later one adding window_stride latent time steps (default t // 2) to the last t - stride
    as context; `gpt.vqvae.decode_long` turns them into video. later_frames: what conditions a frames
    sample's later windows, "generated" (the first frames of their own context) or "original";
    later_context: that context "reencoded" from its frames as a clip of its own (the default: what the
    prior saw at a window's start in training) or the "codes" as drawn (see models/engine.py).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be an integer >= 1, got {n!r}")
    controls = SamplingControls.build(n, temperature, top_k, top_p, seed)
    scales = _guidance(gpt, guidance, n)
    device = gpt.fc_in.weight.device
    cond_frames = None if cond_frames is None else cond_frames.to(device)
    present = None if frames_present is None else torch.as_tensor(frames_present, device=device)
    labels = None if class_labels is None else torch.as_tensor(class_labels, device=device)
    info = getattr(gpt, "info", None)
    if info is not None and info.unconditional == "classes":  # no class: draw one (see BundleInfo)
        drawn = controls.classes(gpt.config.class_cond_dim).to(device)
        labels = drawn if labels is None else torch.where(labels == -1, drawn, labels)
    check_class_guidance(gpt, class_guidance)
    cond = gpt.condition(labels, cond_frames, n, present)  # validates the batch, encodes the frames once
    engine = DecodeEngine(gpt, sum(1 if g == 1 else 2 for g in scales), cuda_graph=cuda_graph, stride=window_stride,
                          later_frames=later_frames, later_context=later_context)
    for i, request in enumerate(_requests(n, labels, cond_frames, present, controls, scales, class_guidance)):
        engine.add(dataclasses.replace(request, time_steps=time_steps), cond.row(i))
    steps = time_steps or gpt.latent_shape[0]
    return _run(engine, n, steps * math.prod(gpt.latent_shape[1:]), progress, should_stop).view(
        n, steps, *gpt.latent_shape[1:])


def _run(engine: DecodeEngine, n: int, total: int, progress: Callable[[int, int], None] | None,
         should_stop: Callable[[], bool] | None) -> torch.Tensor:
    """Step the engine until every sample's `total` codes are drawn; the codes (n, total) in tag order."""
    codes = torch.zeros(n, total, dtype=torch.long)
    last_progress = last_poll = time.monotonic()
    while engine.live:
        if should_stop is not None and time.monotonic() - last_poll >= STOP_POLL_INTERVAL_S:
            last_poll = time.monotonic()
            if should_stop():
                raise SamplingCancelled(engine.steps, total)
        for finished in engine.step():
            codes[finished.tag] = finished.codes.flatten()
        if progress is not None and time.monotonic() - last_progress >= PROGRESS_INTERVAL_S:
            last_progress = time.monotonic()
            progress(engine.steps, total)
    if progress is not None:
        progress(total, total)
    return codes
