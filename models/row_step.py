"""A decoding step on CPU in one compiled call (row_step.c), where the step's products, norms and attention
(a frames prior's cross-attention too) are all compiled kernels (float32): from the rows' codes and
positions to their logits, the positions moved on.

The layer-by-layer step calls some thirty kernels from Python, each behind a few microseconds of
Python, ctypes and tensor allocation, and puts the input gathers, residual sums, views and head splits
between them in torch: at one guided sample of the shipped prior that glue was most of the step, not
the arithmetic. row_step.c makes the same kernel calls in the same order from C, through a plan built
once per decoder (its weights, gains, caches, frames tables and scratch memory, by address). A frames
prior's step had kept its cross-attention in torch between two C calls a layer: 0.66 ms of a 1.1 ms
step of the shipped frames prior with its class guide, against 0.23 of 0.45 ms now.

A plan is only used after it gave bit for bit the logits and cache entries of the layer-by-layer step on
the decoder it serves (steps of random rows at positions across blocks, each conditioned its own way):
it holds raw addresses, and a shape it does not expect must not reach the kernels. Where that check
fails, or the library cannot be built, the decoder steps layer by layer (and logs why once).
kernels.ENABLED without "row_step" (a benchmark's comparison; the worker's VGS_CPU_KERNELS=false takes
every kernel out) turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import kernels
from .row_attention import raise_for_failure

RowDecoder = Any  # models.decoding.RowDecoder, which imports this module

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("row_step.c")
FLAGS = ("-ffp-contract=off",)  # its sums and the gate round as torch's operations do
CHECK_STEPS = 3

_pointer, _size = ctypes.c_void_p, ctypes.c_int64
# The check's verdict per decoding copy and row count: every decoder of both makes the same calls over the
# same shapes and strides, only at other addresses, so a static batch's or a `sample` call's decoder does
# not check again (about 15 ms for the shipped prior, mostly filling caches with random entries).
_AGREED: weakref.WeakKeyDictionary[torch.nn.Module, dict[int, bool]] = weakref.WeakKeyDictionary()


class _Layer(ctypes.Structure):
    _fields_ = [(name, _pointer) for name in ("attn_g", "attn_b", "fc_g", "fc_b", "qkv_w", "qkv_b", "out_w",
                                              "out_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b", "keys", "values",
                                              "cross_g", "cross_b", "cross_q_w", "cross_q_b", "cross_out_w",
                                              "cross_out_b", "frame_keys", "frame_values")]


class _Plan(ctypes.Structure):
    _fields_ = [("linear", _pointer), ("norm", _pointer), ("attend", _pointer),
                *[(name, _size) for name in ("layers", "dim", "heads", "d_k", "d_v", "hidden", "n_codes",
                                             "key_row", "value_row")],
                ("scale", ctypes.c_float), ("layer", ctypes.POINTER(_Layer)),
                *[(name, _pointer) for name in ("final_g", "final_b", "logits_w", "logits_b", "h", "qkv", "att",
                                                "proj", "mlp", "token_features", "position_features")],
                *[(name, _size) for name in ("n_tokens", "seq_len", "n_blocks", "read_width")],
                *[(name, _pointer) for name in ("read_index", "read_counts", "x", "blocks", "counts",
                                                "cross_attend")],
                *[(name, _size) for name in ("cross_d_v", "frame_key_row", "frame_value_row")],
                *[(name, _pointer) for name in ("cross_blocks", "cross_counts", "gate", "aligned")]]


BAD_TOKEN = -3  # step_tokens' code for a code or position without a feature


def _address(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _products(linear) -> tuple[int, int | None]:
    return _address(linear.compiled.packed), _address(linear.compiled.bias)


class RowStep:
    """A decoder's step through row_step.c: step(rows) computes the step of its first `rows` rows from their
    codes and positions (decoder.tokens, decoder.positions), and moves their positions on."""

    def __init__(self, library: ctypes.CDLL, decoder: RowDecoder):
        model, tables = decoder.model, decoder.tables
        layers = model.attn_stack.attn_nets
        attn = layers[0].attn
        capacity, dim = decoder.positions.shape[0], model.config.hidden_dim
        hidden = layers[0].mlp_linears[0].weight_t.shape[1]
        self.library, self.n_codes = library, model.fc_out.weight_t.shape[1]
        # the attention's output: the self-attention's, or a cross-attention's (frames of another width)
        heads_width = attn.n_head * max(attn.d_v, decoder.cross_kernel.d_v if tables.cross else 0)
        width = decoder.read_index.shape[1] if decoder.sparse else decoder.n_blocks
        # scratch (h, qkv, att, proj, mlp, x), and the rows' reads; kept alive while the plan holds them
        self._scratch = [torch.empty(capacity, columns) for columns in
                         (dim, 2 * attn.n_head * attn.d_k + heads_width, heads_width, dim, hidden, dim)]
        self._reads = (torch.empty(capacity, width, dtype=torch.int64), torch.empty(capacity, dtype=torch.int64))
        self._features = (decoder.token_features.contiguous(), decoder.position_features.contiguous())
        self._layers = (_Layer * len(layers))()
        for index, (layer, entry) in enumerate(zip(layers, self._layers)):
            entry.attn_g, entry.attn_b = map(_address, tables.norms[index, "pre_attn_norm"])
            entry.fc_g, entry.fc_b = map(_address, tables.norms[index, "pre_fc_norm"])
            entry.qkv_w, entry.qkv_b = _products(layer.attn.qkv)
            entry.out_w, entry.out_b = _products(layer.attn.fc)
            (entry.fc1_w, entry.fc1_b), (entry.fc2_w, entry.fc2_b) = map(_products, layer.mlp_linears)
            entry.keys, entry.values = _address(decoder.keys[index]), _address(decoder.values[index])
            if tables.cross:
                entry.cross_g, entry.cross_b = map(_address, tables.norms[index, "pre_enc_norm"])
                entry.cross_q_w, entry.cross_q_b = _products(layer.enc_attn.w_qs)
                entry.cross_out_w, entry.cross_out_b = _products(layer.enc_attn.fc)
                entry.frame_keys, entry.frame_values = map(_address, tables.cross[index])
        plan = self._plan = _Plan()
        plan.linear, plan.norm = (ctypes.cast(f, _pointer).value for f in (decoder.ops.linear, decoder.ops.row_norm))
        plan.attend = ctypes.cast(decoder.kernel.function, _pointer).value
        plan.layers, plan.dim, plan.heads, plan.d_k, plan.d_v = len(layers), dim, attn.n_head, attn.d_k, attn.d_v
        plan.hidden, plan.n_codes = hidden, self.n_codes
        plan.key_row, plan.value_row = decoder.keys[0].stride(0), decoder.values[0].stride(0)
        plan.scale, plan.layer = decoder.kernel.scale, self._layers
        plan.final_g, plan.final_b = map(_address, tables.norms[None, "norm"])
        plan.logits_w, plan.logits_b = _products(model.fc_out)
        plan.h, plan.qkv, plan.att, plan.proj, plan.mlp, plan.x = map(_address, self._scratch)
        plan.token_features, plan.position_features = map(_address, self._features)
        plan.n_tokens, plan.seq_len, plan.n_blocks = decoder.token_features.shape[0], decoder.seq_len, decoder.n_blocks
        plan.read_width = width
        plan.read_index, plan.read_counts = ((_address(decoder.read_index), _address(decoder.read_counts))
                                             if decoder.sparse else (None, None))
        plan.blocks, plan.counts = map(_address, self._reads)
        if tables.cross:
            cross = decoder.cross_kernel
            plan.cross_attend = ctypes.cast(cross.function, _pointer).value
            plan.cross_d_v = cross.d_v
            plan.frame_key_row, plan.frame_value_row = tables.cross[0][0].stride(0), tables.cross[0][1].stride(0)
            plan.cross_blocks, plan.cross_counts = map(_address, decoder.cross_reads)
            plan.gate = _address(tables.gate)
        plan.aligned = _address(tables.aligned)
        self._tokens, self._positions = decoder.tokens, decoder.positions
        self._capacity, self._entries = capacity, decoder.n_blocks * decoder.block
        self._plan_ref = ctypes.byref(plan)

    def step(self, rows: int) -> torch.Tensor:
        """The step of the decoder's first `rows` rows: their logits (rows, n_codes)."""
        if not 0 < rows <= self._capacity:
            raise ValueError(f"row step takes 1 to {self._capacity} rows, given {rows}")
        logits = torch.empty(rows, self.n_codes)
        failed = self.library.step_tokens(self._plan_ref, self._tokens.data_ptr(), self._positions.data_ptr(), rows,
                                          logits.data_ptr())
        if failed == BAD_TOKEN:
            raise ValueError(f"row step: a code beyond {self._plan.n_tokens - 1} or a position beyond "
                             f"{self._plan.seq_len - 1}")
        raise_for_failure(failed, self._entries)
        return logits


def row_step(decoder: RowDecoder, layered_step: Callable[[int], torch.Tensor]) -> RowStep | None:
    """The decoder's compiled step, or None where its step is not all compiled kernels, the library cannot
    be built, or the plan's step differs from layered_step(rows) (the decoder's layer-by-layer step of its
    first rows) on the check. The check runs on the first decoder of each decoding copy and row count,
    before it holds any row, and leaves it as it found it."""
    model = decoder.model
    if "row_step" not in kernels.ENABLED or not (
            decoder.ops is not None and decoder.kernel is not None and decoder.kernel.dtype == torch.float32
            and decoder.tile == 1 and not decoder.cuda_graph
            and (not decoder.tables.cross or decoder.cross_kernel is not None)  # built in the decoder's dtype
            and getattr(model, "decode_products", None) is not None and model.decode_products.compiled):
        return None
    library = _library()
    if library is None:
        return None
    step = RowStep(library, decoder)
    verdicts = _AGREED.setdefault(model, {})
    capacity = decoder.positions.shape[0]
    if capacity not in verdicts:
        verdicts[capacity] = _agrees(decoder, step, layered_step)
        if not verdicts[capacity]:
            log.warning("the compiled step differs from the layer-by-layer step for this prior; not used")
    return step if verdicts[capacity] else None


@functools.cache
def _library() -> ctypes.CDLL | None:
    library = kernels.load(SOURCE, FLAGS, log, "row step library", "decoding steps layer by layer")
    if library is None:
        return None
    library.step_tokens.argtypes = [_pointer, _pointer, _pointer, _size, _pointer]
    library.step_tokens.restype = ctypes.c_int
    return library


@torch.no_grad()
def _agrees(decoder: RowDecoder, step: RowStep, layered_step: Callable[[int], torch.Tensor]) -> bool:
    """Whether the plan's steps give the logits and cache entries of the layer-by-layer steps, bit for bit,
    for up to four rows at positions in and across the cache's first blocks (each row with its own norms'
    gains and biases, and frames); the decoder is put back as it was (fresh) either way. Only the blocks
    those rows read are filled and kept: a large prior's whole cache is hundreds of MB."""
    rows, block = min(4, decoder.positions.shape[0]), decoder.block
    gen = torch.Generator().manual_seed(0)
    last = max(decoder.seq_len - CHECK_STEPS, 0)
    start = torch.tensor([0, block - 1, block + 1, 2 * block + 1])[:rows].clamp(0, last)
    read = slice(0, min(decoder.n_blocks, -(-(int(start.max()) + CHECK_STEPS) // block)))
    tokens = torch.randint(0, decoder.sos + 1, (CHECK_STEPS, rows), generator=gen)
    tables = decoder.tables
    for gain, bias in tables.norms.values():
        gain[:rows] = 1 + 0.1 * torch.randn(gain[:rows].shape, generator=gen)
        bias[:rows] = 0.1 * torch.randn(bias[:rows].shape, generator=gen)
    for table in tables.frames_tensors():  # each row with frames (a gate of 1)
        table[:rows] = 1 if table is tables.gate else torch.randn(table[:rows].shape, generator=gen)
    caches = [torch.randn(cache[:, :rows, read].shape, generator=gen) for cache in (decoder.keys, decoder.values)]

    def run(compiled: bool) -> list[torch.Tensor]:
        decoder.keys[:, :rows, read], decoder.values[:, :rows, read] = caches  # earlier entries to read
        decoder.positions[:rows] = start
        decoder.active = rows
        found = []
        for codes in tokens:
            decoder.tokens[:rows] = codes
            found.append(step.step(rows) if compiled else layered_step(rows))
        return [*found, decoder.keys[:, :rows, read].clone(), decoder.values[:, :rows, read].clone()]

    try:
        same = all(torch.equal(a, b) for a, b in zip(run(False), run(True)))
    finally:
        decoder.reset_rows(rows)
    return same
