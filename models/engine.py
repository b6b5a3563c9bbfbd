"""The decoding engine: continuous batching over a persistent decoder per model (iteration-level
scheduling, as Orca, vLLM and TGI do for text).

An engine holds a fixed number of slots (rows of KV cache, allocated once). `add` places a sample in free
slots: one, or two when it is guided (the second row reads its unconditioned logits), plus two rows of the
class guide's prior when it has one. Each `step` advances every sample by one code, each at its own
position; a sample that has all its codes leaves at once and its slots take a new sample at the next
step; `cancel` frees a sample's slots. A sample's codes are the same bits whatever shares the engine with
it and whenever it joined (models/decoding.py says why), so a seed means one video.

Videos longer than the model's t latent time steps slide a window over time: once a window is full, the
sample's rows start over with its last t - stride time steps as context (prefilled in one pass) and
generate `stride` new ones, until it has all it asked for. The context is re-encoded by default: the
window is decoded to frames and the context's frames encoded again as a clip of their own. A VQ-VAE
with zero padding codes a clip's first time steps unlike inner ones (TATS's point; measured on the
shipped VQ-VAE: 17% of a clip's first-step codes match the codes of the same frames inside a longer
video, 68% of the second's, and the last step's 26%), and the prior learned to start from first-step
codes: handed the window's raw inner codes as its start, its digits slowed and drifted window by
window. Class conditioning holds for every window; a frames sample's later windows are conditioned on
the first frames of their own context (as decoded), as the prior saw frames and codes together in
training, or on the original frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .controls import check_sampling, check_seed, draw, drawn_class, uniform_stream
from .decoding import RowDecoder
from .errors import InputError
from .gpt import Conditioning, VideoGPT
from .layout import causal_mask
from .limits import MAX_GUIDANCE, is_guidance_scale
from .precision import DTYPES
from .row_draw import RowDraw, row_draw


class EngineFull(RuntimeError):
    """add() of a sample whose rows do not fit in the free slots now."""


@dataclass
class SampleRequest:
    """One sample to generate; `tag` is the caller's (a job and an index, say)."""

    seed: int
    class_label: int | None = None  # None (or -1): no class
    cond_frames: torch.Tensor | None = None  # (3, n_cond_frames, R, R) in [-0.5, 0.5]
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance: float = 1.0
    class_guidance: float | None = None  # None: the class guide's own scale; 0: off
    time_steps: int | None = None  # latent time steps to generate (None: the model's own, t)
    tag: Any = None


@dataclass
class Finished:
    handle: int
    tag: Any
    codes: torch.Tensor  # (t, h, w)


@dataclass
class _Live:
    handle: int
    request: SampleRequest
    rows: list[int]  # main decoder rows: [conditioned] or [conditioned, unconditioned]
    guide_rows: list[int]  # guide decoder rows: [recognised class, no class], or none
    guide_scale: float
    uniforms: torch.Tensor  # (total,) float64: the number each code is drawn with
    total: int  # codes to draw in all windows
    context: int  # positions a later window starts from (prefilled)
    drawn: int = 0  # codes drawn so far (the last few may still be on the device: see DecodeEngine.step)
    window_pos: int = 0  # the position in its window the sample's rows compute next
    codes: list[int] = field(default_factory=list)  # every code drawn and fetched: the sample's grid in the end
    window: list[int] = field(default_factory=list)  # the current window's codes, its context first


@dataclass
class _Plan:
    """Per-step index tensors of the live samples, rebuilt when samples come or go."""

    live: list[_Live]
    main: torch.Tensor  # (n,) place of each sample's conditioned row
    companion: torch.Tensor | None  # (n,) place of its unconditioned row (its own row when unguided)
    scales: torch.Tensor  # (n,) guidance
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    uniforms: torch.Tensor  # (n, longest total) float64: each sample's stream, on the device
    drawn: torch.Tensor  # (n,) each sample's codes drawn: where its next uniform is
    main_rows: torch.Tensor  # (rows,) places of every main row, and which sample each belongs to
    main_owner: torch.Tensor
    truncated: bool = False  # whether any sample has a top-k or top-p
    compiled: RowDraw | None = None  # the draw in one compiled call (CPU)
    filtered: torch.Tensor | None = None  # (f,) with compiled: the samples with a top-k or top-p, torch draws
    guided: torch.Tensor | None = None  # (g,) which samples the class guide steers
    guide_class: torch.Tensor | None = None  # (g,) guide places of their class and no-class rows
    guide_none: torch.Tensor | None = None
    guide_scales: torch.Tensor | None = None
    guide_rows: torch.Tensor | None = None
    guide_owner: torch.Tensor | None = None


LATER_FRAMES = ("generated", "original")
LATER_CONTEXTS = ("reencoded", "codes")
# Steps whose drawn codes may wait on the device before the host fetches them: a fetch waits for the
# device, so fetching every step keeps the host from queueing the next step while a GPU runs this one.
# Codes are fetched sooner when a sample finishes, ends a window, or the live samples change.
PENDING_STEPS = 32


class DecodeEngine:
    def __init__(self, gpt: VideoGPT, slots: int, cuda_graph: bool | None = None, stride: int | None = None,
                 later_frames: str = "generated", precision: str | None = None, later_context: str = "reencoded"):
        """stride: latent time steps each window after the first adds (default: half the model's t);
        later_frames: what conditions a frames sample's later windows (see the module); later_context:
        a later window's context re-encoded from its frames ("reencoded") or the codes as drawn ("codes");
        precision: of the decoding (default: the prior's decode_precision, set by load_gpt; else float32)."""
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise InputError(f"an engine needs at least one slot, got {slots!r}")
        t = gpt.latent_shape[0]
        self.stride = max(1, t // 2) if stride is None else stride
        if t > 1 and not 1 <= self.stride < t:
            raise InputError(f"the window stride must be 1..{t - 1} latent time steps for this model, got {stride!r}")
        if later_frames not in LATER_FRAMES:
            raise InputError(f"later_frames must be one of {', '.join(LATER_FRAMES)}, got {later_frames!r}")
        if later_context not in LATER_CONTEXTS:
            raise InputError(f"later_context must be one of {', '.join(LATER_CONTEXTS)}, got {later_context!r}")
        self.later_frames, self.later_context = later_frames, later_context
        self.gpt, self.slots = gpt, slots
        self.device = gpt.fc_in.weight.device
        self.main = RowDecoder(gpt, slots, cuda_graph, precision)
        guide = getattr(gpt, "class_guide", None)
        # Each sample may take two rows of the class guide's prior, and up to `slots` samples run at once.
        guide_precision = precision or getattr(gpt, "decode_precision", None)
        self.guide = RowDecoder(guide.prior, 2 * slots, cuda_graph, guide_precision) \
            if guide is not None else None
        self.live: dict[int, _Live] = {}
        # On CPU with float32 logits, every step's draw in one compiled call (row_draw.py)
        self._draw_library = row_draw() if self.device.type == "cpu" and all(
            decoder.dtype == torch.float32 for decoder in (self.main, self.guide) if decoder is not None) else None
        self._next = 0
        self._plan: _Plan | None = None
        self._pending: list[torch.Tensor] = []  # (n,) codes of the plan's samples, per step not yet fetched
        self.steps = 0  # steps taken, and samples advanced in them (the mean batch is their ratio)
        self.samples_stepped = 0

    @property
    def seq_len(self) -> int:
        return self.main.seq_len

    def max_time_steps(self) -> int | None:
        """The longest a sample may be in latent time steps (None: no limit; a one-step model: its own)."""
        return None if self.gpt.latent_shape[0] > 1 else 1

    @property
    def rows_in_use(self) -> int:
        return self.main.active

    def rows_needed(self, request: SampleRequest) -> tuple[int, int]:
        """(main rows, class-guide rows) a sample takes."""
        main = 1 if request.guidance == 1 else 2
        return main, 2 if self._guide_scale(request) else 0

    def fits(self, request: SampleRequest) -> bool:
        main, guide = self.rows_needed(request)
        return main <= self.main.free and (guide == 0 or guide <= self.guide.free)

    def _guide_scale(self, request: SampleRequest) -> float:
        guide = getattr(self.gpt, "class_guide", None)
        if guide is None or request.cond_frames is None:
            return 0.0
        return guide.scale if request.class_guidance is None else float(request.class_guidance)

    def check(self, request: SampleRequest) -> SampleRequest:
        """The request validated, with a drawn class where the bundle draws one (InputError if bad)."""
        check_seed(request.seed)
        check_sampling(request.temperature, request.top_k, request.top_p)
        if not is_guidance_scale(request.guidance):
            raise InputError(f"guidance must be a number in [0, {MAX_GUIDANCE}] (1: no guidance), "
                             f"got {request.guidance!r}")
        if request.guidance != 1 and not self.gpt.config.conditions_optional:
            raise InputError("guidance needs a prior trained with condition dropout (conditions_optional); "
                             "this one always needs its conditions: leave guidance at 1")
        check_class_guidance(self.gpt, request.class_guidance)
        steps = request.time_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
                                  or (self.max_time_steps() is not None and steps > self.max_time_steps())):
            raise InputError(f"time_steps must be a whole number of latent time steps from 1"
                             f"{f' to {self.max_time_steps()}' if self.max_time_steps() else ''}, got {steps!r}")
        info = getattr(self.gpt, "info", None)
        if info is not None and info.unconditional == "classes" and request.class_label in (None, -1):
            drawn = drawn_class(request.seed, self.gpt.config.class_cond_dim)
            request = dataclasses.replace(request, class_label=drawn)
        return request

    def condition(self, request: SampleRequest) -> Conditioning:
        """The conditioning of one sample (a batch of one)."""
        labels = None if request.class_label is None else torch.tensor([request.class_label])
        frames = None if request.cond_frames is None else request.cond_frames[None].to(self.device)
        return self.gpt.condition(labels, frames, 1)

    @torch.no_grad()
    def add(self, request: SampleRequest, cond: Conditioning | None = None) -> int:
        """Place a sample in free slots; its handle. cond: its conditioning, when the caller has it."""
        request = self.check(request)
        if not self.fits(request):
            raise EngineFull(f"a sample needs {self.rows_needed(request)} rows; {self.main.free} are free")
        cond = self.condition(request) if cond is None else cond
        main_rows, _ = self.rows_needed(request)
        rows = self.main.admit(cond if main_rows == 1 else cond.with_dropped_copy(), main_rows)
        guide_scale = self._guide_scale(request)
        guide_rows = self._admit_guide(request) if guide_scale else []
        handle, self._next = self._next, self._next + 1
        t, h, w = self.gpt.latent_shape
        total = (request.time_steps or t) * h * w
        self.live[handle] = _Live(handle, request, rows, guide_rows, guide_scale,
                                  uniform_stream(request.seed, total), total, (t - self.stride) * h * w)
        self._replan()
        return handle

    def _admit_guide(self, request: SampleRequest) -> list[int]:
        guide = self.gpt.class_guide
        label = int(guide.classes(request.cond_frames[None].to(self.device))[0])
        cond = guide.prior.condition(torch.tensor([label, -1]), None, 2)
        return self.guide.admit(cond, 2)

    def cancel(self, handle: int) -> bool:
        """Free a sample's slots (at once: the next step runs without it). False if it is not live."""
        live = self.live.pop(handle, None)
        if live is None:
            return False
        self._release(live)
        return True

    def _release(self, live: _Live) -> None:
        self.main.release(live.rows)
        if live.guide_rows:
            self.guide.release(live.guide_rows)
        self._replan()

    def _replan(self) -> None:
        """The live samples changed: the next step builds a new plan. Codes still on the device belong to
        the old plan's samples, so they are fetched first."""
        self._fetch()
        self._plan = None

    def progress(self, handle: int) -> tuple[int, int]:
        """(codes drawn, codes in all) of a live sample."""
        live = self.live[handle]
        return live.drawn, live.total

    @torch.no_grad()
    def step(self) -> list[Finished]:
        """Advance every live sample by one code; the samples that are complete now (their slots free)."""
        if not self.live:
            return []
        plan = self._plan or self._build_plan()
        self._plan = plan
        logits = self.main.step()
        guide_logits = self.guide.step() if plan.guided is not None else None
        if plan.compiled is not None:
            codes = self._draw_compiled(plan, logits, guide_logits)
        else:
            codes = self._draw(plan, logits, guide_logits)
        self._pending.append(codes)
        self.steps += 1
        self.samples_stepped += len(plan.live)
        for live in plan.live:
            live.drawn += 1
            live.window_pos += 1
        if len(self._pending) >= PENDING_STEPS or any(
                live.drawn == live.total or live.window_pos == self.seq_len for live in plan.live):
            self._fetch()
        finished = []
        for live in plan.live:
            if live.drawn == live.total:
                del self.live[live.handle]
                self._release(live)
                grid = torch.tensor(live.codes, dtype=torch.long).view(-1, *self.gpt.latent_shape[1:])
                finished.append(Finished(live.handle, live.request.tag, grid))
            elif live.window_pos == self.seq_len:
                self._next_window(live)
        return finished

    def _draw(self, plan: _Plan, logits: torch.Tensor, guide_logits: torch.Tensor | None) -> torch.Tensor:
        """The step's codes (n,) drawn with torch's operations, written as the rows' next inputs."""
        codes = draw(self._mix(plan, logits, guide_logits), plan.temperature, plan.top_k, plan.top_p,
                     plan.uniforms.gather(1, plan.drawn[:, None])[:, 0], plan.truncated)
        plan.drawn += 1
        self._set_tokens(plan, codes)
        return codes

    @staticmethod
    def _mix(plan: _Plan, logits: torch.Tensor, guide_logits: torch.Tensor | None) -> torch.Tensor:
        """Each sample's logits (n, K) as it draws from them: its guidance mix, its class guide's steer."""
        chosen = logits.index_select(0, plan.main)
        if plan.companion is not None:
            unconditioned = logits.index_select(0, plan.companion)
            chosen = torch.where(plan.scales[:, None] == 1, chosen,
                                 torch.lerp(unconditioned.float(), chosen.float(), plan.scales[:, None]))
        if plan.guided is not None:
            guide_logits = guide_logits.float()
            steer = plan.guide_scales[:, None] * (guide_logits.index_select(0, plan.guide_class)
                                                  - guide_logits.index_select(0, plan.guide_none))
            chosen = chosen.float().index_add(0, plan.guided, steer)
        return chosen

    def _set_tokens(self, plan: _Plan, codes: torch.Tensor) -> None:
        self.main.set_tokens(plan.main_rows, codes.index_select(0, plan.main_owner))
        if plan.guided is not None:
            self.guide.set_tokens(plan.guide_rows, codes.index_select(0, plan.guide_owner))

    def _draw_compiled(self, plan: _Plan, logits: torch.Tensor, guide_logits: torch.Tensor | None) -> torch.Tensor:
        """The step's codes through the compiled draw; samples with a top-k or top-p mixed there, drawn by
        torch (from their uniforms before the call moved them on)."""
        if plan.filtered is None:
            return plan.compiled(logits, guide_logits)
        f = plan.filtered
        uniforms = plan.uniforms[f].gather(1, plan.drawn[f, None])[:, 0]
        codes = plan.compiled(logits, guide_logits, write_tokens=False)
        codes[f] = draw(plan.compiled.chosen[f], plan.temperature[f], plan.top_k[f], plan.top_p[f], uniforms, True)
        self._set_tokens(plan, codes)
        return codes

    def _fetch(self) -> None:
        """Bring the codes drawn in the steps since the last fetch to the host, into each sample's lists
        (one wait for the device, however many steps)."""
        if not self._pending:
            return
        per_sample = torch.stack(self._pending, dim=1).tolist()
        self._pending = []
        for live, codes in zip(self._plan.live, per_sample):
            live.codes += codes
            live.window += codes

    def _next_window(self, live: _Live) -> None:
        """Start the sample's rows over with its last t - stride time steps as context (see the module)."""
        t, h, w = self.gpt.latent_shape
        window = torch.tensor(live.window, dtype=torch.long, device=self.device).view(1, t, h, w)
        if self.later_context == "reencoded":
            vqvae = self.gpt.vqvae
            clip = vqvae.decode(window)[:, :, self.stride * vqvae.config.downsample[0]:].clamp(-0.5, 0.5)
            context = vqvae.codebook.quantize(vqvae.encode_continuous(clip))[0, :t - self.stride]
            first_frames = clip[0, :, :self.gpt.config.n_cond_frames]
        else:
            context = window[0, self.stride:]
            first_frames = None
        cond = None
        if live.request.cond_frames is not None and self.later_frames == "generated":
            if first_frames is None:
                first_frames = self._first_frames(context)
            cond = self.condition(dataclasses.replace(live.request, cond_frames=first_frames))
            cond = cond if len(live.rows) == 1 else cond.with_dropped_copy()
        context = context.flatten()
        for i, row in enumerate(live.rows):
            self.main.restart(row, context, None if cond is None else cond.row(i))
        for row in live.guide_rows:
            self.guide.restart(row, context)
        live.window = context.tolist()
        live.window_pos = live.context

    def _first_frames(self, context: torch.Tensor) -> torch.Tensor:
        """The first frames (3, n_cond_frames, R, R) of the video the context codes (t', h, w) decode to."""
        video = self.gpt.vqvae.decode_any_length(context[None])
        return video[0, :, :self.gpt.config.n_cond_frames].clamp(-0.5, 0.5)

    def _build_plan(self) -> _Plan:
        live = list(self.live.values())
        device = self.device

        def tensor(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        main = [self.main.place(s.rows[0]) for s in live]
        guided = any(len(s.rows) == 2 for s in live)
        rows = [(self.main.place(r), i) for i, s in enumerate(live) for r in s.rows]
        plan = _Plan(
            live=live, main=tensor(main, torch.long),
            companion=tensor([self.main.place(s.rows[-1]) for s in live], torch.long) if guided else None,
            scales=tensor([float(s.request.guidance) for s in live], torch.float32),
            temperature=tensor([float(s.request.temperature) for s in live], torch.float32),
            top_k=tensor([s.request.top_k or 0 for s in live], torch.long),
            top_p=tensor([1.0 if s.request.top_p is None else float(s.request.top_p) for s in live], torch.float32),
            uniforms=torch.nn.utils.rnn.pad_sequence([s.uniforms for s in live], batch_first=True).to(device),
            drawn=tensor([s.drawn for s in live], torch.long),
            main_rows=tensor([p for p, _ in rows], torch.long), main_owner=tensor([i for _, i in rows], torch.long),
            truncated=any(_truncated(s.request) for s in live))
        steered = [i for i, s in enumerate(live) if s.guide_rows]
        if steered:
            plan.guided = tensor(steered, torch.long)
            plan.guide_class = tensor([self.guide.place(live[i].guide_rows[0]) for i in steered], torch.long)
            plan.guide_none = tensor([self.guide.place(live[i].guide_rows[1]) for i in steered], torch.long)
            plan.guide_scales = tensor([live[i].guide_scale for i in steered], torch.float32)
            guide_rows = [(self.guide.place(r), i) for i in steered for r in live[i].guide_rows]
            plan.guide_rows = tensor([p for p, _ in guide_rows], torch.long)
            plan.guide_owner = tensor([i for _, i in guide_rows], torch.long)
        if self._draw_library is not None:
            self._compile_draw(plan)
        return plan

    def _compile_draw(self, plan: _Plan) -> None:
        """Give the plan its compiled draw (every CPU plan of float32 logits: which way a sample is drawn
        must not depend on what shares its steps)."""
        filtered = [i for i, s in enumerate(plan.live) if _truncated(s.request)]
        plan.filtered = torch.tensor(filtered, dtype=torch.long) if filtered else None
        guide = None if plan.guided is None else {
            "guided": plan.guided, "class": plan.guide_class, "none": plan.guide_none, "rows": plan.guide_rows,
            "owner": plan.guide_owner, "tokens": self.guide.tokens, "scales": plan.guide_scales}
        drawn_here = torch.ones(len(plan.live), dtype=torch.bool)
        drawn_here[filtered] = False
        plan.compiled = RowDraw(self._draw_library, self.gpt.n_codes, plan.main, plan.companion, plan.scales,
                                plan.temperature, drawn_here, plan.uniforms, plan.drawn, self.main.tokens,
                                plan.main_rows, plan.main_owner, guide)


def step_read_bytes(prior: VideoGPT) -> float:
    """The KV-cache bytes a row's step reads, averaged over a video: every layer's keys and values at the
    positions its attention may see (on average half the video for full attention; a sparse prior's blocks)."""
    c = prior.config
    mask = causal_mask(prior.latent_shape, c.attn_type, c.sparse_block_size, c.sparse_local_blocks)
    positions = mask.sum().item() / mask.shape[0]
    element = DTYPES[getattr(prior, "decode_precision", "float32")].itemsize  # the cache's (int8's: bfloat16)
    return 2 * c.layers * c.hidden_dim * element * positions


def _truncated(request: SampleRequest) -> bool:
    """Whether the sample draws from a top-k or top-p of its codes."""
    return request.top_k is not None or request.top_p not in (None, 1, 1.0)


def check_class_guidance(gpt: VideoGPT, class_guidance: object) -> None:
    """Raise InputError unless class_guidance is None or a scale for a prior that has a class guide."""
    if class_guidance is None:
        return
    if getattr(gpt, "class_guide", None) is None:
        raise InputError("class_guidance needs a frames prior with a class guide (set-class-guide)")
    if not is_guidance_scale(class_guidance):
        raise InputError(f"class_guidance must be a number in [0, {MAX_GUIDANCE}] (0: off), got {class_guidance!r}")
