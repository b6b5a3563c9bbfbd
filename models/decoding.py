"""Decoding a prior one position at a time: a KV cache allocated once, rows that come and go, a position
per row.

`RowDecoder` holds `rows` rows of cache for one prior. A row is one sequence being decoded (a sample, or
the companion row a guided sample reads its unconditioned logits from); it is admitted with its
conditioning, optionally prefilled with a prefix of codes in one teacher-forced pass, stepped one
position at a time, and released. Active rows are kept at the front of the cache (a released row is
filled by the last one), so a step computes rows [0, n) and reads the cache up to the furthest row's
position (rounded up to a chunk).

Exactness: a row's logits do not depend on which other rows share its step or where they are. Two things
would make them depend: matmul kernels that take other code for another number of rows, which the
decoder avoids by multiplying rows in tiles of a size it measures at start (`row_tile`); and an
attention softmax whose sum is grouped by the length read, which `attend_cache` avoids by taking the
softmax over the whole cache's length (the scores past what was read are -inf). On CUDA the step is
captured once as a CUDA graph over every row and the whole cache, so its shapes never change at all.
A full-attention prior decoded in bfloat16 (or int8) on CPU keeps its cache block by block and each row
reads only its own prefix of whole blocks (`row_reads`): its result then depends on nothing but itself.
On CPU the attention is normally one compiled call a layer (models/row_attention.py) that reads each row's
own entries, in any precision; the read chunks and groups above are for CUDA and for a machine where the
kernel cannot be built.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .gpt import Conditioning, VideoGPT
from .layers import LayerNorm, MultiHeadAttention
from .layout import causal_mask
from .precision import DTYPES, Int8Linear, by_tiles, check_precision
from .row_attention import attend_blocks, row_attention
from .row_ops import RowLinear, row_ops
from .row_step import row_step

log = logging.getLogger(__name__)
CUDA_GRAPHS = True  # on CUDA, capture the step as a graph (a benchmark can turn it off)
CALIBRATION_ROWS = 64  # row_tile checks row counts below this against this many
LINEAR_PROBE_ROWS = 4096  # and each linear's products over up to this many random rows,
LINEAR_PROBE_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16)  # at these row counts (where kernels change; the rest: the
LINEAR_PROBE_CALLS = 512  # stack probe), in at most this many products each
PLAIN_ROWS = (1, 2, 4)  # the row multiples row_tile tries with one product over all rows
TILES = (1, 2, 4, 8, 16, 32)  # then the tiles of tiled products
TIMED_ROWS = (1, 16)  # row_tile times a step for one row and for a busy engine (8 guided samples)
TILE_SLACK = 1.1
# row_tile keeps the first exact way (the compiled products, one-row products, then MKL's one product, then
# oneDNN's) unless another scores better by more than this: on an AMD EPYC the ways' scores for small
# priors came 6-17% apart from run to run, and a choice that flips changes a seed's last bits between starts.
WAY_SLACK = 1.25
K_CHUNK = 768  # decoding steps multiply inputs longer than this in chunks (DecodeLinear)
# A step reads the cache up to its furthest row's position rounded up to the first of these that divides N
# and that the attention kernels give the same bits for (reads_agree); else all of it.
READ_CHUNKS = (16, 32, 64, 128)
READ_GROUPS = 4  # a step's rows attend in at most this many groups, each reading as far as its furthest row
# Groups merge when that reads fewer extra entries than a group's call costs: about this many values of
# keys and values (heads x (d_k + d_v) per entry; measured on this CPU: 0.05 us per entry of 4 x 72 values
# against ~16 us for a group's four calls in a layer).
GROUP_COST_VALUES = 100_000
NORMS = ("pre_attn_norm", "pre_enc_norm", "pre_fc_norm")
# Block sizes a row-reads cache tries, largest first (the first that divides the sequence): larger blocks
# mean fewer products per row; a row reads up to a block's worth beyond its position.
ROW_READ_BLOCKS = (128, 64, 32, 16, 8, 4, 2, 1)


class DecodeLinear:
    """y = x @ W^T + b with W^T stored contiguous: one row streams that layout faster than nn.Linear's
    (out, in) on CPU, and decoding a token at a time is bound by reading weights.

    Decoding steps (x of shape (R, 1, in), R a multiple of row_tile's tile) multiply in one of two ways,
    chosen by row_tile so that a row's bits do not depend on R: `tile` 0, one matmul over all rows (the
    weights read once), on CPU inputs longer than K_CHUNK summed in equal chunks (MKL splits a long input
    across threads for fewer than 17 rows); `tile` > 0, one matmul per tile of that many rows (by_tiles).
    Prefill (one sample) is one matmul.
    `one_row`: each row its own product, all in one batched call over the same weights (any row count
    gives a row the same bits; a product of one row streams small weights 2-2.5x as fast as MKL's of 4,
    and costs 1.4-2x as much at 8-16 rows: row_tile weighs both).
    `compiled` (float32 on CPU, where the kernel can be had): one compiled call over all rows
    (models/row_ops.py), exact for any row count by construction, the weights read once per four rows.
    `onednn` (float32 on CPU, where row_tile finds it exact and faster): steps multiply through oneDNN
    instead of MKL, one product over all rows (on an AMD EPYC MKL's products of 4 rows read the weights
    at 60% of the speed of its one-row products; oneDNN's of 2-8 rows within 10% of them).
    The decoding copy holds these as plain callables, not modules: a step calls dozens of them, and
    nn.Module's call machinery costs more than a small matmul.
    """

    def __init__(self, *linears: nn.Linear, dtype: torch.dtype | None = None):
        with torch.no_grad():
            self.weight_t = torch.cat([lin.weight for lin in linears]).t().contiguous().to(dtype)
            biases = [lin.bias for lin in linears]
            self.bias = torch.cat(biases).to(dtype) if all(b is not None for b in biases) else None
        self.tile = 0
        self.onednn = False
        self.one_row = False
        self.compiled: RowLinear | None = None
        self._onednn_weights: tuple[torch.Tensor, torch.Tensor] | None = None
        width = self.in_features
        parts = next(p for p in range(1, width + 1) if width % p == 0 and width // p <= K_CHUNK)
        on_cpu = self.weight_t.device.type == "cpu"  # the CUDA graph's one product of fixed shape needs none
        self.chunks = self.weight_t.chunk(parts) if parts > 1 and on_cpu else None
        self._for_rows: dict[int, torch.Tensor] = {}  # one_row: the weights expanded to each row count

    @property
    def in_features(self) -> int:
        return self.weight_t.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        step = x.dim() == 3 and x.shape[1] == 1  # a decoding step's rows, not a prefill
        if step and self.compiled is not None:
            return self.compiled(x)
        if step and self.onednn:
            return self._onednn_product(x)
        if step and self.one_row:
            rows = x.shape[0]
            weights = self._for_rows.get(rows)
            if weights is None:
                weights = self._for_rows[rows] = self.weight_t.expand(rows, *self.weight_t.shape)
            y = torch.bmm(x, weights)
            return y if self.bias is None else y.add_(self.bias)
        if step and self.tile:
            y = by_tiles(lambda rows: torch.matmul(rows, self.weight_t), x, self.tile)
        elif step and self.chunks is not None:
            width = self.chunks[0].shape[0]
            y = torch.matmul(x[..., :width], self.chunks[0])
            for i, chunk in enumerate(self.chunks[1:], 1):
                y.add_(torch.matmul(x[..., i * width:(i + 1) * width], chunk))
        elif self.bias is not None and x.is_cuda and x.dtype == torch.float32:
            # Profiled on an H200 at 8 rows of a small prior: plain cuBLAS took 52 us for one float32 layer a
            # step (a 32x128-tiled kernel; bfloat16's product took 2.4 us). torch's addmm with a bias goes
            # through cuBLASLt's own kernel choice instead (not yet timed there: see docs/models.md).
            rows = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight_t)
            return rows.view(*x.shape[:-1], -1)
        else:
            y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y.add_(self.bias)

    def _onednn_product(self, x: torch.Tensor) -> torch.Tensor:
        if self._onednn_weights is None:  # oneDNN's own layout: made once, dropped if not chosen
            weight = self.weight_t.t().contiguous()
            bias = self.bias if self.bias is not None else weight.new_zeros(weight.shape[0])
            self._onednn_weights = (weight.to_mkldnn(), bias.to_mkldnn())
        rows = x.reshape(-1, x.shape[-1]).to_mkldnn()
        return torch._C._nn.mkldnn_linear(rows, *self._onednn_weights).to_dense().view(*x.shape[:-1], -1)


def one_row_products_possible(model: VideoGPT) -> bool:
    """Whether the decoding linears can multiply each row on its own (DecodeLinear, on CPU)."""
    return model.fc_in.weight.device.type == "cpu" and all(
        isinstance(linear, DecodeLinear) for linear in model.decode_linears)


def compiled_products_possible(model: VideoGPT) -> bool:
    """Whether the decoding linears can multiply through the compiled kernel (float32 on CPU, built here)."""
    return (one_row_products_possible(model) and model.fc_in.weight.dtype == torch.float32
            and row_ops() is not None)


def onednn_products_possible(model: VideoGPT) -> bool:
    """Whether the decoding linears can multiply through oneDNN (float32 on a CPU torch built with it)."""
    return (one_row_products_possible(model) and model.fc_in.weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available())


ROW_BLOCK = 64


def row_gelu2(x: torch.Tensor) -> torch.Tensor:
    """GeLU2 on rows padded to a multiple of 64 values. Elementwise kernels run the last, partial block of
    a tensor through scalar code whose sigmoid rounds differently from the vectorized one, and where the
    tensor ends depends on how many rows it holds; with whole blocks per row, no row ever falls in a tail."""
    width = x.shape[-1]
    if width % ROW_BLOCK:
        padded = F.pad(x, (0, ROW_BLOCK - width % ROW_BLOCK))
        return ((1.702 * padded).sigmoid() * padded)[..., :width]
    return (1.702 * x).sigmoid() * x


def mlp_hidden(linear: DecodeLinear | Int8Linear, h: torch.Tensor) -> torch.Tensor:
    """GeLU2 of the MLP's first product: in the same compiled call where the step's products are compiled."""
    if getattr(linear, "compiled", None) is not None and h.dim() == 3 and h.shape[1] == 1:
        return linear.compiled(h, gelu=True)
    return row_gelu2(linear(h))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _plain(module: nn.Module, name: str, value: object) -> None:
    """Put a plain callable where a submodule was (found by ordinary attribute lookup, called directly)."""
    module._modules.pop(name, None)
    object.__setattr__(module, name, value)


SHARED_PARTS = ("vqvae", "resnet", "cond_pos_embd", "class_guide")  # what a decoding copy shares with its prior


def prepare_decoding(gpt: VideoGPT, precision: str = "float32") -> VideoGPT:
    """A copy of the prior for decoding in `precision` (models/precision.py; eval mode, no gradients): its
    linears as DecodeLinear (Int8Linear for int8), each self-attention's three projections fused into one,
    dropout gone, everything else in the decoding dtype. It shares the VQ-VAE, the frame encoder and the
    class guide with gpt; the original stays as it is (for training, and as the float32 reference)."""
    check_precision(precision, allow_auto=False)
    dtype = DTYPES[precision]

    def linear(*linears: nn.Linear) -> DecodeLinear | Int8Linear:
        return Int8Linear(*linears) if precision == "int8" else DecodeLinear(*linears, dtype=dtype)

    shared = {}
    for name in SHARED_PARTS:
        if getattr(gpt, name, None) is not None:
            shared[id(getattr(gpt, name))] = getattr(gpt, name)
    model = copy.deepcopy(gpt, memo=shared).eval().requires_grad_(False)
    model.norm.table_key = (None, "norm")  # which row table a norm's gains and biases are in
    linears = []
    for index, layer in enumerate(model.attn_stack.attn_nets):
        for name in NORMS:
            if hasattr(layer, name):
                getattr(layer, name).table_key = (index, name)
        attn = layer.attn
        qkv, out = linear(attn.w_qs, attn.w_ks, attn.w_vs), linear(attn.fc)
        _plain(attn, "qkv", qkv)
        _plain(attn, "fc", out)
        mlp_in, mlp_out = linear(layer.fc_block[0]), linear(layer.fc_block[2])
        _plain(layer, "fc_block", lambda h, a=mlp_in, b=mlp_out: b(mlp_hidden(a, h)))
        layer.mlp_linears = (mlp_in, mlp_out)  # for the compiled step (row_step.py)
        linears += [qkv, out, mlp_in, mlp_out]
        if hasattr(layer, "enc_attn"):
            cross_q, cross_out = linear(layer.enc_attn.w_qs), linear(layer.enc_attn.fc)
            _plain(layer.enc_attn, "w_qs", cross_q)
            _plain(layer.enc_attn, "fc", cross_out)
            _plain(layer, "post_enc_dp", _identity)
            linears += [cross_q, cross_out]
        _plain(layer, "post_attn_dp", _identity)
        _plain(layer, "post_fc_dp", _identity)
    logits = linear(model.fc_out)
    _plain(model, "fc_out", logits)
    for part in (model.attn_stack, model.norm, model.fc_in):  # the rest of the layers, not the VQ-VAE
        part.to(dtype)
    model.decode_linears = [*linears, logits]
    model.decode_precision = precision
    return model


# The last decoding copy made of each prior (decoding_copy): for what precision and thread count, and from
# what. One a prior: auto times three precisions, and the copies it does not take must not stay in memory.
_COPIES: weakref.WeakKeyDictionary[VideoGPT, tuple[tuple[str, int], _Source, VideoGPT]] = weakref.WeakKeyDictionary()


@dataclass
class _Source:
    """What a decoding copy was made from: the prior's tensors (weakly, with their version counters), the
    parts the copy shares (the same objects, kept alive by the copy) and the config."""

    tensors: list[tuple[weakref.ref, int]]
    shared: list[object]
    config: object

    @classmethod
    def of(cls, gpt: VideoGPT) -> _Source:
        return cls([(weakref.ref(t), t._version) for t in (*gpt.parameters(), *gpt.buffers())],
                   [getattr(gpt, name, None) for name in SHARED_PARTS], gpt.config)

    def matches(self, now: _Source) -> bool:
        return (len(self.tensors) == len(now.tensors) and self.config == now.config
                and all(a is b for a, b in zip(self.shared, now.shared))
                and all(kept() is not None and kept() is current() and version == current_version
                        for (kept, version), (current, current_version) in zip(self.tensors, now.tensors)))


def decoding_copy(gpt: VideoGPT, precision: str) -> VideoGPT:
    """prepare_decoding(gpt, precision), kept for the next engine of the same prior and precision while
    gpt's tensors stay the same objects, unchanged, and its shared parts and config the same: `sample`
    builds an engine per call, and copying a small prior was 0.1 s of its 1.5 s video. Training changes
    the tensors in place (their version counters move), so the next engine copies them again. An engine
    holds its copy itself: a copy made for another precision replaces the kept one, not the engine's."""
    # row_tile sets its choice of products, which depends on the thread count, on the copy: an engine built
    # at another thread count gets a copy of its own, so that it never changes another's products.
    key, source = (precision, torch.get_num_threads()), _Source.of(gpt)
    kept = _COPIES.get(gpt)
    if kept is None or kept[0] != key or not kept[1].matches(source):
        kept = _COPIES[gpt] = (key, source, prepare_decoding(gpt, precision))
    return kept[2]


_ROW_TILES: dict[tuple, object] = {}  # what row_tile and reads_agree measured, per shapes and thread count


@dataclass(frozen=True)
class Products:
    """How a step's decoding linears multiply its rows (DecodeLinear): `rows`, the multiple a step's
    computed rows are of; `tile` > 0, one product per tile of that many rows; else one product over all
    rows (through oneDNN if `onednn`), or (`one_row`) each row its own product, or (`compiled`) one call of
    the compiled kernel over all rows."""

    rows: int
    tile: int = 0
    onednn: bool = False
    one_row: bool = False
    compiled: bool = False

    def describe(self) -> str:
        kind = ("compiled products" if self.compiled else "one-row products" if self.one_row else
                "one oneDNN product" if self.onednn else
                f"products of {self.tile} rows" if self.tile else "one product")
        return f"rows in multiples of {self.rows}, {kind}"


def row_tile(model: VideoGPT) -> int:
    """The row count a step's computed rows are a multiple of, so that each row's result is the same bits
    however many rows there are. Kernels take other code (and summing order) for other row counts: MKL's
    float32 products of one row, or of fewer than 17 rows with a long input (DecodeLinear chunks those);
    oneDNN's bfloat16 ones at row counts scattered up to 60; a reduction over a short axis may vectorize
    across rows. Measured once per model shape and precision on this machine, on the model's layers over
    random rows (ProbeContext). The exact ways: the compiled products and one-row products (any row count:
    a step computes only its live rows), and the smallest multiple of rows for which one product over all of them (the
    weights read once; MKL's, and oneDNN's where it can) gives every row the same bits. The first of
    those is kept unless another is faster by more than WAY_SLACK, for one row and for a busy engine
    (TIMED_ROWS). Where none is exact, the products per tile of rows (by_tiles) of the fastest exact
    tile. Set on the model's linears."""
    c = model.config
    key = ("rows", c, model.latent_shape, model.decode_precision, model.fc_in.weight.device.type,
           torch.get_num_threads(), row_ops() is not None)
    if key not in _ROW_TILES:
        _ROW_TILES[key] = _choose_products(model)
        log.info("decoding %s: %s", model.decode_precision, _ROW_TILES[key].describe())
    products = _ROW_TILES[key]
    _set_products(model, products)
    return products.rows


def _choose_products(model: VideoGPT) -> Products:
    """The fastest exact way (see row_tile). Each way's smallest row multiple that the whole stack gives
    the same bits is timed first; the slow per-linear probe then runs in order of speed until one passes
    (a way that fails it tries its larger multiples), so it rarely runs for more than one way."""
    ways = [[Products(1, compiled=True)]] if compiled_products_possible(model) else []
    if one_row_products_possible(model):
        ways.append([Products(1, one_row=True)])
    ways.append([Products(rows) for rows in PLAIN_ROWS])
    if onednn_products_possible(model):
        ways.append([Products(rows, onednn=True) for rows in PLAIN_ROWS])
    found = {}  # the first candidate of each way whose stack agrees, and the way's larger multiples
    for way in ways:
        at = next((i for i, products in enumerate(way) if _whole_tiles_agree(model, products, linears=False)), None)
        if at is not None:
            found[way[at]] = way[at + 1:]
    order = list(found)
    if len(order) > 1:  # the fastest first, for one row and for a busy engine
        times = {products: _step_times(model, products) for products in order}
        score = _relative_scores(times)
        log.info("decoding %s: ms of the layers for %s rows: %s", model.decode_precision, TIMED_ROWS,
                 "; ".join(f"{p.describe()} {_ms(t)}" for p, t in times.items()))
        # Ways within WAY_SLACK of the fastest keep their order above, so that timing noise does not
        # change the choice (and a seed's last bits) from start to start; the rest follow by speed.
        slow = min(score.values()) * WAY_SLACK
        order.sort(key=lambda p: (score[p] > slow, score[p] if score[p] > slow else 0))
    for products in order:
        for candidate in [products, *found[products]]:
            if _whole_tiles_agree(model, candidate, stack=candidate is not products):
                return candidate
    preferred = _tiles_by_speed(model)
    tiled = next((tile for tile in preferred if _whole_tiles_agree(model, Products(tile, tile))), None)
    if tiled is None:
        log.warning("no row tile gives exact rows for this prior on this machine: a sample's codes may "
                    "depend on its companions in the last bits")
    tile = tiled or preferred[0]
    log.info("decoding %s: tiles by speed %s", model.decode_precision, preferred)
    return Products(tile, tile)


def _ms(times: dict[int, float]) -> str:
    return " / ".join(f"{seconds * 1000:.2f}" for seconds in times.values())


def _relative_scores(times: dict[object, dict[int, float]]) -> dict[object, float]:
    """Each choice's seconds at TIMED_ROWS rows, relative to the fastest choice there, summed."""
    best = {rows: min(found[rows] for found in times.values()) for rows in TIMED_ROWS}
    return {choice: sum(found[rows] / best[rows] for rows in TIMED_ROWS) for choice, found in times.items()}


def _trunk_seconds(model: VideoGPT, x: torch.Tensor, probe: ProbeContext, count: int) -> float:
    """Seconds the layer stack takes over the first `count` probe rows."""
    started = time.perf_counter()
    model.trunk(x[:count], probe.cut(count))
    return time.perf_counter() - started


def _set_products(model: VideoGPT, products: Products) -> None:
    """Make the decoding linears multiply as `products` says (oneDNN's copies of the weights are dropped
    when it is off); the model keeps it as `decode_products`."""
    model.decode_products = products
    for linear in model.decode_linears:
        linear.tile = products.tile
        if isinstance(linear, DecodeLinear):
            linear.onednn, linear.one_row = products.onednn, products.one_row
            linear.compiled = row_ops().bind(linear.weight_t, linear.bias) if products.compiled else None
            if not products.onednn:
                linear._onednn_weights = None


def _timing_inputs(model: VideoGPT, rows: int) -> tuple[ProbeContext, torch.Tensor]:
    """What row_tile times the layer stack on: a probe of `rows` random rows, each attending over half a
    video (a step's average read, so the linears weigh what they weigh in a real step), and their inputs."""
    gen = torch.Generator().manual_seed(0)
    probe = ProbeContext(model, rows, gen, reads=math.prod(model.latent_shape) // 2)
    return probe, torch.randn(rows, 1, model.config.hidden_dim, generator=gen).to(model.fc_in.weight)


def _step_times(model: VideoGPT, products: Products) -> dict[int, float]:
    """Seconds the layer stack takes (median of three) for each of TIMED_ROWS rows, rounded up to a
    multiple of the products' rows, the linears multiplying as they say (over _timing_inputs)."""
    rows = products.rows
    probe, x = _timing_inputs(model, rows * math.ceil(max(TIMED_ROWS) / rows))
    _set_products(model, products)
    found = {}
    with torch.no_grad():
        for timed in TIMED_ROWS:
            count = rows * math.ceil(timed / rows)
            model.trunk(x[:count], probe.cut(count))  # warm-up
            found[timed] = sorted(_trunk_seconds(model, x, probe, count) for _ in range(3))[1]
    return found


def _tiles_by_speed(model: VideoGPT) -> list[int]:
    """TILES, fastest first: the step's layers timed at TIMED_ROWS (each relative to the fastest tile there,
    summed; medians of three rounds for the tiles within 2x of the fastest after one). Tiles within
    TILE_SLACK of the fastest come smallest first, so that the choice stays the same from start to start."""
    probe, x = _timing_inputs(model, max(max(TIMED_ROWS), max(TILES)))
    times: dict[tuple[int, int], list[float]] = {(tile, rows): [] for tile in TILES for rows in TIMED_ROWS}

    def scores(tiles: list[int]) -> dict[int, float]:
        return _relative_scores({tile: {rows: sorted(times[tile, rows])[len(times[tile, rows]) // 2]
                                        for rows in TIMED_ROWS} for tile in tiles})

    timed = list(TILES)
    with torch.no_grad():
        for round_ in range(3):
            for tile in timed:
                _set_products(model, Products(tile, tile))
                for rows in TIMED_ROWS:
                    count = tile * math.ceil(rows / tile)
                    if round_ == 0:
                        model.trunk(x[:count], probe.cut(count))  # warm-up
                    times[tile, rows].append(_trunk_seconds(model, x, probe, count))
            if round_ == 0:
                first = scores(timed)
                timed = [tile for tile in TILES if first[tile] <= 2 * min(first.values())]
    score = {**first, **scores(timed)}
    fastest = min(score.values())
    return sorted(TILES, key=lambda tile: (score[tile] > fastest * TILE_SLACK, score[tile] if
                                           score[tile] > fastest * TILE_SLACK else tile))


def full_attention_block(seq_len: int) -> int:
    """Entries a block of a full-attention prior's block cache holds (row reads, the CPU kernel)."""
    return next(b for b in ROW_READ_BLOCKS if seq_len % b == 0)


class ProbeContext:
    """A decoding pass over random rows for row_tile: per-row norms, and attention outputs that are fixed
    random numbers per row (attention has its own check, reads_agree), or (reads > 0, for timing a step)
    attention over that many random cached entries per row, as the decoder attends (on CPU, the compiled
    kernel where it can be had)."""

    def __init__(self, model: VideoGPT, rows: int, gen: torch.Generator, reads: int = 0):
        c, dtype, device = model.config, model.fc_in.weight.dtype, model.fc_in.weight.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen).to(device, dtype)

        self.norm = (1 + rand(rows, 1, c.hidden_dim) * 0.1, rand(rows, 1, c.hidden_dim))
        self.heads = rand(rows, c.heads, 1, c.hidden_dim // c.heads)
        self.cross = rand(rows, c.heads, 1, c.resnet_dim // c.heads) if c.frame_conditional else None
        self.gate = rand(rows, 1, 1)
        self.reads_frames = c.frame_conditional
        self.rows = rows
        d, block = c.hidden_dim // c.heads, full_attention_block(math.prod(model.latent_shape))
        self.kernel = row_attention(dtype, d, d, block) if reads and device.type == "cpu" else None
        if not reads:
            self.cache = None
        elif self.kernel is not None:  # each row's first blocks, of which it reads `reads` entries
            blocks = math.ceil(reads / block)
            self.cache = (rand(rows, blocks, c.heads, d, block), rand(rows, blocks, c.heads, block, d),
                          torch.arange(blocks, device=device)[None], torch.full((rows,), reads, device=device))
        else:
            self.cache = (rand(rows, c.heads, d, reads), rand(rows, c.heads, reads, d),
                          torch.zeros(rows, 1, 1, reads, device=device, dtype=dtype))

    def cut(self, rows: int) -> ProbeContext:
        cut = copy.copy(self)
        cut.cache = None if self.cache is None else tuple(t if t.shape[0] == 1 else t[:rows] for t in self.cache)
        cut.norm = tuple(t[:rows] for t in self.norm)
        cut.heads, cut.gate = self.heads[:rows], self.gate[:rows]
        cut.cross = None if self.cross is None else self.cross[:rows]
        return cut

    def normalize(self, norm: LayerNorm, x: torch.Tensor, index: int | None) -> torch.Tensor:
        return LayerNorm.normalize(x, *self.norm)

    def self_attention(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       dropout: float = 0.0) -> torch.Tensor:
        if self.cache is None:
            heads = self.heads
        elif self.kernel is not None:
            heads = self.kernel(q, *self.cache)
        else:
            heads = attend_cache(q, *self.cache)
        return heads + 0 * (q + k + v)  # keeps the projections' outputs in the computation

    def cross_attention(self, index: int, q: torch.Tensor, attn: MultiHeadAttention) -> torch.Tensor:
        return self.cross

    def gate_frames(self, branch: torch.Tensor) -> torch.Tensor:
        return branch * self.gate


def _whole_tiles_agree(model: VideoGPT, products: Products, stack: bool = True, linears: bool = True) -> bool:
    """Whether multiples of products.rows rows (the first dozen, then every fourth, below CALIBRATION_ROWS)
    give each row the bits it gets among CALIBRATION_ROWS rows, the linears multiplying as `products`
    says: through the whole layer stack (stack), and each linear over many rows (linears: _linears_agree)."""
    counts = list(range(products.rows, CALIBRATION_ROWS, products.rows))
    counts = counts[:12] + counts[12::4]
    _set_products(model, products)
    if stack:
        gen = torch.Generator().manual_seed(0)
        probe = ProbeContext(model, CALIBRATION_ROWS, gen)
        x = torch.randn(CALIBRATION_ROWS, 1, model.config.hidden_dim, generator=gen).to(model.fc_in.weight)
        with torch.no_grad():
            reference = model.trunk(x, probe)
            if not all(torch.equal(model.trunk(x[:rows], probe.cut(rows)), reference[:rows])
                       for rows in counts + counts[::-1]):  # twice: kernels may differ with what ran before
                return False
    return not linears or _linears_agree(model, counts)


def _linears_agree(model: VideoGPT, counts: list[int]) -> bool:
    """Whether each shape of the decoding linears gives every one of its random rows the same bits in
    products of each of these row counts (those in LINEAR_PROBE_COUNTS) as in products of CALIBRATION_ROWS
    rows. The stack probe alone misses a kernel that sums in another order for a few row
    counts: in bfloat16 the results then differ only where the rounding falls the other way (oneDNN on an
    AMD EPYC: products of 1 or 2 rows of a 36 x 36 weight, 18 rows in 24 000 of normal inputs). The probe's
    inputs have entries of two magnitudes 4096 apart, so the order of summing shows 6x as often."""
    gen = torch.Generator().manual_seed(1)
    shapes = {}
    for linear in model.decode_linears:
        weight = linear.weight_t if isinstance(linear, DecodeLinear) else linear.weight
        shapes.setdefault((type(linear), tuple(weight.shape)), linear)
    small = [rows for rows in counts if rows in LINEAR_PROBE_COUNTS]
    for linear in shapes.values():
        shape = (LINEAR_PROBE_ROWS, 1, linear.in_features)
        scale = torch.exp2(12.0 * torch.randint(0, 2, shape, generator=gen))
        x = (torch.randn(shape, generator=gen) * scale).to(model.fc_in.weight)
        reference = torch.cat([linear(part) for part in x.split(CALIBRATION_ROWS)])
        for rows in small:  # at most LINEAR_PROBE_CALLS products a count: one-row products cost as much
            for first in range(0, min(LINEAR_PROBE_ROWS, LINEAR_PROBE_CALLS * rows) - rows + 1, rows):
                if not torch.equal(linear(x[first:first + rows]), reference[first:first + rows]):
                    return False
    return True


def reads_agree(heads: int, d_k: int, d_v: int, seq_len: int, chunk: int, tile: int, dtype: torch.dtype,
                device: torch.device, block: int | None = None) -> bool:
    """Whether reading the cache up to a multiple of `chunk` gives each row the bits reading all of it does
    (the attention matmuls' kernels may change with the length read). If not, steps read all of it.
    block: the cache held block by block, as sparse priors hold it (attend_blocks over the blocks read);
    None: the transposed prefix layout (attend_cache)."""
    key = ("reads", heads, d_k, d_v, seq_len, chunk, tile, block, dtype, device.type, torch.get_num_threads())
    if key not in _ROW_TILES:
        gen = torch.Generator().manual_seed(0)
        q = torch.randn(tile, heads, 1, d_k, generator=gen).to(device, dtype)
        if block is None:
            keys = torch.randn(tile, heads, d_k, seq_len, generator=gen).to(device, dtype)
            values = torch.randn(tile, heads, seq_len, d_v, generator=gen).to(device, dtype)
        else:
            keys = torch.randn(tile, seq_len // block, heads, d_k, block, generator=gen).to(device, dtype)
            values = torch.randn(tile, seq_len // block, heads, block, d_v, generator=gen).to(device, dtype)

        def attend(length: int, bias: torch.Tensor) -> torch.Tensor:
            if block is None:
                return attend_cache(q, keys[..., :length], values[:, :, :length], bias[..., :length])
            blocks = math.ceil(length / block)
            return attend_blocks(q, keys[:, :blocks], values[:, :blocks], bias[..., :length])

        agree = True
        for length in range(chunk, seq_len, chunk):  # rows that may read up to `length`, read that far or all
            readable = torch.arange(seq_len, device=device) < length - torch.arange(tile, device=device)[:, None]
            bias = torch.zeros(readable.shape, dtype=dtype, device=device).masked_fill_(
                ~readable, float("-inf"))[:, None, None, :]
            agree = agree and torch.equal(attend(length, bias), attend(seq_len, bias))
        _ROW_TILES[key] = agree
    return bool(_ROW_TILES[key])


def attend_cache(q: torch.Tensor, keys_t: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Attention of one query per row and head, q (R, H, 1, d), over the first L cached keys (R, H, d, L)
    (transposed) and values (R, H, L, d_v); bias (R, 1, 1, L) is 0 where a row may read and -inf elsewhere.
    L is a multiple of the read chunk: what a row may not read adds exact zeros (reads_agree checks that
    this machine's kernels then give a row the same bits whatever L its companions make it read)."""
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), keys_t)
    return torch.matmul(scores.add_(bias).softmax(dim=-1), values)


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x with zero rows appended up to `rows` (the rows a step computes beyond the active ones)."""
    return x if x.shape[0] == rows else F.pad(x, (0, 0) * (x.dim() - 1) + (0, rows - x.shape[0]))


class RowTables:
    """What each row reads besides its codes, one entry per cache row: its norms' gains and biases, its
    frames' cross-attention keys and values and whether it has frames, its aligned frame features."""

    def __init__(self, model: VideoGPT, rows: int, device: torch.device, dtype: torch.dtype):
        self.dtype = dtype
        c = model.config
        dim, seq_len = c.hidden_dim, math.prod(model.latent_shape)
        self.norms: dict[tuple[int | None, str], tuple[torch.Tensor, torch.Tensor]] = {}
        for index, layer in enumerate(model.attn_stack.attn_nets):
            for name in NORMS:
                if hasattr(layer, name):
                    self.norms[index, name] = (torch.ones(rows, 1, dim, device=device, dtype=dtype),
                                               torch.zeros(rows, 1, dim, device=device, dtype=dtype))
        self.norms[None, "norm"] = (torch.ones(rows, 1, dim, device=device, dtype=dtype),
                                    torch.zeros(rows, 1, dim, device=device, dtype=dtype))
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.gate = None
        if c.frame_conditional:
            grid = c.n_cond_frames * (model.vqvae.config.resolution // 4) ** 2
            for layer in model.attn_stack.attn_nets:
                attn = layer.enc_attn
                self.cross.append((torch.zeros(rows, c.heads, attn.d_k, grid, device=device, dtype=dtype),
                                   torch.zeros(rows, c.heads, grid, attn.d_v, device=device, dtype=dtype)))
            self.gate = torch.zeros(rows, 1, 1, device=device, dtype=dtype)
        self.aligned = torch.zeros(rows, seq_len, dim, device=device, dtype=dtype) if c.aligned_frames else None

    def tensors(self) -> list[torch.Tensor]:
        return [t for pair in self.norms.values() for t in pair] + self.frames_tensors()

    def frames_tensors(self) -> list[torch.Tensor]:
        """The frames' tables (zero for a row without frames): cross-attention keys and values, gate, aligned
        features."""
        return [t for pair in self.cross for t in pair] + [t for t in (self.gate, self.aligned) if t is not None]

    @torch.no_grad()
    def write(self, model: VideoGPT, rows: slice, cond: Conditioning) -> None:
        """Fill rows with the tables of cond (a batch of as many samples)."""
        cond = cond.to(self.dtype)
        norm_inputs = (cond.class_onehot, cond.frames_summary)
        modules = {(i, name): getattr(layer, name) for i, layer in enumerate(model.attn_stack.attn_nets)
                   for name in NORMS if hasattr(layer, name)}
        modules[None, "norm"] = model.norm
        for key, (gain, bias) in self.norms.items():
            g, b = modules[key].gain_bias(*norm_inputs, ndim=2)
            gain[rows, 0], bias[rows, 0] = g, b
        if self.gate is not None:
            count = rows.stop - rows.start
            if cond.frames is None:
                self.gate[rows] = 0
            else:
                present = torch.ones(count) if cond.frames_present is None else cond.frames_present.float()
                self.gate[rows, 0, 0] = present.to(self.gate)
                for (keys_t, values), layer in zip(self.cross, model.attn_stack.attn_nets):
                    k, v = layer.enc_attn.keys_values(cond.frames.to(keys_t))
                    keys_t[rows], values[rows] = k.transpose(-1, -2), v
        if self.aligned is not None:
            self.aligned[rows] = 0 if cond.frames_aligned is None else cond.frames_aligned

    def move(self, source: int, target: int) -> None:
        for t in self.tensors():
            t[target] = t[source]

    def clear(self, rows: slice) -> None:
        """Rows as the tables start them: plain norms (gain 1, bias 0), no frames."""
        for gain, bias in self.norms.values():
            gain[rows], bias[rows] = 1, 0
        for table in self.frames_tensors():
            table[rows] = 0


class RowViews:
    """The row tables and caches cut to rows [start, stop), made once per range and kept (views share the
    tables' storage, so they stay current)."""

    def __init__(self, decoder: RowDecoder, rows: slice):
        tables = decoder.tables
        self.norms = {key: (gain[rows], bias[rows]) for key, (gain, bias) in tables.norms.items()}
        self.cross = [(keys_t[rows], values[rows]) for keys_t, values in tables.cross]
        self.gate = None if tables.gate is None else tables.gate[rows]
        self.positions = decoder.positions[rows]


class DecodeContext:
    """One decoding pass over rows `rows` of a RowDecoder: the conditioning from its row tables, the
    self-attention through its KV cache. A step reads `length` cached positions (a multiple of the read
    chunk); a prefill computes positions 0..L-1 of its rows at once and writes them to the cache."""

    def __init__(self, decoder: RowDecoder, rows: slice, reads: list[tuple[int, int, int]] | int,
                 prefill: bool = False, active: int | None = None):
        """reads: (first row, end row, entries read) per group of the active rows (an int: one length for all;
        prefill: the prefix length). active: of a step's rows [0, n), the first `active` hold samples (the
        rest only make whole tiles for the matmuls: they skip attention)."""
        self.decoder, self.rows, self.prefill = decoder, rows, prefill
        self.views = decoder.views(rows)
        self.reads_frames = self.views.gate is not None
        if not prefill:
            self.count, self.active = rows.stop, rows.stop if active is None else active
            self.live = decoder.views(slice(0, self.active))
            self._prepare_step(decoder, [(0, self.active, reads)] if isinstance(reads, int) else reads)

    def _prepare_step(self, decoder: RowDecoder, reads: list[tuple[int, int, int]]) -> None:
        """What every layer of this step shares: where each row's new key and value go in each layer's cache
        (flat offsets), and per group of rows, which entries they read and the scores' bias over them."""
        positions = self.live.positions
        self.groups = []
        if decoder.kernel is not None:  # each row's blocks in order and how many of their entries it reads
            self.positions = positions  # where the kernel writes each row's new entry, before it reads
            if decoder.sparse:
                self.kernel_reads = (decoder.read_index.index_select(0, positions),
                                     decoder.read_counts.index_select(0, positions))
            else:
                self.kernel_reads = (decoder.all_blocks, positions + 1)
            return
        key_at, value_at = decoder.entry_offsets(positions)
        self.key_offsets = (decoder.key_base[:self.active] + key_at[:, None]).flatten()
        self.value_offsets = (decoder.value_base[:self.active] + value_at[:, None]).flatten()
        for first, end, length in reads:
            at = positions[first:end]
            bias = decoder.read_bias.index_select(0, at)[:, None, None, :length]
            if decoder.row_reads:  # a row's first blocks (length is a whole number of them)
                blocks = length // decoder.block
                read = (decoder.keys[:, first:end, :blocks], decoder.values[:, first:end, :blocks])
            elif decoder.sparse:  # the blocks each row reads, as rows of the flattened block cache
                blocks = decoder.read_index.index_select(0, at)[:, :math.ceil(length / decoder.block)]
                places = torch.arange(first, end, device=blocks.device)[:, None]
                read = (places * decoder.n_blocks + blocks).flatten()
            else:
                read = (decoder.keys[:, first:end, :, :, :length], decoder.values[:, first:end, :, :length])
            self.groups.append((slice(first, end), bias, read))

    def normalize(self, norm: LayerNorm, x: torch.Tensor, index: int | None) -> torch.Tensor:
        if self.decoder.ops is not None and not self.prefill:
            return self.decoder.ops.norm(x, *self.views.norms[norm.table_key])
        return LayerNorm.normalize(x, *self.views.norms[norm.table_key])

    def self_attention(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       dropout: float = 0.0) -> torch.Tensor:
        if self.prefill:
            length = q.shape[2]
            self.decoder.write_prefix(index, self.rows, k, v)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.decoder.mask[:length, :length])
        active = self.active
        if self.decoder.kernel is not None:  # the cache write and the attention in one call
            attended = self.decoder.kernel(q[:active], self.decoder.keys[index], self.decoder.values[index],
                                           *self.kernel_reads, new=(k[:active], v[:active], self.positions))
            return pad_rows(attended, self.count)
        self.decoder.flat_keys[index].index_copy_(0, self.key_offsets, k[:active].reshape(-1))
        self.decoder.flat_values[index].index_copy_(0, self.value_offsets, v[:active].reshape(-1, v.shape[-1]))
        heads = []
        for rows, bias, read in self.groups:
            if self.decoder.sparse:
                heads.append(attend_blocks(q[rows], *self.decoder.read_blocks(index, rows.stop - rows.start, read),
                                           bias))
            elif self.decoder.row_reads:
                heads.append(attend_blocks(q[rows], read[0][index], read[1][index], bias))
            else:
                heads.append(attend_cache(q[rows], read[0][index], read[1][index], bias))
        return pad_rows(heads[0] if len(heads) == 1 else torch.cat(heads), self.count)

    def cross_attention(self, index: int, q: torch.Tensor, attn: MultiHeadAttention) -> torch.Tensor:
        if self.decoder.cross_kernel is not None and not self.prefill:
            keys_t, values = self.decoder.tables.cross[index]
            blocks, counts = self.decoder.cross_reads
            heads = self.decoder.cross_kernel(q[:self.active], keys_t[:, None], values[:, None], blocks,
                                              counts[:self.active])
            return pad_rows(heads, self.count)
        views = self.views if self.prefill else self.live
        keys_t, values = views.cross[index]
        q = q if self.prefill else q[:self.active]
        scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), keys_t)
        heads = torch.matmul(scores.softmax(dim=-1), values)
        return heads if self.prefill else pad_rows(heads, self.count)

    def gate_frames(self, branch: torch.Tensor) -> torch.Tensor:
        return branch * self.views.gate


class RowDecoder:
    """Up to `rows` sequences of one prior decoded together, each at its own position (see the module)."""

    def __init__(self, gpt: VideoGPT, rows: int, cuda_graph: bool | None = None, precision: str | None = None):
        """precision: the decoding precision (default: the prior's decode_precision, else float32)."""
        self.model = decoding_copy(gpt, precision or getattr(gpt, "decode_precision", "float32"))
        c, weight = self.model.config, self.model.fc_in.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.cuda_graph = self.device.type == "cuda" and CUDA_GRAPHS if cuda_graph is None else cuda_graph
        # Steps compute whole tiles of rows: the same tile for every decoder of this model on this machine,
        # whatever its size, so a seed gives the same codes in a one-sample `sample` as in a worker's engine.
        self.tile = 1 if self.cuda_graph else row_tile(self.model)
        self.capacity, self.seq_len = rows, math.prod(self.model.latent_shape)
        rows = self.tile * math.ceil(rows / self.tile)  # room for the last tile, beyond the rows admitted
        attn = self.model.attn_stack.attn_nets[0].attn
        self.sparse = c.attn_type == "sparse"
        on_cpu = self.device.type == "cpu"
        # On CPU a compiled kernel attends each row over its own blocks in one call a layer (row_attention.py):
        # any precision then keeps its cache block by block, as the row reads below do.
        kernel_block = c.sparse_block_size if self.sparse else full_attention_block(self.seq_len)
        self.kernel = row_attention(self.dtype, attn.d_k, attn.d_v, kernel_block) if on_cpu else None
        # And its steps' norms in one compiled call each (row_ops.py), float32.
        self.ops = row_ops() if on_cpu and self.dtype == torch.float32 else None
        # Full attention: keys (layers, rows, heads, d_k, N) transposed, values (layers, rows, heads, N, d_v),
        # so a step reads a prefix. Sparse: the same block by block (layers, rows, blocks, heads, d_k, block)
        # and (layers, rows, blocks, heads, block, d_v), so a step reads whole blocks (index_select of
        # contiguous rows: a gather of single entries cost 8x as much).
        # Full attention in bfloat16 (and int8's bfloat16 cache) on CPU: the block layout too, each row
        # reading its own first blocks, contiguous. torch's CPU bfloat16 batched products copy an operand
        # that is not contiguous, and a prefix of the whole-video layout is not: at 8 rows of bair-like
        # those copies were 58% of a step (AMD EPYC, 2 threads).
        self.row_reads = not self.sparse and on_cpu and (self.kernel is not None or self.dtype != torch.float32)
        self.blocked = self.sparse or self.row_reads
        self.block = kernel_block if self.blocked else self.seq_len
        # The read chunk: steps read a multiple of it. A CUDA graph's steps all read the same (full_read), so
        # there only a sparse prior's padded read width depends on it: its blocks, no more. The kernel reads
        # each row's own entries whatever the chunk.
        if self.row_reads or self.kernel is not None or (self.sparse and self.cuda_graph):
            self.chunk = self.block
        else:
            self.chunk = next((chunk for chunk in READ_CHUNKS if self.seq_len % chunk == 0 and reads_agree(
                c.heads, attn.d_k, attn.d_v, self.seq_len, chunk, self.tile, self.dtype, self.device,
                self.block if self.sparse else None)), self.seq_len)
        self.n_blocks = self.seq_len // self.block
        self.all_blocks = torch.arange(self.n_blocks, device=self.device)[None]  # what a full-attention row reads
        per_layer = (c.layers, rows, c.heads) if not self.blocked else (c.layers, rows, self.n_blocks, c.heads)
        self.keys = torch.zeros(*per_layer, attn.d_k, self.block, device=self.device, dtype=self.dtype)
        self.values = torch.zeros(*per_layer, self.block, attn.d_v, device=self.device, dtype=self.dtype)
        self.flat_keys = [layer.view(-1) for layer in self.keys]  # where a step writes its new entries
        self.flat_values = [layer.view(-1, attn.d_v) for layer in self.values]
        self.key_blocks = [layer.view(rows * self.n_blocks, -1) for layer in self.keys]  # what sparse reads
        self.value_blocks = [layer.view(rows * self.n_blocks, -1) for layer in self.values]
        self._views: dict[tuple[int, int], RowViews] = {}
        self.mask = causal_mask(self.model.latent_shape, c.attn_type, c.sparse_block_size,
                                c.sparse_local_blocks).to(self.device)
        # What a step adds to its scores (0 where a position may read, -inf elsewhere; sparse: over what it
        # gathers), and where in the flattened caches each place's entries of position 0 are (a step adds
        # entry_offsets of its rows' positions).
        self.read_bias = torch.zeros(self.mask.shape, dtype=self.dtype, device=self.device).masked_fill_(
            ~self.mask, float("-inf"))
        places = torch.arange(rows, device=self.device)[:, None] * self.n_blocks * c.heads
        heads_of = places + torch.arange(c.heads, device=self.device)
        self.key_base = ((heads_of[..., None] * attn.d_k + torch.arange(attn.d_k, device=self.device))
                         * self.block).flatten(1)
        self.value_base = heads_of * self.block
        self._block_strides = (c.heads * attn.d_k * self.block, c.heads * self.block)
        self.merge_below = GROUP_COST_VALUES / (c.heads * (attn.d_k + attn.d_v))  # entries (see read_groups)
        if self.sparse:
            self._sparse_reads()
        self.tables = RowTables(self.model, rows, self.device, self.dtype)
        # A frames prior's step on CPU: its frame cross-attention through the kernel too, each row over its
        # frames' grid as one block (the tables hold the keys transposed, as the kernel reads a block).
        self.cross_kernel = None
        if self.tables.cross and self.kernel is not None:
            cross, grid = self.model.attn_stack.attn_nets[0].enc_attn, self.tables.cross[0][0].shape[-1]
            self.cross_kernel = row_attention(self.dtype, cross.d_k, cross.d_v, grid)
            self.cross_reads = (torch.zeros(1, 1, dtype=torch.long), torch.full((rows,), grid, dtype=torch.long))
        with torch.no_grad():  # code -> input feature, once; the last entry is the start-of-sequence vector
            features = self.model.fc_in(self.model.vqvae.codebook.embeddings.to(self.dtype))
            self.token_features = torch.cat([features, self.model.attn_stack.right_shift.sos[None].to(self.dtype)])
            self.position_features = self.model.attn_stack.pos_embd.table().flatten(0, -2).to(self.dtype)
        self.sos = self.token_features.shape[0] - 1
        self.positions = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.tokens = torch.full((rows,), self.sos, dtype=torch.long, device=self.device)
        self.active = 0
        self.ids: list[int] = []  # the id of the row at each active place
        self._next_id = 0
        self._graph: Callable[[], torch.Tensor] | None = None
        # On CPU, a step's layers in one compiled call where they are all compiled kernels (row_step.py).
        self.compiled_step = row_step(self, lambda rows: self._step(rows, self.read_groups(), rows))

    def _sparse_reads(self) -> None:
        """Sparse attention reads a few blocks (the local window and the strided ones), not the prefix: each
        position's blocks in order (`read_index`, padded to a multiple of the read chunk), ending with its
        own block. Their entries begin with the position's readable ones in order (the earlier blocks whole,
        its own up to itself): `read_counts` of them, then the rest of its block and the padding, which
        the scores' bias (0, then -inf) leaves out."""
        reads = [row.nonzero().flatten() for row in self.mask.cpu()]
        self.read_counts = torch.tensor([len(r) for r in reads], device=self.device)
        width = self.chunk * math.ceil(int(self.read_counts.max()) / self.chunk)
        index = torch.zeros(self.seq_len, math.ceil(width / self.block), dtype=torch.long)
        bias = torch.full((self.seq_len, width), float("-inf"), dtype=self.dtype)
        for position, read in enumerate(reads):
            blocks = torch.unique_consecutive(read // self.block)
            index[position, :len(blocks)] = blocks
            bias[position, :len(read)] = 0
        self.read_index, self.read_bias = index.to(self.device), bias.to(self.device)

    def entry_offsets(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the entries of these positions are in a place's flattened keys and values (added to
        key_base and value_base)."""
        if not self.blocked:
            return positions, positions
        block, within = positions // self.block, positions % self.block
        return block * self._block_strides[0] + within, block * self._block_strides[1] + within

    def write_prefix(self, index: int, rows: slice, k: torch.Tensor, v: torch.Tensor) -> None:
        """Layer index's cache of rows holds k and v (rows, heads, L, d) at positions 0..L-1."""
        length = k.shape[2]
        if not self.blocked:
            self.keys[index, rows, :, :, :length] = k.transpose(-1, -2)
            self.values[index, rows, :, :length] = v
            return
        blocks = math.ceil(length / self.block)
        pad = blocks * self.block - length  # the rest of the last block: written again before it is read
        k, v = (F.pad(t, (0, 0, 0, pad)).unflatten(2, (blocks, self.block)).transpose(1, 2) for t in (k, v))
        self.keys[index, rows, :blocks] = k.transpose(-1, -2)
        self.values[index, rows, :blocks] = v

    def read_blocks(self, index: int, count: int, flat_blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse: layer index's keys (count, blocks, heads, d_k, block) and values (count, blocks, heads,
        block, d_v) of the blocks at flat_blocks (count x blocks rows of the block cache)."""
        shape = self.keys.shape[3:]
        keys = self.key_blocks[index].index_select(0, flat_blocks).view(count, -1, *shape)
        return keys, self.value_blocks[index].index_select(0, flat_blocks).view(count, -1, *self.values.shape[3:])

    def read_length(self, positions: torch.Tensor) -> int:
        """How many cached entries a step of rows at these positions reads (a multiple of the read chunk)."""
        furthest = int((self.read_counts[positions] if self.sparse else positions + 1).max())
        return min(self.full_read, self.chunk * math.ceil(furthest / self.chunk))

    def read_groups(self) -> list[tuple[int, int, int]]:
        """Row reads: a group per active row, reading its own first blocks (the count of entries). Else the
        active rows in at most READ_GROUPS runs of places, each reading as far as its furthest row:
        rows are kept in the order they came in, so positions fall along the places and a few runs read
        little more than each row's own prefix (a run per read length would cost a call per run)."""
        if self.kernel is not None:  # every row reads its own entries in the one call
            return [(0, self.active, self.full_read)]
        positions = self.positions[:self.active]
        counts = self.read_counts[positions] if self.sparse else positions + 1
        lengths = (torch.ceil(counts / self.chunk) * self.chunk).clamp_(max=self.full_read).tolist()
        if self.row_reads:
            return [(place, place + 1, int(length)) for place, length in enumerate(lengths)]
        groups = []  # [first, end, length] runs of equal length, then merged where it costs least
        for place, length in enumerate(lengths):
            if groups and groups[-1][2] == length:
                groups[-1][1] = place + 1
            else:
                groups.append([place, place + 1, int(length)])

        def extra(a: list[int], b: list[int]) -> int:  # entries read beyond need if a and b read together
            longest = max(a[2], b[2])
            return (a[1] - a[0]) * (longest - a[2]) + (b[1] - b[0]) * (longest - b[2])

        while len(groups) > 1:
            costs = [extra(groups[i], groups[i + 1]) for i in range(len(groups) - 1)]
            i = min(range(len(costs)), key=costs.__getitem__)
            if len(groups) <= READ_GROUPS and costs[i] > self.merge_below:
                break
            a, b = groups[i], groups.pop(i + 1)
            groups[i] = [a[0], b[1], max(a[2], b[2])]
        return [tuple(g) for g in groups]

    def mean_read(self, rows: int = 1) -> float:
        """The entries a row reads per step, on average over a video (rows in step: the furthest sets it)."""
        positions = torch.arange(self.seq_len, device=self.device)
        counts = self.read_counts if self.sparse else positions + 1
        return float((self.chunk * torch.ceil(counts / self.chunk)).mean())

    def views(self, rows: slice) -> RowViews:
        key = (rows.start, rows.stop)
        if key not in self._views:
            self._views[key] = RowViews(self, rows)
        return self._views[key]

    @property
    def free(self) -> int:
        return self.capacity - self.active

    def place(self, row_id: int) -> int:
        """Where a row is in the cache now (rows move when others leave)."""
        return self.ids.index(row_id)

    @torch.no_grad()
    def admit(self, cond: Conditioning, count: int) -> list[int]:
        """Start `count` rows at position 0 with cond's conditioning (a batch of count); their ids."""
        if count > self.free:
            raise RuntimeError(f"{count} rows do not fit: {self.free} of {self.capacity} are free")
        rows = slice(self.active, self.active + count)
        self.tables.write(self.model, rows, cond)
        self.positions[rows], self.tokens[rows] = 0, self.sos
        ids = list(range(self._next_id, self._next_id + count))
        self._next_id += count
        self.ids += ids
        self.active += count
        return ids

    @torch.no_grad()
    def prefill(self, row_ids: list[int], codes: torch.Tensor) -> None:
        """Teacher-force each row through codes (rows, P) in one pass: its cache then holds positions
        0..P-1 and its next step computes position P. Rows are prefilled one at a time, so a row's cache
        does not depend on the rows beside it."""
        for row_id, row_codes in zip(row_ids, codes):
            self._prefill_row(self.place(row_id), row_codes.to(self.device))

    def _prefill_row(self, place: int, codes: torch.Tensor) -> None:
        rows, length = slice(place, place + 1), codes.shape[0]
        if length == 0:
            self.positions[place], self.tokens[place] = 0, self.sos
            return
        x = self.token_features[F.pad(codes[None, :-1], (1, 0), value=self.sos)] + self.position_features[:length]
        if self.tables.aligned is not None:
            x = x + self.tables.aligned[rows, :length]
        self.model.trunk(x, DecodeContext(self, rows, length, prefill=True))
        self.positions[place], self.tokens[place] = length, codes[-1]

    @torch.no_grad()
    def restart(self, row_id: int, codes: torch.Tensor, cond: Conditioning | None = None) -> None:
        """Start a row over in its place (the next window of a long video): optionally new conditioning,
        then codes (P,) prefilled as positions 0..P-1."""
        place = self.place(row_id)
        if cond is not None:
            self.tables.write(self.model, slice(place, place + 1), cond)
        self._prefill_row(place, codes.to(self.device))

    def release(self, row_ids: list[int]) -> None:
        """Free rows. Where every row reads its own entries whatever its place (the attention kernel; the
        CUDA graph's whole reads), the last active row moves into each freed place: one move of a row's
        cache, where moving the rows after it up a place had moved up to all of them (at saturation 26
        moves of 2.4 MB a job for the shipped prior, 5% of the engine's time). Otherwise the rows after it
        move up, so places keep the order rows came in (oldest first: furthest along, see read_groups)."""
        for row_id in row_ids:
            place, last = self.place(row_id), self.active - 1
            if self.kernel is not None or self.cuda_graph:
                if place != last:
                    self._move(last, place)
                    self.ids[place] = self.ids[last]
                self.ids.pop()
            else:
                for source in range(place + 1, self.active):
                    self._move(source, source - 1)
                self.ids.pop(place)
            self.active -= 1
            self.positions[self.active] = 0  # a place past the active rows may still be computed (see step)

    def _move(self, source: int, target: int) -> None:
        written = min(int(self.positions[source]) + 1, self.seq_len)  # a last step leaves positions at N - 1
        if self.blocked:
            blocks = math.ceil(written / self.block)
            self.keys[:, target, :blocks] = self.keys[:, source, :blocks]
            self.values[:, target, :blocks] = self.values[:, source, :blocks]
        else:
            self.keys[:, target, ..., :written] = self.keys[:, source, ..., :written]
            self.values[:, target, :, :written] = self.values[:, source, :, :written]
        self.tables.move(source, target)
        self.positions[target], self.tokens[target] = self.positions[source], self.tokens[source]

    def set_tokens(self, places: torch.Tensor, codes: torch.Tensor) -> None:
        """The codes (n,) the rows at places (n,) read at their next step (what was drawn for them)."""
        self.tokens.index_copy_(0, places.to(self.device), codes.to(self.device))

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Advance every active row by one position; logits (active, n_codes) of the position each computed,
        in place order."""
        if self.active == 0:
            raise RuntimeError("no active rows to step")
        if self.cuda_graph:
            if self._graph is None:
                self._graph = self._capture()
            return self._graph()[:self.active]
        # (while the prior's products are the compiled ones: another decoder of it, chosen at another thread
        # count, may have set others, and a seed must give the same codes in both)
        if self.compiled_step is not None and self.model.decode_products.compiled:
            return self.compiled_step.step(self.active)
        count = self.tile * math.ceil(self.active / self.tile)
        return self._step(count, self.read_groups(), self.active)[:self.active]

    def reset_rows(self, rows: int) -> None:
        """Rows [0, rows) as a fresh decoder has them (no conditioning, empty caches, position 0); none active."""
        self.tables.clear(slice(0, rows))
        self.keys[:, :rows], self.values[:, :rows] = 0, 0
        self.positions[:rows], self.tokens[:rows] = 0, self.sos
        self.active = 0

    @torch.no_grad()
    def step_full(self) -> torch.Tensor:
        """`step` as the CUDA graph captures it: every row over the whole cache, shapes that never change."""
        return self._step(self.positions.shape[0], self.full_read)[:self.active]

    @property
    def full_read(self) -> int:
        """The entries every step reads when shapes must not change (the CUDA graph)."""
        return self.read_bias.shape[1] if self.sparse else self.seq_len

    def _step(self, count: int, reads: list[tuple[int, int, int]] | int, active: int | None = None) -> torch.Tensor:
        """Rows [0, count) through the model, the first `active` of them attending (all: the fixed shapes of
        the CUDA graph), reading as read_groups says (an int: that many entries, every row)."""
        rows = slice(0, count)
        positions = self.positions[rows]
        x = self.token_features[self.tokens[rows]] + self.position_features[positions]
        if self.tables.aligned is not None:
            x = x + self.tables.aligned[torch.arange(count, device=self.device), positions]
        logits = self.model.trunk(x[:, None], DecodeContext(self, rows, reads, active=active))[:, 0]
        self.positions[rows] = (positions + 1).clamp_(max=self.seq_len - 1)
        return logits

    def _capture(self) -> Callable[[], torch.Tensor]:
        """The step over every row and the whole cache, captured as a CUDA graph and replayed (CUDA only)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        # Warm-up and capture run the step: they write each row's cache at its position and beyond, which
        # the real steps write again before reading; only the positions must be put back.
        saved = self.positions.clone()
        with torch.cuda.stream(side):  # warm-up outside the graph, as capture requires
            for _ in range(2):
                self.step_full()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self._step(self.positions.shape[0], self.full_read)
        self.positions.copy_(saved)

        def replay() -> torch.Tensor:
            graph.replay()
            # A copy: the graph writes every replay's logits to the same memory, and a caller that keeps a
            # step's logits (a float32 .float() is no copy) must not see the next step's in them.
            return logits.clone()

        return replay

