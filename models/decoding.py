"""Decoding a prior one position at a time: a KV cache allocated once, rows that come and go, a position
per row.

`RowDecoder` holds `rows` rows of cache for one prior. A row is one sequence being decoded (a sample, or
the companion row a guided sample reads its unconditioned logits from); it is admitted with its
conditioning, optionally prefilled with a prefix of codes in one teacher-forced pass, stepped one
position at a time, and released. Active rows are kept at the front of the cache (a released row is
filled by the last one), so a step computes rows [0, n) and reads the cache up to the furthest row's
position (rounded up to a chunk).

Exactness: a row's logits do not depend on which other rows share its step or where they are. Two things
would make them depend: matmul kernels that round a partial tile of rows differently, which the decoder
measures at start and avoids by computing whole tiles of rows (`row_tile`); and an
attention softmax whose sum is grouped by the length read, which `attend_cache` avoids by taking the
softmax over the whole cache's length (the scores past what was read are -inf). On CUDA the step is
captured once as a CUDA graph over every row and the whole cache, so its shapes never change at all.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .gpt import Conditioning, VideoGPT
from .layers import LayerNorm, MultiHeadAttention
from .layout import causal_mask

CALIBRATION_ROWS = 32  # invariant_rows checks row counts up to this
READ_CHUNK = 64  # a step reads the cache up to its furthest row's position, rounded up to this (or a divisor of N)
NORMS = ("pre_attn_norm", "pre_enc_norm", "pre_fc_norm")


class DecodeLinear(nn.Module):
    """y = x @ W^T + b with W^T stored contiguous: one row streams that layout faster than nn.Linear's
    (out, in) on CPU, and decoding a token at a time is bound by reading weights."""

    def __init__(self, *linears: nn.Linear):
        super().__init__()
        self.register_buffer("weight_t", torch.cat([lin.weight for lin in linears]).t().contiguous().detach())
        biases = [lin.bias for lin in linears]
        self.register_buffer("bias", torch.cat(biases).detach() if all(b is not None for b in biases) else None)

    @property
    def in_features(self) -> int:
        return self.weight_t.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y.add_(self.bias)


def prepare_decoding(gpt: VideoGPT) -> VideoGPT:
    """A copy of the prior for decoding (eval mode, no gradients): its linears as DecodeLinear and each
    self-attention's three projections fused into one. It shares the VQ-VAE, the frame encoder and the
    class guide with gpt; the original stays as it is (for training)."""
    shared = {id(gpt.vqvae): gpt.vqvae}
    for name in ("resnet", "cond_pos_embd", "class_guide"):
        if getattr(gpt, name, None) is not None:
            shared[id(getattr(gpt, name))] = getattr(gpt, name)
    model = copy.deepcopy(gpt, memo=shared).eval().requires_grad_(False)
    model.norm.table_key = (None, "norm")  # which row table a norm's gains and biases are in
    for index, layer in enumerate(model.attn_stack.attn_nets):
        for name in NORMS:
            if hasattr(layer, name):
                getattr(layer, name).table_key = (index, name)
        attn = layer.attn
        attn.qkv = DecodeLinear(attn.w_qs, attn.w_ks, attn.w_vs)
        attn.fc = DecodeLinear(attn.fc)
        layer.fc_block[0], layer.fc_block[2] = DecodeLinear(layer.fc_block[0]), DecodeLinear(layer.fc_block[2])
        if hasattr(layer, "enc_attn"):
            layer.enc_attn.w_qs, layer.enc_attn.fc = DecodeLinear(layer.enc_attn.w_qs), DecodeLinear(layer.enc_attn.fc)
            layer.post_enc_dp = nn.Identity()
        layer.post_attn_dp, layer.post_fc_dp = nn.Identity(), nn.Identity()  # eval: dropout does nothing
    model.fc_out = DecodeLinear(model.fc_out)
    return model


_ROW_TILES: dict[tuple, int] = {}  # what row_tile and reads_agree measured, per shapes and thread count


def row_tile(model: VideoGPT) -> int:
    """The row count a step's computed rows are a multiple of, so that each row's result is the same bits
    however many rows there are. Matmul kernels work on tiles of rows and treat a partial last tile with
    other code and other rounding (MKL's float32 kernels here: tiles of 4); with whole tiles only, a row is
    computed alike wherever it is. Measured on this machine's kernels for the model's linear shapes."""
    linears = [m for m in model.modules() if isinstance(m, DecodeLinear)]
    shapes = {(m.weight_t.shape, m.weight_t.dtype, m.weight_t.device.type): m for m in linears}
    key = (tuple(sorted(shapes, key=str)), torch.get_num_threads())
    if key not in _ROW_TILES:
        tiles = [tile for tile in (1, 2, 4, 8, 16) if all(_whole_tiles_agree(m, tile) for m in shapes.values())]
        _ROW_TILES[key] = tiles[0] if tiles else CALIBRATION_ROWS
    return _ROW_TILES[key]


def _whole_tiles_agree(linear: DecodeLinear, tile: int) -> bool:
    """Whether every multiple of `tile` rows up to CALIBRATION_ROWS gives each row the bits it gets among
    CALIBRATION_ROWS rows."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(CALIBRATION_ROWS, 1, linear.in_features, generator=gen).to(linear.weight_t)
    with torch.no_grad():
        reference = linear(x)
        return all(torch.equal(linear(x[:rows]), reference[:rows]) for rows in range(tile, CALIBRATION_ROWS, tile))


def reads_agree(heads: int, d_k: int, d_v: int, seq_len: int, chunk: int, tile: int, dtype: torch.dtype,
                device: torch.device) -> bool:
    """Whether reading the cache up to a multiple of `chunk` gives each row the bits reading all of it does
    (the attention matmuls' kernels may change with the length read). If not, steps read all of it."""
    key = ("reads", heads, d_k, d_v, seq_len, chunk, tile, dtype, device.type, torch.get_num_threads())
    if key not in _ROW_TILES:
        gen = torch.Generator().manual_seed(0)
        q = torch.randn(tile, heads, 1, d_k, generator=gen).to(device, dtype)
        keys_t = torch.randn(tile, heads, d_k, seq_len, generator=gen).to(device, dtype)
        values = torch.randn(tile, heads, seq_len, d_v, generator=gen).to(device, dtype)
        agree = True
        for length in range(chunk, seq_len, chunk):
            readable = torch.arange(seq_len, device=device) < length - torch.arange(tile, device=device)[:, None]
            bias = torch.zeros(readable.shape, dtype=dtype, device=device).masked_fill_(
                ~readable, float("-inf"))[:, None, None, :]
            short = attend_cache(q, keys_t[..., :length], values[:, :, :length], bias)
            agree = agree and torch.equal(short, attend_cache(q, keys_t, values, bias))
        _ROW_TILES[key] = agree
    return bool(_ROW_TILES[key])


def attend_cache(q: torch.Tensor, keys_t: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Attention of one query per row and head, q (R, H, 1, d), over the first L cached keys (R, H, d, L)
    (transposed) and values (R, H, L, d_v). bias (R, 1, 1, N) is 0 where a row may read and -inf elsewhere,
    over the whole cache: the scores are padded to N before the softmax, so its sum adds the same terms in
    the same order whatever L is, and a row's result does not depend on how far its companions read."""
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), keys_t)
    length, total = scores.shape[-1], bias.shape[-1]
    if length < total:
        scores = F.pad(scores, (0, total - length), value=float("-inf"))
    weights = scores.add_(bias).softmax(dim=-1)
    return torch.matmul(weights[..., :length], values)


class RowTables:
    """What each row reads besides its codes, one entry per cache row: its norms' gains and biases, its
    frames' cross-attention keys and values and whether it has frames, its aligned frame features."""

    def __init__(self, model: VideoGPT, rows: int, device: torch.device, dtype: torch.dtype):
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
        found = [t for pair in self.norms.values() for t in pair] + [t for pair in self.cross for t in pair]
        return found + [t for t in (self.gate, self.aligned) if t is not None]

    @torch.no_grad()
    def write(self, model: VideoGPT, rows: slice, cond: Conditioning) -> None:
        """Fill rows with the tables of cond (a batch of as many samples)."""
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


class RowViews:
    """The row tables and caches cut to rows [start, stop), made once per range and kept (views share the
    tables' storage, so they stay current)."""

    def __init__(self, decoder: RowDecoder, rows: slice):
        tables = decoder.tables
        self.norms = {key: (gain[rows], bias[rows]) for key, (gain, bias) in tables.norms.items()}
        self.cross = [(keys_t[rows], values[rows]) for keys_t, values in tables.cross]
        self.gate = None if tables.gate is None else tables.gate[rows]
        self.places = decoder.places[rows]
        self.positions = decoder.positions[rows]


class DecodeContext:
    """One decoding pass over rows `rows` of a RowDecoder: the conditioning from its row tables, the
    self-attention through its KV cache. A step reads `length` cached positions (a multiple of the read
    chunk); a prefill computes positions 0..L-1 of its rows at once and writes them to the cache."""

    def __init__(self, decoder: RowDecoder, rows: slice, length: int, prefill: bool = False):
        self.decoder, self.rows, self.length, self.prefill = decoder, rows, length, prefill
        self.views = decoder.views(rows)
        self.reads_frames = self.views.gate is not None
        if not prefill:
            self._prepare_step(decoder, length)

    def _prepare_step(self, decoder: RowDecoder, length: int) -> None:
        """What every layer of this step shares: which keys each row may read, where its new key and value
        go in each layer's cache (flat offsets), and the part of the caches it reads."""
        positions = self.views.positions
        readable = decoder.mask.index_select(0, positions)
        self.bias = torch.zeros(readable.shape, dtype=decoder.dtype, device=decoder.device).masked_fill_(
            ~readable, float("-inf"))[:, None, None, :]
        _, _, heads, d_k, seq_len = decoder.keys.shape
        heads_of = (self.views.places[:, None] * heads + torch.arange(heads, device=decoder.device))
        self.key_offsets = ((heads_of[..., None] * d_k + torch.arange(d_k, device=decoder.device)) * seq_len
                            + positions[:, None, None]).flatten()
        self.value_offsets = (heads_of * seq_len + positions[:, None]).flatten()
        count = self.rows.stop
        self.keys_read = decoder.keys[:, :count, :, :, :length]
        self.values_read = decoder.values[:, :count, :, :length]

    def normalize(self, norm: LayerNorm, x: torch.Tensor, index: int | None) -> torch.Tensor:
        return LayerNorm.normalize(x, *self.views.norms[norm.table_key])

    def self_attention(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       dropout: float = 0.0) -> torch.Tensor:
        if self.prefill:
            length = q.shape[2]
            self.decoder.keys[index, self.rows, :, :, :length] = k.transpose(-1, -2)
            self.decoder.values[index, self.rows, :, :length] = v
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.decoder.mask[:length, :length])
        self.decoder.flat_keys[index].index_copy_(0, self.key_offsets, k.reshape(-1))
        self.decoder.flat_values[index].index_copy_(0, self.value_offsets, v.reshape(-1, v.shape[-1]))
        return attend_cache(q, self.keys_read[index], self.values_read[index], self.bias)

    def cross_attention(self, index: int, q: torch.Tensor, attn: MultiHeadAttention) -> torch.Tensor:
        keys_t, values = self.views.cross[index]
        scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), keys_t)
        return torch.matmul(scores.softmax(dim=-1), values)

    def gate_frames(self, branch: torch.Tensor) -> torch.Tensor:
        return branch * self.views.gate


class RowDecoder:
    """Up to `rows` sequences of one prior decoded together, each at its own position (see the module)."""

    def __init__(self, gpt: VideoGPT, rows: int, cuda_graph: bool | None = None):
        self.model = prepare_decoding(gpt)
        c, weight = self.model.config, self.model.fc_in.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.cuda_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        # Steps compute whole tiles of rows: the same tile for every decoder of this model on this machine,
        # whatever its size, so a seed gives the same codes in a one-sample `sample` as in a worker's engine.
        self.tile = 1 if self.cuda_graph else row_tile(self.model)
        self.capacity, self.seq_len = rows, math.prod(self.model.latent_shape)
        rows = self.tile * math.ceil(rows / self.tile)  # room for the last tile, beyond the rows admitted
        attn = self.model.attn_stack.attn_nets[0].attn
        self.chunk = math.gcd(self.seq_len, READ_CHUNK)
        if not reads_agree(c.heads, attn.d_k, attn.d_v, self.seq_len, self.chunk, self.tile, self.dtype, self.device):
            self.chunk = self.seq_len
        per_layer = (c.layers, rows, c.heads)
        self.keys = torch.zeros(*per_layer, attn.d_k, self.seq_len, device=self.device, dtype=self.dtype)
        self.values = torch.zeros(*per_layer, self.seq_len, attn.d_v, device=self.device, dtype=self.dtype)
        self.flat_keys = [layer.view(-1) for layer in self.keys]  # where a step writes its new entries
        self.flat_values = [layer.view(-1, attn.d_v) for layer in self.values]
        self._views: dict[tuple[int, int], RowViews] = {}
        self.mask = causal_mask(self.model.latent_shape, c.attn_type, c.sparse_block_size,
                                c.sparse_local_blocks).to(self.device)
        self.tables = RowTables(self.model, rows, self.device, self.dtype)
        with torch.no_grad():  # code -> input feature, once; the last entry is the start-of-sequence vector
            features = self.model.fc_in(self.model.vqvae.codebook.embeddings.to(self.dtype))
            self.token_features = torch.cat([features, self.model.attn_stack.right_shift.sos[None].to(self.dtype)])
            self.position_features = self.model.attn_stack.pos_embd.table().flatten(0, -2).to(self.dtype)
        self.sos = self.token_features.shape[0] - 1
        self.positions = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.places = torch.arange(rows, device=self.device)
        self.tokens = torch.full((rows,), self.sos, dtype=torch.long, device=self.device)
        self.active = 0
        self.ids: list[int] = []  # the id of the row at each active place
        self._next_id = 0
        self._graph: Callable[[], torch.Tensor] | None = None

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
        """Free rows: the last active rows move into their places."""
        for row_id in row_ids:
            place, last = self.place(row_id), self.active - 1
            if place != last:
                self._move(last, place)
            self.ids[place] = self.ids[last]
            self.ids.pop()
            self.positions[last] = 0  # a place past the active rows may still be computed (see step)
            self.active -= 1

    def _move(self, source: int, target: int) -> None:
        written = min(int(self.positions[source]) + 1, self.seq_len)  # a last step leaves positions at N - 1
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
        count = self.tile * math.ceil(self.active / self.tile)
        furthest = int(self.positions[:count].max()) + 1
        length = min(self.seq_len, self.chunk * math.ceil(furthest / self.chunk))
        return self._step(count, length)[:self.active]

    @torch.no_grad()
    def step_full(self) -> torch.Tensor:
        """`step` as the CUDA graph captures it: every row over the whole cache, shapes that never change."""
        return self._step(self.positions.shape[0], self.seq_len)[:self.active]

    def _step(self, count: int, length: int) -> torch.Tensor:
        rows = slice(0, count)
        positions = self.positions[rows]
        x = self.token_features[self.tokens[rows]] + self.position_features[positions]
        if self.tables.aligned is not None:
            x = x + self.tables.aligned[torch.arange(count, device=self.device), positions]
        logits = self.model.trunk(x[:, None], DecodeContext(self, rows, length))[:, 0]
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
            logits = self._step(self.positions.shape[0], self.seq_len)
        self.positions.copy_(saved)

        def replay() -> torch.Tensor:
            graph.replay()
            return logits

        return replay

