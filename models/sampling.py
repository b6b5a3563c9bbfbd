"""Fast autoregressive sampling: a static KV cache, one token position per step for a whole batch.

Each step embeds only the newest code, attends only to what the position may read (the prefix for full
attention; the allowed blocks for the strided sparse layout) and reads the frame encoding's keys and values,
computed once per batch. Every sample has its own temperature, top-k, top-p and seed; its random numbers
come from its own generator, so a seed gives the same video whatever else shares the batch.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError
from .gpt import Conditioning, VideoGPT
from .layers import LayerNorm
from .layout import causal_mask, sparse_block_layout
from .limits import MAX_GUIDANCE, MAX_SEED, is_guidance_scale

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


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of a request seeded with `seed` (distinct streams, not seed + index)."""
    digest = hashlib.sha256(f"videogpt-serve:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & MAX_SEED


def _is_sequence(value: object) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, torch.Tensor) and value.dim() == 1)


def _per_sample(name: str, value: object, n: int) -> list:
    """value as n per-sample entries: a sequence of n as it is, anything else repeated."""
    if not _is_sequence(value):
        return [value] * n
    if len(value) != n:  # type: ignore[arg-type]
        raise InputError(f"{name} has {len(value)} entries for {n} samples")  # type: ignore[arg-type]
    return value.tolist() if isinstance(value, torch.Tensor) else list(value)  # type: ignore[union-attr]


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    return seed


@dataclass
class SamplingControls:
    """Per-sample sampling settings, validated; top_k 0 and top_p 1.0 mean no truncation."""

    temperature: torch.Tensor  # (n,) float
    top_k: torch.Tensor  # (n,) long
    top_p: torch.Tensor  # (n,) float
    seeds: list[int]

    @classmethod
    def build(cls, n: int, temperature: object = 1.0, top_k: object = None, top_p: object = None,
              seed: object = None) -> SamplingControls:
        temps, ks, ps = (_per_sample(name, v, n) for name, v in
                         (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)))
        for t in temps:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
                raise InputError(f"temperature must be a number > 0, got {t!r}")
        for k in ks:
            if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
                raise InputError(f"top_k must be an integer >= 1 (or None for no limit), got {k!r}")
        for p in ps:
            if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
                raise InputError(f"top_p must be a number in (0, 1] (or None for no limit), got {p!r}")
        if seed is None:
            seeds = [int.from_bytes(os.urandom(8), "little") & MAX_SEED for _ in range(n)]
        elif _is_sequence(seed):
            seeds = [_check_seed(s) for s in _per_sample("seed", seed, n)]
        else:
            seeds = [sample_seed(_check_seed(seed), i) for i in range(n)]
        return cls(temperature=torch.tensor(temps, dtype=torch.float32),
                   top_k=torch.tensor([k or 0 for k in ks], dtype=torch.long),
                   top_p=torch.tensor([1.0 if p is None else p for p in ps], dtype=torch.float32),
                   seeds=seeds)

    def classes(self, n_classes: int) -> torch.Tensor:
        """(n,) a class per sample, drawn uniformly from a stream of its seed apart from its codes' stream."""
        return torch.tensor([int(torch.randint(n_classes, (1,), generator=torch.Generator().manual_seed(
            sample_seed(s, -1)))) for s in self.seeds])

    def uniforms(self, steps: int) -> torch.Tensor:
        """(n, steps) uniform numbers in [0, 1), each row from its sample's own generator."""
        rows = [torch.rand(steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                for s in self.seeds]
        return torch.stack(rows)


def filter_logits(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Logits (B, K) with the tokens outside each row's top-k, then outside its top-p nucleus, set to -inf.

    top-p keeps the smallest set of most likely tokens whose probability (after top-k) reaches top_p.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)
    limit = torch.where(top_k > 0, top_k, logits.shape[-1]).to(logits.device)
    removed = ranks[None, :] >= limit[:, None]
    probs = F.softmax(sorted_logits.masked_fill(removed, float("-inf")), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    removed |= mass_before >= top_p.to(logits.device)[:, None]
    removed[:, 0] = False  # the most likely token always stays
    return logits.scatter(-1, order, sorted_logits.masked_fill(removed, float("-inf")))


def draw(logits: torch.Tensor, controls: SamplingControls, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row of logits (B, K), by inverse CDF at each row's uniform number (B,)."""
    logits = logits.float() / controls.temperature.to(logits.device)[:, None]
    if bool((controls.top_k > 0).any()) or bool((controls.top_p < 1).any()):
        logits = filter_logits(logits, controls.top_k, controls.top_p)
    cdf = F.softmax(logits, dim=-1, dtype=torch.float64).cumsum(dim=-1)
    target = uniforms.to(cdf.device)[:, None] * cdf[:, -1:]
    picks = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return picks.clamp_(max=logits.shape[-1] - 1)


def _attend(q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one query per head: q (B, H, 1, d) over keys k_t (B, H, d, L) and values v (B, H, L, d_v).

    Plain matmuls: for a single query they beat torch's fused CPU kernel many times over. Keys are kept
    transposed so that both products stream their operand row by row.
    """
    scores = torch.matmul(q, k_t).mul_(1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)


class _StepLinear:
    """nn.Linear layers (several fused along the output) for one token per sample: y = x @ W^T + b.

    W^T is kept contiguous: a single row streams that layout about 1.4x faster than the (out, in) layout
    of nn.Linear on CPU, and decoding one token at a time is bound by reading the weights.
    """

    def __init__(self, *linears: torch.nn.Linear):
        self.weight_t = torch.cat([lin.weight for lin in linears]).t().contiguous()
        biases = [lin.bias for lin in linears]
        self.bias = torch.cat(biases) if all(b is not None for b in biases) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight_t if self.bias is None else torch.addmm(self.bias, x, self.weight_t)


def _step_weights(layer: torch.nn.Module) -> dict:
    attn = layer.attn
    weights = {
        "qkv": _StepLinear(attn.w_qs, attn.w_ks, attn.w_vs),
        "qkv_sizes": [attn.w_qs.out_features, attn.w_ks.out_features, attn.w_vs.out_features],
        "attn_out": _StepLinear(attn.fc),
        "mlp_in": _StepLinear(layer.fc_block[0]),
        "mlp_out": _StepLinear(layer.fc_block[2]),
    }
    if hasattr(layer, "enc_attn"):
        weights["cross_q"] = _StepLinear(layer.enc_attn.w_qs)
        weights["cross_out"] = _StepLinear(layer.enc_attn.fc)
    return weights


class CachedDecoder:
    """Runs the prior one raster position at a time over a preallocated KV cache.

    `step` (the CPU path) reads only the cache entries a position may see. `step_static` attends over the
    whole cache under a mask row instead, so every step has the same shapes and addresses: the form a CUDA
    graph can capture and replay (see `graph_step`).
    """

    def __init__(self, gpt: VideoGPT, cond: Conditioning, batch: int):
        self.gpt = gpt
        c = gpt.config
        self.layers = gpt.attn_stack.attn_nets
        self.seq_len = math.prod(gpt.latent_shape)
        weight = gpt.fc_in.weight
        self.dtype, self.device = weight.dtype, weight.device
        attn = self.layers[0].attn
        per_layer = (len(self.layers), batch, c.heads)
        # (layer, B, H, d_k, N) keys, transposed; (layer, B, H, N, d_v) values.
        self.keys = torch.zeros(*per_layer, attn.d_k, self.seq_len, dtype=self.dtype, device=self.device)
        self.values = torch.zeros(*per_layer, self.seq_len, attn.d_v, dtype=self.dtype, device=self.device)
        # Computed once per batch rather than every step: code -> input feature, the position table, the
        # class-conditional gains and biases, and the frame encoding's keys and values in every layer.
        self.token_features = gpt.fc_in(gpt.vqvae.codebook.embeddings.to(self.dtype))
        self.positions = gpt.attn_stack.pos_embd.table().flatten(0, -2)
        self.sos = gpt.attn_stack.right_shift.sos.to(self.dtype)
        norm_inputs = (cond.class_onehot, cond.frames_summary)
        self.norms = [
            {name: getattr(layer, name).gain_bias(*norm_inputs, ndim=2)
             for name in ("pre_attn_norm", "pre_enc_norm", "pre_fc_norm") if hasattr(layer, name)}
            for layer in self.layers]
        self.final_norm = gpt.norm.gain_bias(*norm_inputs, ndim=2)
        self.cross = None
        self.cond = cond
        if cond.frames is not None:
            self.cross = [(k.transpose(-1, -2).contiguous(), v)
                          for k, v in (layer.enc_attn.keys_values(cond.frames) for layer in self.layers)]
        self.heads = c.heads
        self.weights = [_step_weights(layer) for layer in self.layers]
        self.logits_out = _StepLinear(gpt.fc_out)
        self.block_reads = None
        if c.attn_type == "sparse":
            self.block = c.sparse_block_size
            layout = sparse_block_layout(gpt.latent_shape, self.block, c.sparse_local_blocks)
            self.block_reads = [row.nonzero().flatten().to(self.device) for row in layout]
        self._read_mask: torch.Tensor | None = None

    def _readable(self, cache: torch.Tensor, pos: int, axis: int) -> torch.Tensor:
        """The entries of cache (positions along `axis`) that position pos may read, in position order."""
        if self.block_reads is None:
            return cache.narrow(axis, 0, pos + 1)
        blocks = self.block_reads[pos // self.block]
        axis = axis % cache.dim()
        split = cache.unflatten(axis, (-1, self.block))
        gathered = split.index_select(axis, blocks).flatten(axis, axis + 1)
        # The current block comes last; its positions after pos are not written yet.
        return gathered.narrow(axis, 0, gathered.shape[axis] - (self.block - 1 - pos % self.block))

    def _layers(self, x: torch.Tensor, attend_self: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor],
                                                                 torch.Tensor]) -> torch.Tensor:
        """The transformer over one position x (B, D); attend_self(layer, q, k, v) does the cache part.

        q, k, v are (B, H, 1, d); attend_self returns (B, H, 1, d_v).
        """
        batch = x.shape[0]
        for i, layer in enumerate(self.layers):
            norms, w = self.norms[i], self.weights[i]
            h = LayerNorm.normalize(x, *norms["pre_attn_norm"])
            q, k, v = w["qkv"](h).split(w["qkv_sizes"], dim=-1)
            heads = attend_self(i, *(t.view(batch, self.heads, 1, -1) for t in (q, k, v)))
            x = x + w["attn_out"](heads.reshape(batch, -1))
            if self.cross is not None:
                h = LayerNorm.normalize(x, *norms["pre_enc_norm"])
                q = w["cross_q"](h).view(batch, self.heads, 1, -1)
                x = x + self.cond.gate_frames(w["cross_out"](_attend(q, *self.cross[i]).reshape(batch, -1)))
            h = LayerNorm.normalize(x, *norms["pre_fc_norm"])
            x = x + w["mlp_out"](layer.fc_block[1](w["mlp_in"](h)))
        return self.logits_out(LayerNorm.normalize(x, *self.final_norm))

    @torch.no_grad()
    def step(self, pos: int, previous: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, n_codes) at raster position pos, given the codes (B,) at pos - 1 (None at 0)."""
        batch = self.keys.shape[1]
        x = self.sos.expand(batch, -1) if previous is None else self.token_features[previous]
        x = x + self.positions[pos]
        if self.cond.frames_aligned is not None:
            x = x + self.cond.frames_aligned[:, pos]

        def attend_self(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.keys[i, :, :, :, pos] = k[:, :, 0]
            self.values[i, :, :, pos] = v[:, :, 0]
            return _attend(q, self._readable(self.keys[i], pos, -1), self._readable(self.values[i], pos, -2))

        return self._layers(x, attend_self)

    @torch.no_grad()
    def step_static(self, pos: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """`step` with fixed shapes: pos a (1,) long tensor, previous (B,) codes (ignored at position 0)."""
        if self._read_mask is None:
            c = self.gpt.config
            self._read_mask = causal_mask(self.gpt.latent_shape, c.attn_type, c.sparse_block_size,
                                          c.sparse_local_blocks).to(self.device)
        x = torch.where(pos == 0, self.sos, self.token_features[previous]) + self.positions.index_select(0, pos)
        if self.cond.frames_aligned is not None:
            x = x + self.cond.frames_aligned.index_select(1, pos)[:, 0]
        mask = self._read_mask.index_select(0, pos)  # (1, N): what pos may read

        def attend_self(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.keys[i].index_copy_(3, pos, k.transpose(-1, -2))
            self.values[i].index_copy_(2, pos, v)
            return _attend(q, self.keys[i], self.values[i], mask)

        return self._layers(x, attend_self)

    def graph_step(self) -> Callable[[int, torch.Tensor | None], torch.Tensor]:
        """A CUDA-graph replay of `step_static` with the signature of `step` (CUDA only)."""
        pos = torch.zeros(1, dtype=torch.long, device=self.device)
        previous = torch.zeros(self.keys.shape[1], dtype=torch.long, device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph, as capture requires
            for _ in range(2):
                self.step_static(pos, previous)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self.step_static(pos, previous)

        def replay(step_pos: int, step_previous: torch.Tensor | None) -> torch.Tensor:
            pos.fill_(step_pos)
            if step_previous is not None:
                previous.copy_(step_previous)
            graph.replay()
            return logits

        return replay


def _as_batch_tensor(value: object, device: torch.device) -> torch.Tensor | None:
    if value is None:
        return None
    return torch.as_tensor(value, device=device)


def guidance_scales(gpt: VideoGPT, guidance: object, n: int) -> torch.Tensor | None:
    """The (n,) guidance scales on the model's device, or None when no sample is guided."""
    values = [1.0 if g is None else g for g in _per_sample("guidance", guidance, n)]
    for g in values:
        if not is_guidance_scale(g):
            raise InputError(f"guidance must be a number in [0, {MAX_GUIDANCE}] (1: no guidance), got {g!r}")
    if all(g == 1 for g in values):
        return None
    if not gpt.config.conditions_optional:
        raise InputError("guidance needs a prior trained with condition dropout (conditions_optional); "
                         "this one always needs its conditions: leave guidance at 1")
    return torch.tensor(values, dtype=torch.float32, device=gpt.fc_in.weight.device)


@torch.no_grad()
def _class_guide_step(gpt: VideoGPT, n: int, cond_frames: torch.Tensor | None, present: torch.Tensor | None,
                      class_guidance: object, cuda_graph: bool) -> tuple[Callable, torch.Tensor] | None:
    """The class guide's decoding step (rows: recognised class, then no class) and per-sample scales (zero
    for samples without frames), or None when no sample is class-guided."""
    guide: ClassGuide | None = getattr(gpt, "class_guide", None)
    if class_guidance is not None:
        if guide is None:
            raise InputError("class_guidance needs a frames prior with a class guide (set-class-guide)")
        if not is_guidance_scale(class_guidance):
            raise InputError(f"class_guidance must be a number in [0, {MAX_GUIDANCE}] (0: off), "
                             f"got {class_guidance!r}")
    if guide is None or cond_frames is None:
        return None
    scale = guide.scale if class_guidance is None else float(class_guidance)
    has_frames = torch.ones(n, dtype=torch.bool, device=cond_frames.device) if present is None else present.bool()
    if scale == 0 or not has_frames.any():
        return None
    labels = torch.where(has_frames, guide.classes(cond_frames), -1)
    cond = guide.prior.condition(torch.cat([labels, torch.full_like(labels, -1)]), None, 2 * n)
    decoder = CachedDecoder(guide.prior, cond, 2 * n)
    return (decoder.graph_step() if cuda_graph else decoder.step), scale * has_frames.float()


def sample(gpt: VideoGPT, n: int, *, class_labels: object = None, cond_frames: torch.Tensor | None = None,
           frames_present: object = None, temperature: object = 1.0, top_k: object = None,
           top_p: object = None, seed: object = None, guidance: object = None, class_guidance: object = None,
           progress: Callable[[int, int], None] | None = None,
           should_stop: Callable[[], bool] | None = None, cuda_graph: bool | None = None) -> torch.Tensor:
    """Sample n code grids (n, t, h, w); `gpt.vqvae.decode` turns them into video.

    temperature, top_k, top_p and seed are one value for all samples or a sequence of n (one per sample,
    as when the worker batches several requests). An int seed gives sample i the seed `sample_seed(seed, i)`;
    a sequence gives each sample its own. progress(done, total) is called at most every 0.2 s and at the end;
    should_stop() is polled about every 50 ms, and SamplingCancelled is raised when it answers True.
    With a prior trained with condition dropout, label -1 is "no class" and frames_present (n bools) says
    which samples of cond_frames have frames: one batch can mix modes. A bundle whose `unconditional` is
    "classes" gives each sample without a class one drawn uniformly from its seed instead.
    guidance (one scale or n; None or 1 = off) is classifier-free guidance for such a prior: each step's
    logits become u + s * (c - u), c with the sample's conditions and u with them dropped, so the codes
    follow the class or frames more closely; guided samples cost a second row in the batch.
    A frames prior with a class guide (`gpt.class_guide`) also follows its class prior toward the class
    recognised in each sample's first frame; class_guidance (None: the guide's own scale; 0: off) sets how
    strongly. It runs the class prior beside the frames prior, two rows per sample.
    On CUDA the decode step is captured once as a CUDA graph and replayed (cuda_graph=False turns it off);
    the model's dtype (cast it with `gpt.to(torch.bfloat16)`) is the sampler's.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be an integer >= 1, got {n!r}")
    controls = SamplingControls.build(n, temperature, top_k, top_p, seed)
    scales = guidance_scales(gpt, guidance, n)
    device = gpt.fc_in.weight.device
    cond_frames = None if cond_frames is None else cond_frames.to(device)
    present = _as_batch_tensor(frames_present, device)
    labels = _as_batch_tensor(class_labels, device)
    info = getattr(gpt, "info", None)
    if info is not None and info.unconditional == "classes":  # no class: draw one (see BundleInfo)
        drawn = controls.classes(gpt.config.class_cond_dim).to(device)
        labels = drawn if labels is None else torch.where(labels == -1, drawn, labels)
    cond = gpt.condition(labels, cond_frames, n, present)
    if cuda_graph is None:
        cuda_graph = device.type == "cuda"
    class_guided = _class_guide_step(gpt, n, cond_frames, present, class_guidance, cuda_graph)
    guided = scales is not None
    if guided:  # rows n..2n-1: the same samples with every condition dropped
        cond = cond.with_dropped_copy()
    rows = 2 * n if guided else n
    decoder = CachedDecoder(gpt, cond, rows)
    step = decoder.graph_step() if cuda_graph else decoder.step
    total = decoder.seq_len
    uniforms = controls.uniforms(total)
    codes = torch.zeros(n, total, dtype=torch.long, device=device)
    previous = None
    last_progress = last_poll = time.monotonic()
    for pos in range(total):
        if should_stop is not None and time.monotonic() - last_poll >= STOP_POLL_INTERVAL_S:
            last_poll = time.monotonic()
            if should_stop():
                raise SamplingCancelled(pos, total)
        if guided:
            logits = step(pos, None if previous is None else previous.repeat(2))
            conditioned, unconditioned = logits[:n], logits[n:]
            logits = torch.where(scales[:, None] == 1, conditioned,
                                 torch.lerp(unconditioned.float(), conditioned.float(), scales[:, None]))
        else:
            logits = step(pos, previous)
        if class_guided is not None:
            guide_step, guide_scales = class_guided
            guide_logits = guide_step(pos, None if previous is None else previous.repeat(2)).float()
            logits = logits.float() + guide_scales[:, None] * (guide_logits[:n] - guide_logits[n:])
        previous = draw(logits, controls, uniforms[:, pos])
        codes[:, pos] = previous
        if progress is not None and time.monotonic() - last_progress >= PROGRESS_INTERVAL_S:
            last_progress = time.monotonic()
            progress(pos + 1, total)
    if progress is not None:
        progress(total, total)
    return codes.view(n, *gpt.latent_shape)
