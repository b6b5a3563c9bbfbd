"""The VideoGPT prior: a GPT over the VQ-VAE's codes with spatio-temporal position embeddings.

Optional conditioning: a class (conditional layer norms) and/or the first frames of a video (a 3D ResNet
encodes them; every layer cross-attends to that encoding). A model trained with condition dropout also
generates without them: class label -1 (or no labels) is "no class", a zero one-hot that leaves the layer
norms plain; absent frames skip the cross-attention branch. One such prior serves every mode.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, InputError
from .layers import AddBroadcastPosEmbed, GeLU2, LayerNorm, MultiHeadAttention
from .layout import causal_mask, sparse_block_grid
from .resnet import FrameEncoder
from .settings import Settings, require_int
from .vqvae import VQVAE, VQVAEConfig

ATTN_TYPES = ("full", "sparse")
# The frame encoder halves the conditioning frames' height and width twice (the reference's R/4 grid).
FRAME_ENCODER_STRIDE = (1, 4, 4)
ALIGNED_STEPS = ("all", "given")


@dataclass(frozen=True)
class GPTConfig(Settings):
    """Every setting of the prior (its VQ-VAE has its own VQVAEConfig); defaults are the official ones."""

    hidden_dim: int = 576
    heads: int = 4
    layers: int = 8
    dropout: float = 0.2
    attn_dropout: float = 0.3
    attn_type: str = "sparse"
    class_cond_dim: int | None = None
    n_cond_frames: int = 0
    resnet_widths: tuple[int, int, int] = (64, 128, 256)
    resnet_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    resnet_dim: int = 240
    sparse_block_size: int = 32
    sparse_local_blocks: int = 4
    # Training-time probability of dropping each condition of a sample; > 0 makes the conditions optional.
    condition_dropout: float = 0.0
    # Also add the frame encoding, pooled to the latent (h, w) grid, to the input of every code at the same
    # (h, w) (not in the reference): a code sees what the given frame holds at its place without first
    # learning to find it by cross-attention, which a small prior trained briefly barely does.
    aligned_frames: bool = False
    # Which latent time steps get the aligned frames: "all" holds the frames' content in place for the whole
    # video; "given" only the steps the given frames fall in (ceil(n_cond_frames / time downsample)), so
    # later steps are not pulled back to where things were once they have moved.
    aligned_steps: str = "all"
    # Also give every layer norm a position-free summary of the given frames, their encoding's mean and
    # maximum over space (not in the reference), the way class conditioning gives them the class: what
    # the frame shows (for moving digits: which digit, what colour) reaches every code wherever the
    # content has moved to, without cross-attention having to find it.
    global_frames: bool = False

    LATER_SETTINGS: ClassVar[tuple[str, ...]] = ("aligned_frames", "aligned_steps", "global_frames")

    def __post_init__(self) -> None:
        object.__setattr__(self, "resnet_widths", tuple(self.resnet_widths))
        object.__setattr__(self, "resnet_blocks", tuple(self.resnet_blocks))
        for name in ("hidden_dim", "heads", "layers", "resnet_dim", "sparse_block_size", "sparse_local_blocks"):
            require_int(name, getattr(self, name), 1)
        require_int("n_cond_frames", self.n_cond_frames, 0)
        if self.hidden_dim % 3:
            raise ConfigError(f"hidden_dim {self.hidden_dim} must be divisible by 3: the position embedding "
                              "gives a third of it to each of the t, h and w axes")
        if self.hidden_dim % self.heads:
            raise ConfigError(f"hidden_dim {self.hidden_dim} must be divisible by heads {self.heads}")
        if self.attn_type not in ATTN_TYPES:
            raise ConfigError(f"attn_type must be one of {', '.join(ATTN_TYPES)}, got {self.attn_type!r}")
        for name in ("dropout", "attn_dropout", "condition_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
        if self.class_cond_dim is not None:
            require_int("class_cond_dim", self.class_cond_dim, 1)
        if len(self.resnet_widths) != 3:
            raise ConfigError(f"resnet_widths must have 3 entries, got {list(self.resnet_widths)}")
        if len(self.resnet_blocks) != 4:
            raise ConfigError(f"resnet_blocks must have 4 entries, got {list(self.resnet_blocks)}")
        for name, values in (("resnet_widths", self.resnet_widths), ("resnet_blocks", self.resnet_blocks)):
            for v in values:
                require_int(name, v, 1)
        if self.resnet_dim % 3:
            raise ConfigError(f"resnet_dim {self.resnet_dim} must be divisible by 3 (frame position embedding)")
        for name in ("aligned_frames", "global_frames"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
            if getattr(self, name) and not self.frame_conditional:
                raise ConfigError(f"{name} needs frame conditioning: set n_cond_frames >= 1")
        if self.aligned_steps not in ALIGNED_STEPS:
            raise ConfigError(f"aligned_steps must be one of {', '.join(ALIGNED_STEPS)}, got {self.aligned_steps!r}")
        if self.aligned_steps != "all" and not self.aligned_frames:
            raise ConfigError(f"aligned_steps {self.aligned_steps!r} needs aligned_frames")
        if self.condition_dropout and not (self.class_conditional or self.frame_conditional):
            raise ConfigError("condition_dropout needs a condition to drop: set class_cond_dim or n_cond_frames")

    @property
    def conditions_optional(self) -> bool:
        """Whether the model was trained to generate with any of its conditions left out."""
        return self.condition_dropout > 0

    @property
    def modes(self) -> list[str]:
        """The generation modes this prior serves: unconditional, class, frames."""
        if not (self.class_conditional or self.frame_conditional):
            return ["unconditional"]
        modes = ["unconditional"] if self.conditions_optional else []
        if self.class_conditional:
            modes.append("class")
        if self.frame_conditional:
            modes.append("frames")
        return modes

    @property
    def summary_dim(self) -> int | None:
        """The size of the frame summary the layer norms read (global_frames), else None."""
        return 2 * self.n_cond_frames * self.resnet_dim if self.global_frames else None

    @property
    def frame_conditional(self) -> bool:
        return self.n_cond_frames > 0

    @property
    def class_conditional(self) -> bool:
        return self.class_cond_dim is not None

    def check_against(self, vq: VQVAEConfig) -> None:
        """Raise ConfigError where this prior cannot sit on a VQ-VAE of config vq."""
        if self.n_cond_frames > vq.sequence_length:
            raise ConfigError(f"n_cond_frames {self.n_cond_frames} exceeds the video length {vq.sequence_length}")
        if self.frame_conditional and vq.resolution % FRAME_ENCODER_STRIDE[1]:
            raise ConfigError(f"frame conditioning needs a resolution divisible by {FRAME_ENCODER_STRIDE[1]}, "
                              f"got {vq.resolution}")
        if self.attn_type == "sparse":
            seq_len = math.prod(vq.latent_shape)
            if seq_len % self.sparse_block_size:
                raise ConfigError(f"sparse attention needs the latent size {seq_len} "
                                  f"({'x'.join(map(str, vq.latent_shape))}) to be divisible by the block size "
                                  f"{self.sparse_block_size}")
            sparse_block_grid(vq.latent_shape, self.sparse_block_size)



class RightShift(nn.Module):
    """Prepends the learned `sos` vector and drops the last position: position i sees codes before i."""

    def __init__(self, dim: int):
        super().__init__()
        self.sos = nn.Parameter(torch.randn(dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sos = self.sos.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([sos, x[:, :-1]], dim=1)


class AttentionBlock(nn.Module):
    """Pre-norm transformer layer: causal self-attention, optional frame cross-attention, MLP.

    Its arithmetic is written once, here; what a pass reads besides x (the conditioning, and how the
    self-attention sees the other positions: the whole sequence in teacher forcing, a KV cache when
    decoding) comes from `ctx` (SequenceContext below, or models.decoding.DecodeContext).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        c = config
        self.attn_dropout = c.attn_dropout if c.attn_type == "full" else 0.0  # the sparse kernels have none
        self.pre_attn_norm = LayerNorm(c.hidden_dim, c.class_cond_dim, c.summary_dim)
        self.post_attn_dp = nn.Dropout(c.dropout)
        self.attn = MultiHeadAttention(c.hidden_dim, c.hidden_dim, c.heads, c.layers)
        if c.frame_conditional:
            self.pre_enc_norm = LayerNorm(c.hidden_dim, c.class_cond_dim, c.summary_dim)
            self.post_enc_dp = nn.Dropout(c.dropout)
            self.enc_attn = MultiHeadAttention(c.hidden_dim, c.resnet_dim, c.heads, c.layers)
        self.pre_fc_norm = LayerNorm(c.hidden_dim, c.class_cond_dim, c.summary_dim)
        self.post_fc_dp = nn.Dropout(c.dropout)
        self.fc_block = nn.Sequential(nn.Linear(c.hidden_dim, 4 * c.hidden_dim), GeLU2(),
                                      nn.Linear(4 * c.hidden_dim, c.hidden_dim))

    def forward(self, x: torch.Tensor, ctx: SequenceContext, index: int) -> torch.Tensor:
        """x (B, L, D): the L positions this pass computes; index: this layer's place in the stack."""
        h = ctx.normalize(self.pre_attn_norm, x, index)
        q, k, v = self.attn.project(h)
        dropout = self.attn_dropout if self.training else 0.0
        x = x + self.post_attn_dp(self.attn.combine(ctx.self_attention(index, q, k, v, dropout)))
        if ctx.reads_frames:
            x = self.read_frames(x, ctx, index)
        h = ctx.normalize(self.pre_fc_norm, x, index)
        return x + self.post_fc_dp(self.fc_block(h))

    def read_frames(self, x: torch.Tensor, ctx: SequenceContext, index: int) -> torch.Tensor:
        """x after the frame cross-attention and its residual (a frames prior's layer, between its
        self-attention and its MLP)."""
        h = ctx.normalize(self.pre_enc_norm, x, index)
        heads = ctx.cross_attention(index, self.enc_attn.queries(h), self.enc_attn)
        return x + ctx.gate_frames(self.post_enc_dp(self.enc_attn.combine(heads)))


class SequenceContext:
    """Teacher forcing: every position of the sequences at once, each reading the positions before it
    (the causal or sparse mask; None: plain causal), the conditioning as the batch's Conditioning."""

    def __init__(self, cond: Conditioning, mask: torch.Tensor | None):
        self.cond, self.mask = cond, mask

    @property
    def reads_frames(self) -> bool:
        return self.cond.frames is not None

    def normalize(self, norm: LayerNorm, x: torch.Tensor, index: int | None = None) -> torch.Tensor:
        return norm(x, self.cond.class_onehot, self.cond.frames_summary)

    def self_attention(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       dropout: float = 0.0) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.mask is None,
                                              dropout_p=dropout)

    def cross_attention(self, index: int, q: torch.Tensor, attn: MultiHeadAttention) -> torch.Tensor:
        k, v = attn.keys_values(self.cond.frames)
        return F.scaled_dot_product_attention(q, k, v)

    def gate_frames(self, branch: torch.Tensor) -> torch.Tensor:
        return self.cond.gate_frames(branch)


class AttentionStack(nn.Module):
    def __init__(self, config: GPTConfig, latent_shape: tuple[int, int, int]):
        super().__init__()
        self.right_shift = RightShift(config.hidden_dim)
        self.pos_embd = AddBroadcastPosEmbed(latent_shape, config.hidden_dim)
        self.attn_nets = nn.ModuleList(AttentionBlock(config) for _ in range(config.layers))


@dataclass
class Conditioning:
    """What every layer reads besides the codes: one-hot classes (B, C) and the frame encoding (B, L, 240).

    frames_present (B, 1, 1), when set, is 1 for the samples that have frames and 0 for those that do not
    (their cross-attention branch is zeroed); None means every sample has them. frames_aligned (B, N, D),
    for priors with aligned_frames, is added to the input at each of the N positions (zero without frames);
    frames_summary (B, S), for priors with global_frames, goes to every layer norm (zero without frames).
    """

    class_onehot: torch.Tensor | None = None
    frames: torch.Tensor | None = None
    frames_present: torch.Tensor | None = None
    frames_aligned: torch.Tensor | None = None
    frames_summary: torch.Tensor | None = None

    def gate_frames(self, branch: torch.Tensor) -> torch.Tensor:
        """The cross-attention branch (B, ..., D) with the samples that have no frames zeroed."""
        if self.frames_present is None:
            return branch
        return branch * self.frames_present.view(-1, *(1,) * (branch.dim() - 1)).to(branch.dtype)

    def to(self, dtype: torch.dtype) -> Conditioning:
        """The floating-point tensors cast to dtype (frames_present stays bool)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Conditioning(**{name: value if value is None or not value.is_floating_point() else value.to(dtype)
                               for name, value in values.items()})

    def row(self, i: int) -> Conditioning:
        """The conditioning of sample i alone (a batch of one)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        one = Conditioning(**{name: None if value is None else value[i:i + 1] for name, value in values.items()})
        if one.frames_present is not None and bool(one.frames_present.all()):
            one.frames_present = None
        return one

    def with_dropped_copy(self) -> Conditioning:
        """Conditioning of 2B rows: these B samples, then the same B with every condition dropped (an all-zero
        class one-hot, frames gated off), as classifier-free guidance reads them; nothing is recomputed."""
        dropped = Conditioning()
        if self.class_onehot is not None:
            dropped.class_onehot = torch.cat([self.class_onehot, torch.zeros_like(self.class_onehot)])
        if self.frames is not None:
            batch = self.frames.shape[0]
            given = (torch.ones(batch, dtype=torch.bool, device=self.frames.device) if self.frames_present is None
                     else self.frames_present.bool())
            dropped.frames = torch.cat([self.frames, self.frames])
            dropped.frames_present = torch.cat([given, torch.zeros_like(given)])
            if self.frames_aligned is not None:
                dropped.frames_aligned = torch.cat([self.frames_aligned, torch.zeros_like(self.frames_aligned)])
            if self.frames_summary is not None:
                dropped.frames_summary = torch.cat([self.frames_summary, torch.zeros_like(self.frames_summary)])
        return dropped


class VideoGPT(nn.Module):
    """The prior over a frozen VQ-VAE's codes; `logits` is the teacher-forced forward pass."""

    def __init__(self, config: GPTConfig, vqvae: VQVAE):
        super().__init__()
        config.check_against(vqvae.config)
        self.config = config
        self.vqvae = vqvae
        for p in self.vqvae.parameters():
            p.requires_grad_(False)
        c, vq = config, vqvae.config
        if c.frame_conditional:
            self.resnet = FrameEncoder(c.resnet_widths, c.resnet_blocks, c.resnet_dim, FRAME_ENCODER_STRIDE)
            grid = (c.n_cond_frames, *(vq.resolution // s for s in FRAME_ENCODER_STRIDE[1:]))
            self.cond_pos_embd = AddBroadcastPosEmbed(grid, c.resnet_dim)
        if c.aligned_frames:
            self.frames_in = nn.Linear(c.n_cond_frames * c.resnet_dim, c.hidden_dim)
            nn.init.zeros_(self.frames_in.weight)  # starts as the plain prior
            nn.init.zeros_(self.frames_in.bias)
        self.fc_in = nn.Linear(vq.embedding_dim, c.hidden_dim, bias=False)
        nn.init.normal_(self.fc_in.weight, std=0.02)
        self.attn_stack = AttentionStack(c, vq.latent_shape)
        self.norm = LayerNorm(c.hidden_dim, c.class_cond_dim, c.summary_dim)
        self.fc_out = nn.Linear(c.hidden_dim, vq.n_codes, bias=False)
        nn.init.zeros_(self.fc_out.weight)
        # Derived from the config, never saved: the official full-attention checkpoints' 512 MB of
        # causal masks are exactly what this recomputes.
        mask = None if c.attn_type == "full" else causal_mask(
            vq.latent_shape, c.attn_type, c.sparse_block_size, c.sparse_local_blocks)
        self.register_buffer("attn_mask", mask, persistent=False)
        # A sampling.ClassGuide when the bundle has one (models.bundle.set_class_guide), else None.
        self.class_guide = None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.vqvae.latent_shape

    @property
    def n_codes(self) -> int:
        return self.vqvae.n_codes

    def train(self, mode: bool = True) -> VideoGPT:
        super().train(mode)
        self.vqvae.eval()  # the VQ-VAE is frozen: its batch norms keep their running statistics
        return self

    def condition(self, class_labels: torch.Tensor | None, cond_frames: torch.Tensor | None,
                  batch: int, frames_present: torch.Tensor | None = None) -> Conditioning:
        """Validate the conditioning inputs for a batch of `batch` and turn them into what layers read.

        With optional conditions (condition_dropout > 0), class label -1 and class_labels=None mean "no
        class", cond_frames=None means no frames, and frames_present (B,) bools pick the samples of
        cond_frames that have frames (the others' frames are ignored).
        """
        c = self.config
        cond = Conditioning()
        if c.class_conditional:
            cond.class_onehot = self._class_onehot(class_labels, batch)
        elif class_labels is not None:
            raise InputError("this model is not class-conditional: pass class_labels=None")
        if c.frame_conditional:
            cond.frames, cond.frames_present, cond.frames_aligned, cond.frames_summary = self._frame_encoding(
                cond_frames, frames_present, batch)
        elif cond_frames is not None or frames_present is not None:
            raise InputError("this model is not frame-conditional: pass cond_frames=None")
        return cond

    def _class_onehot(self, class_labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        c = self.config
        device, dtype = self.fc_in.weight.device, self.fc_in.weight.dtype
        lowest = -1 if c.conditions_optional else 0
        if class_labels is None:
            if not c.conditions_optional:
                raise InputError("this model is class-conditional: class_labels (B,) with values "
                                 f"0..{c.class_cond_dim - 1} are required")
            return torch.zeros(batch, c.class_cond_dim, dtype=dtype, device=device)
        labels = torch.as_tensor(class_labels, device=device)
        if labels.is_floating_point() or labels.dtype == torch.bool or tuple(labels.shape) != (batch,):
            raise InputError(f"class_labels must be integers of shape ({batch},), "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        bad = labels[(labels < lowest) | (labels >= c.class_cond_dim)]
        if bad.numel():
            raise InputError(f"class label {int(bad[0])} is out of range: "
                             f"this model has classes 0-{c.class_cond_dim - 1}"
                             + (" (-1: no class)" if lowest < 0 else ""))
        labels = labels.long()
        onehot = F.one_hot(labels.clamp_min(0), c.class_cond_dim) * (labels >= 0).unsqueeze(1)
        return onehot.to(dtype)

    def _frame_encoding(self, cond_frames: torch.Tensor | None, frames_present: torch.Tensor | None,
                        batch: int) -> tuple[torch.Tensor | None, ...]:
        """(cross-attention features, frames_present, aligned features, summary): Conditioning's fields."""
        c, vq = self.config, self.vqvae.config
        expected = (batch, 3, c.n_cond_frames, vq.resolution, vq.resolution)
        if cond_frames is None:
            if not c.conditions_optional:
                raise InputError(f"this model is frame-conditional: cond_frames of shape {expected} are required")
            if frames_present is not None and bool(torch.as_tensor(frames_present).any()):
                raise InputError("frames_present marks samples with frames, but cond_frames is None")
            return None, None, None, None
        if not isinstance(cond_frames, torch.Tensor) or not cond_frames.is_floating_point() \
                or tuple(cond_frames.shape) != expected:
            got = tuple(cond_frames.shape) if isinstance(cond_frames, torch.Tensor) else type(cond_frames).__name__
            raise InputError(f"cond_frames must be a float tensor of shape {expected} with values in "
                             f"[-0.5, 0.5], got {got}")
        present = None
        if frames_present is not None:
            if not c.conditions_optional:
                raise InputError("frames_present needs a model trained with condition dropout")
            present = torch.as_tensor(frames_present, device=cond_frames.device)
            if present.dtype != torch.bool or tuple(present.shape) != (batch,):
                raise InputError(f"frames_present must be bools of shape ({batch},), "
                                 f"got {present.dtype} {tuple(present.shape)}")
            present = None if bool(present.all()) else present
        dtype = self.fc_in.weight.dtype
        features = self.resnet(cond_frames.to(device=self.fc_in.weight.device, dtype=dtype))
        aligned = self._aligned_frames(features, present) if c.aligned_frames else None
        summary = self._frames_summary(features, present) if c.global_frames else None
        return self.cond_pos_embd(features).flatten(1, -2), present, aligned, summary

    @staticmethod
    def _frames_summary(features: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """Frame features (B, n, R/4, R/4, C) -> (B, 2*n*C): each frame's mean and maximum over space."""
        spatial = features.flatten(2, 3)  # (B, n, S, C)
        summary = torch.cat([spatial.mean(dim=2), spatial.amax(dim=2)], dim=-1).flatten(1)
        if present is not None:
            summary = summary * present.view(-1, 1).to(summary.dtype)
        return summary

    def _aligned_frames(self, features: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """Frame features (B, n, R/4, R/4, C) -> (B, t*h*w, D): pooled to the latent grid, the same at every
        aligned time step (all, or those the given frames fall in), zero at the others."""
        t, h, w = self.latent_shape
        grid = features.permute(0, 1, 4, 2, 3).flatten(1, 2)  # (B, n*C, R/4, R/4)
        pooled = F.adaptive_avg_pool2d(grid, (h, w)).permute(0, 2, 3, 1)  # (B, h, w, n*C)
        steps = t if self.config.aligned_steps == "all" else \
            min(t, math.ceil(self.config.n_cond_frames / self.vqvae.config.downsample[0]))
        aligned = self.frames_in(pooled).unsqueeze(1).expand(-1, steps, -1, -1, -1)
        aligned = F.pad(aligned, (0, 0, 0, 0, 0, 0, 0, t - steps)).flatten(1, 3)  # zero at later steps
        if present is not None:
            aligned = aligned * present.view(-1, 1, 1).to(aligned.dtype)
        return aligned

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, t, h, w) -> input features (B, N, D) before the right shift."""
        return self.fc_in(F.embedding(codes.flatten(1), self.vqvae.codebook.embeddings).to(self.fc_in.weight.dtype))

    def forward(self, codes: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Teacher-forced logits (B, t, h, w, n_codes) for unvalidated inputs (training)."""
        stack = self.attn_stack
        x = stack.right_shift(self.embed_codes(codes))
        x = x + stack.pos_embd.table().flatten(0, -2)
        if cond.frames_aligned is not None:
            x = x + cond.frames_aligned
        logits = self.trunk(x, SequenceContext(cond, self.attn_mask))
        return logits.view(*codes.shape, -1)

    def trunk(self, x: torch.Tensor, ctx: SequenceContext) -> torch.Tensor:
        """Logits (B, L, n_codes) of the input features x (B, L, D) of L positions: the layers, the final
        norm and the output projection, whatever pass (teacher forcing, prefill, one decoding step)."""
        for index, layer in enumerate(self.attn_stack.attn_nets):
            x = layer(x, ctx, index)
        return self.fc_out(ctx.normalize(self.norm, x, None))

    def training_loss(self, video: torch.Tensor | None, class_labels: torch.Tensor | None = None,
                      codes: torch.Tensor | None = None, cond_frames: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of the codes of video (B, 3, T, H, W), conditioned on its first frames and/or labels;
        or of codes the VQ-VAE made once beforehand (models.data.EncodedVideos), with their cond_frames."""
        c = self.config
        if codes is None:
            with torch.no_grad():
                codes = self.vqvae.encode(video)
            cond_frames = video[:, :, : c.n_cond_frames] if c.frame_conditional else None
        batch = codes.shape[0]
        frames = cond_frames if c.frame_conditional else None
        labels = class_labels if c.class_conditional else None
        present = None
        if self.training and c.conditions_optional:
            # Each condition is dropped independently, so all four combinations are trained.
            if labels is not None:
                labels = labels.masked_fill(torch.rand(batch, device=labels.device) < c.condition_dropout, -1)
            if frames is not None:
                present = torch.rand(batch, device=codes.device) >= c.condition_dropout
        logits = self.forward(codes, self.condition(labels, frames, batch, present))
        return F.cross_entropy(logits.flatten(0, -2), codes.flatten())

    def logits(self, codes: torch.Tensor, class_labels: torch.Tensor | None = None,
               cond_frames: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, t, h, w, n_codes) of codes (B, t, h, w), with the model's layout."""
        self.vqvae.check_codes(codes)
        cond = self.condition(class_labels, cond_frames, codes.shape[0])
        return self.forward(codes.long(), cond)
