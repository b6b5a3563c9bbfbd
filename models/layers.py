"""Building blocks shared by the VQ-VAE, the GPT prior and the frame encoder.

Each module keeps the parameter names of the official VideoGPT code, so that official state dicts load
as they are; the arithmetic follows REFERENCE.md (tests/fixtures/REFERENCE.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(kernel_size: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, ...]:
    """F.pad argument that pads k - s in total per axis, the odd element before (last axis first)."""
    pad: list[int] = []
    for k, s in zip(reversed(kernel_size), reversed(stride)):
        total = k - s
        pad += [total - total // 2, total // 2]
    return tuple(pad)


def _triple(value: int | tuple[int, ...]) -> tuple[int, int, int]:
    return (value,) * 3 if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def halving_strides(factors: tuple[int, ...], stages: int | None = None) -> list[tuple[int, ...]]:
    """Per stage, stride 2 on the axes whose power-of-two factor still has halvings left.

    (2, 4, 4) -> [(2, 2, 2), (1, 2, 2)]; `stages` pads with stride-1 stages (default: as many as needed).
    """
    remaining = [int(math.log2(f)) for f in factors]
    count = max(remaining) if stages is None else stages
    strides = []
    for _ in range(count):
        strides.append(tuple(2 if r > 0 else 1 for r in remaining))
        remaining = [r - 1 for r in remaining]
    return strides


# Padding names of the VQ-VAE config -> F.pad modes. "zeros" is the reference's.
PADDINGS = {"zeros": "constant", "replicate": "replicate"}


class SamePadConv3d(nn.Module):
    """Conv3d whose output size is input size / stride, padded as the reference pads."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int | tuple[int, ...] = 1, bias: bool = True, padding: str = "zeros"):
        super().__init__()
        kernel, strides = _triple(kernel_size), _triple(stride)
        self.pad_input = same_padding(kernel, strides)
        self.pad_mode = PADDINGS[padding]
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=strides, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad_input, mode=self.pad_mode))


class SamePadConvTranspose3d(nn.Module):
    """ConvTranspose3d whose output size is input size * stride, padded as the reference pads."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int | tuple[int, ...] = 1, bias: bool = True):
        super().__init__()
        kernel, strides = _triple(kernel_size), _triple(stride)
        self.pad_input = same_padding(kernel, strides)
        self.convt = nn.ConvTranspose3d(in_channels, out_channels, kernel, stride=strides, bias=bias,
                                        padding=tuple(k - 1 for k in kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convt(F.pad(x, self.pad_input))


class MultiHeadAttention(nn.Module):
    """Multi-head attention over sequences: (B, Lq, dim_q) attends to (B, Lk, dim_kv).

    Head sizes follow the reference: d_k = dim_q // heads for queries and keys, d_v = dim_kv // heads for
    values, so a cross-attention to the 240-wide frame encoding has 240 // heads wide values.
    """

    def __init__(self, dim_q: int, dim_kv: int, n_head: int, n_layer: int = 1):
        super().__init__()
        self.n_head = n_head
        self.d_k = dim_q // n_head
        self.d_v = dim_kv // n_head
        self.w_qs = nn.Linear(dim_q, n_head * self.d_k, bias=False)
        self.w_ks = nn.Linear(dim_kv, n_head * self.d_k, bias=False)
        self.w_vs = nn.Linear(dim_kv, n_head * self.d_v, bias=False)
        self.fc = nn.Linear(n_head * self.d_v, dim_q, bias=True)
        # The reference's initialisation, so that models trained here start where official ones did.
        nn.init.normal_(self.w_qs.weight, std=1.0 / math.sqrt(dim_q))
        nn.init.normal_(self.w_ks.weight, std=1.0 / math.sqrt(dim_kv))
        nn.init.normal_(self.w_vs.weight, std=1.0 / math.sqrt(dim_kv))
        nn.init.normal_(self.fc.weight, std=1.0 / math.sqrt(dim_q * n_layer))
        # A decoding copy of the model (models/decoding.py) fuses the three projections of a self-attention
        # into one matmul here; training and teacher forcing keep the three parameters of the reference.
        self.qkv: Callable[[torch.Tensor], torch.Tensor] | None = None

    def split_heads(self, x: torch.Tensor, head_dim: int) -> torch.Tensor:
        """(B, L, heads * d) -> (B, heads, L, d), features split head-major."""
        return x.view(*x.shape[:-1], self.n_head, head_dim).transpose(-3, -2)

    def queries(self, q_in: torch.Tensor) -> torch.Tensor:
        return self.split_heads(self.w_qs(q_in), self.d_k)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention queries, keys and values of x (B, L, dim_q), each (B, heads, L, d)."""
        if self.qkv is not None:
            q, k, v = self.qkv(x).split([self.n_head * self.d_k] * 2 + [self.n_head * self.d_v], dim=-1)
        else:
            q, k, v = self.w_qs(x), self.w_ks(x), self.w_vs(x)
        return self.split_heads(q, self.d_k), self.split_heads(k, self.d_k), self.split_heads(v, self.d_v)

    def keys_values(self, kv_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split_heads(self.w_ks(kv_in), self.d_k), self.split_heads(self.w_vs(kv_in), self.d_v)

    def combine(self, heads_out: torch.Tensor) -> torch.Tensor:
        """(B, heads, L, d_v) -> (B, L, dim_q) through the output projection."""
        return self.fc(heads_out.transpose(-3, -2).flatten(-2))


class LayerNorm(nn.Module):
    """The reference's layer norm: epsilon added to the reciprocal root; class-conditional gain/bias.

    With summary_dim, gain and bias also take a learned term of a (B, summary_dim) summary of the given
    frames (ours, `GPTConfig.global_frames`), zero at the start so training begins from the plain norm;
    summary None (no frames) adds nothing, as a zero summary would.
    """

    def __init__(self, dim: int, class_cond_dim: int | None, summary_dim: int | None = None):
        super().__init__()
        self.conditional = class_cond_dim is not None
        if self.conditional:
            self.w = nn.Linear(class_cond_dim, dim, bias=False)
            nn.init.constant_(self.w.weight, 1.0 / math.sqrt(class_cond_dim))
            self.wb = nn.Linear(class_cond_dim, dim, bias=False)
        else:
            self.g = nn.Parameter(torch.ones(dim))
            self.b = nn.Parameter(torch.zeros(dim))
        self.summarized = summary_dim is not None
        if self.summarized:
            self.summary_g = nn.Linear(summary_dim, dim, bias=False)
            self.summary_b = nn.Linear(summary_dim, dim, bias=False)
            nn.init.zeros_(self.summary_g.weight)
            nn.init.zeros_(self.summary_b.weight)

    def gain_bias(self, class_onehot: torch.Tensor | None, summary: torch.Tensor | None = None,
                  ndim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
        """Gain and bias, shaped (B, 1, ..., D) for inputs of ndim dimensions when conditional."""
        def per_sample(t: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, 1, ..., D)
            return t.view(t.shape[0], *(1,) * (ndim - 2), -1)

        if self.conditional:
            g, b = 1 + per_sample(self.w(class_onehot)), per_sample(self.wb(class_onehot))
        else:
            g, b = self.g, self.b
        if self.summarized and summary is not None:
            g, b = g + per_sample(self.summary_g(summary)), b + per_sample(self.summary_b(summary))
        return g, b

    @staticmethod
    def normalize(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(x - mean) * (rsqrt(var) + 1e-5) * g + b over the last axis, the statistics in float32: torch's
        fused layer norm without epsilon gives (x - mean) * rsqrt(var), and the reference's epsilon on the
        reciprocal root is that times 1 + 1e-5 / rsqrt(var)."""
        in_float32 = x.dtype == torch.float32
        normalized, _, rstd = torch.native_layer_norm(x if in_float32 else x.float(), (x.shape[-1],), None, None, 0.0)
        # 1e-5 / rstd + 1 spelled out (Python's reflected division is a wrapper: ~3 us of a decoding step's
        # nine norms each), in place where no gradient needs the intermediates; the same bits either way.
        if torch.is_grad_enabled():
            normalized = normalized * (rstd.reciprocal() * 1e-5 + 1)
        else:
            normalized = normalized.mul_(rstd.reciprocal().mul_(1e-5).add_(1))
        return torch.addcmul(b, normalized if in_float32 else normalized.to(x.dtype), g)

    def forward(self, x: torch.Tensor, class_onehot: torch.Tensor | None = None,
                summary: torch.Tensor | None = None) -> torch.Tensor:
        return self.normalize(x, *self.gain_bias(class_onehot, summary, x.dim()))


class GeLU2(nn.Module):
    """x * sigmoid(1.702 x), the GELU approximation of the reference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1.702 * x).sigmoid() * x


class AddBroadcastPosEmbed(nn.Module):
    """Adds concat(d_0[i], d_1[j], ...) at grid position (i, j, ...) of a channels-last tensor."""

    def __init__(self, shape: tuple[int, ...], embd_dim: int):
        super().__init__()
        if embd_dim % len(shape) != 0:
            raise ValueError(f"embedding width {embd_dim} is not divisible by {len(shape)} axes")
        self.shape = tuple(shape)
        self.emb = nn.ParameterDict({
            f"d_{i}": nn.Parameter(torch.randn(size, embd_dim // len(shape)) * 0.01)
            for i, size in enumerate(shape)
        })

    def table(self) -> torch.Tensor:
        """The full embedding grid, (*shape, embd_dim)."""
        n_dim = len(self.shape)
        parts = []
        for i, size in enumerate(self.shape):
            e = self.emb[f"d_{i}"].view(*((1,) * i), size, *((1,) * (n_dim - i - 1)), -1)
            parts.append(e.expand(*self.shape, -1))
        return torch.cat(parts, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table()
