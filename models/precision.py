"""Decoding precision: float32 (exact, what the reference fixtures test), bfloat16 (weights, activations and
KV cache), int8 (weight-only, per output channel, bfloat16 activations and cache), and auto.

A step of one token per sample is bound by reading the weights and the cache, so narrower ones pay where
the hardware computes them natively; where it does not they cost more (choose by measurement, not by
name: `choose_precision` times decoding runs of each at load, for one row and for a full engine). The
VQ-VAE and the sampling arithmetic (softmax, top-k/top-p, the inverse-CDF draw) stay float32, so a seed
keeps its meaning.
Fidelity against float32 (models/fidelity.py): mean KL(float32 || reduced) of teacher-forced next-code
distributions (goal <= 0.01 nats per code) and top-1 agreement; auto never picks a precision that misses
the goal on the model, as measured on the bundle's own codes (recorded by `videogpt-serve fidelity`) or,
without a record, at load on codes the model samples itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import InputError

PRECISIONS = ("float32", "bfloat16", "int8")
CHOICES = (*PRECISIONS, "auto")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.bfloat16}
FIDELITY_KL = 0.01  # nats per code
FASTER_BY = 1.05  # auto leaves float32 only for a precision at least this much faster


def check_precision(precision: object, allow_auto: bool = True) -> str:
    choices = CHOICES if allow_auto else PRECISIONS
    if precision not in choices:
        raise InputError(f"precision must be one of {', '.join(choices)}, got {precision!r}")
    return precision  # type: ignore[return-value]


def by_tiles(product: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int) -> torch.Tensor:
    """product(x) computed on tiles of `tile` rows (x's first dimension, a multiple of tile), one call each:
    a row's bits then depend only on the tile it is in, not on how many rows there are (kernels choose
    their code, and the order they sum in, by the row count). Each tile reads the weights again."""
    if x.shape[0] == tile:
        return product(x)
    return torch.cat([product(rows) for rows in x.split(tile)])


class Int8Linear:
    """y = x @ (W_int8 * scale)^T + b: weights stored as int8 with one scale per output channel, the
    product in bfloat16 (torch's weight-only int8 kernel on CPU, for inputs a multiple of 16 wide, the only
    ones it takes without a segmentation fault; dequantized per call otherwise)."""

    def __init__(self, *linears: torch.nn.Linear):
        weight = torch.cat([lin.weight for lin in linears]).detach().float()  # (out, in)
        biases = [lin.bias for lin in linears]
        bias = torch.cat(biases).detach() if all(b is not None for b in biases) else None
        scales = weight.abs().amax(dim=1).clamp_min(1e-8) / 127.0
        self.weight = (weight / scales[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
        self.scales = scales.to(torch.bfloat16)
        self.bias = None if bias is None else bias.to(torch.bfloat16)
        self.tile = 0  # as DecodeLinear's: decoding steps multiply tiles of this many rows, one call each

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        if self.tile and x.dim() == 3 and x.shape[1] == 1:
            y = by_tiles(self._product, flat, self.tile)
        else:
            y = self._product(flat)
        y = y.view(*x.shape[:-1], -1)
        return y if self.bias is None else y.add_(self.bias)

    def _product(self, flat: torch.Tensor) -> torch.Tensor:
        if flat.device.type == "cpu" and self.in_features % 16 == 0:  # the kernel crashes on other widths
            return torch._weight_int8pack_mm(flat, self.weight, self.scales)
        return F.linear(flat, self.weight.to(flat.dtype)) * self.scales
