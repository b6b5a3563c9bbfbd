"""A decoding step's self-attention on CPU in one compiled call per layer (row_attention.c), and torch's
attention over the same block cache (attend_blocks), which the kernel is checked against and which the
decoder uses where the kernel is not.

torch computes a step's attention as a handful of small operations per row, or per group of rows (scale,
scores, mask, softmax, weighted values), each a call with its own overhead and a pass over memory; for a
bfloat16 cache its batched products copy operands that are not contiguous. One call per layer that reads
each row's cached blocks once, in place, reads them at close to the memory's bandwidth (2.6-3.4x torch's
operations for bair-like's shapes on a 2-core AMD EPYC).

The kernel is compiled at load for the prior's shapes and this CPU (models/kernels.py). Where there is no
compiler, the compile fails, or the compiled kernel's results disagree with torch's on a check at load,
`row_attention` returns None and the decoder attends with torch's operations (and logs why once).
kernels.ENABLED without it (the worker's VGS_CPU_KERNELS=false) turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from . import kernels

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("row_attention.c")
ELEMENTS = {torch.float32: 0, torch.bfloat16: 1}  # ELEM_BF16
CHECK_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}  # against torch's float32 arithmetic


class RowAttention:
    """attend(q, keys, values, blocks, counts) for one prior's shapes: q (R, H, 1, d_k), a layer's keys (rows,
    n, H, d_k, block) and values (rows, n, H, block, d_v) of which row r reads the blocks blocks[r] (a row of
    an (R, b) int64 table, or of a (1, b) one that every row shares) in order, the first counts[r] entries
    (an (R,) int64 tensor); the result (R, H, 1, d_v)."""

    def __init__(self, function: ctypes._CFuncPtr, dtype: torch.dtype, d_k: int, d_v: int, block: int):
        self.function, self.dtype, self.d_k, self.d_v, self.block = function, dtype, d_k, d_v, block
        self.scale = 1.0 / math.sqrt(d_k)

    def __call__(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, blocks: torch.Tensor,
                 counts: torch.Tensor, new: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                 ) -> torch.Tensor:
        """new: (k (R, H, 1, d_k), v (R, H, 1, d_v), positions (R,) int64): first write each row's new key and
        value to its cache at its position (a step's cache write, in the same call)."""
        rows, heads = q.shape[0], q.shape[1]
        # The kernel reads and writes raw memory at offsets it computes from these shapes: what does not
        # match them must not reach it.
        if not (q.dtype == keys.dtype == values.dtype == self.dtype and keys.is_contiguous()
                and values.is_contiguous() and keys.shape[-2:] == (self.d_k, self.block)
                and values.shape[-2:] == (self.block, self.d_v) and q.shape[-1] == self.d_k
                and blocks.dtype == counts.dtype == torch.int64 and counts.shape == (rows,) and rows <= keys.shape[0]
                and (new is None or self._fits(new, rows, heads))):
            raise ValueError(f"row attention built for {self.dtype}, d_k {self.d_k}, d_v {self.d_v}, blocks of "
                             f"{self.block}, given q {tuple(q.shape)} {q.dtype}, keys {tuple(keys.shape)}, values "
                             f"{tuple(values.shape)}, counts {tuple(counts.shape)}"
                             + ("" if new is None else f", new {[tuple(t.shape) for t in new]}"))
        # Rows may lie apart (queries, keys and values split from one projection): each row's heads must be
        # contiguous. Copies (kept alive through the call) where they are not.
        q = _rows_of_heads(q)
        out = torch.empty(rows, heads, 1, self.d_v, dtype=self.dtype)
        block_row = blocks.stride(0) if blocks.shape[0] > 1 else 0
        if new is None:
            written = (None, 0, None, 0, None)
        else:
            k, v, positions = _rows_of_heads(new[0]), _rows_of_heads(new[1]), new[2].contiguous()
            written = (k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), positions.data_ptr())
        failed = self.function(q.data_ptr(), keys.data_ptr(), values.data_ptr(), blocks.data_ptr(),
                               counts.data_ptr(), rows, heads, keys.stride(0), values.stride(0), block_row,
                               self.scale, out.data_ptr(), q.stride(0), *written)
        raise_for_failure(failed, keys.shape[1] * self.block)
        return out

    def _fits(self, new: tuple[torch.Tensor, torch.Tensor, torch.Tensor], rows: int, heads: int) -> bool:
        k, v, positions = new
        return (k.dtype == v.dtype == self.dtype and k.shape == (rows, heads, 1, self.d_k)
                and v.shape == (rows, heads, 1, self.d_v) and positions.dtype == torch.int64
                and positions.shape == (rows,))


def raise_for_failure(failed: int, entries: int) -> None:
    """attend_rows' return code (row_attention.c) as the error it means, for a cache of `entries` a row."""
    if failed == -1:
        raise MemoryError("row attention: no memory for a row's scores")
    if failed:
        raise ValueError(f"row attention: a position beyond the cache's {entries} entries")


def _rows_of_heads(x: torch.Tensor) -> torch.Tensor:
    """x (R, H, 1, d) with each row's heads contiguous (rows may lie any distance apart); a copy if not."""
    if x.stride(-1) == 1 and x.stride(1) == x.shape[-1] and x.stride(0) >= x.shape[1] * x.shape[-1]:
        return x
    return x.contiguous()


def attend_blocks(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Torch's attention over a block cache (decoding.attend_cache's arithmetic), the kernel's reference and the
    decoder's path where the kernel is not used: keys (R, n, H, d, block) (transposed within a block) and
    values (R, n, H, block, d_v), of which the first L entries count (bias (R, 1, 1, L)). Scores and weighted
    values are taken block by block and summed over blocks, so the blocks are never copied into one sequence
    (that copy cost 5x the attention); decoding.reads_agree checks the read lengths."""
    rows, n, heads, _, block = keys.shape
    length = bias.shape[-1]
    scores = torch.matmul((q * (1.0 / math.sqrt(q.shape[-1])))[:, None], keys)  # (R, n, H, 1, block)
    scores = scores.permute(0, 2, 3, 1, 4).reshape(rows, heads, 1, n * block)[..., :length]
    weights = F.pad(scores.add_(bias).softmax(dim=-1), (0, n * block - length))
    weights = weights.view(rows, heads, 1, n, block).permute(0, 3, 1, 2, 4)
    return torch.matmul(weights, values).sum(dim=1)


def row_attention(dtype: torch.dtype, d_k: int, d_v: int, block: int) -> RowAttention | None:
    """The compiled attention for these shapes, or None where it is off, cannot be built here or fails its
    check (the decoder then uses torch's operations)."""
    if "row_attention" not in kernels.ENABLED or dtype not in ELEMENTS:
        return None
    return _checked(dtype, d_k, d_v, block)


@functools.cache
def _checked(dtype: torch.dtype, d_k: int, d_v: int, block: int) -> RowAttention | None:
    defines = (f"-DELEM_BF16={ELEMENTS[dtype]}", f"-DDK={d_k}", f"-DDV={d_v}", f"-DBLOCK={block}")
    library = kernels.load(SOURCE, defines, log, "row attention kernel", "decoding attends with torch's operations")
    if library is None:
        return None
    function = library.attend_rows
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    function.argtypes = [pointer] * 5 + [size] * 5 + [ctypes.c_float, pointer, size] + [pointer, size] * 2 + [pointer]
    function.restype = ctypes.c_int
    attend = RowAttention(function, dtype, d_k, d_v, block)
    error = _check(attend)
    if error > CHECK_TOLERANCE[dtype]:
        log.warning("row attention kernel for %s differs from torch's arithmetic by %.3g; not used", dtype, error)
        return None
    log.info("row attention kernel for %s, d_k %d, d_v %d, blocks of %d (largest difference from torch %.2g)",
             dtype, d_k, d_v, block, error)
    return attend


def _check(attend: RowAttention) -> float:
    """The kernel's largest difference from torch's float32 arithmetic (attend_blocks, the decoder's own) on
    random rows: reads that end inside a block and at its edge, a row that shares its block table, and one
    with blocks out of order."""
    gen = torch.Generator().manual_seed(0)
    heads, n_blocks, block = 3, 3, attend.block
    keys = torch.randn(2, n_blocks, heads, attend.d_k, block, generator=gen).to(attend.dtype)
    values = torch.randn(2, n_blocks, heads, block, attend.d_v, generator=gen).to(attend.dtype)
    q = (torch.randn(2, heads, 1, attend.d_k, generator=gen) * 2).to(attend.dtype)
    worst = 0.0
    for order in ([0, 1, 2], [2, 0, 1]):
        blocks = torch.tensor([order], dtype=torch.int64)
        for counts in ([1, block], [block + 1, n_blocks * block]):
            counts_t = torch.tensor(counts, dtype=torch.int64)
            got = attend(q, keys, values, blocks, counts_t).float()
            for row, count in enumerate(counts):
                read = order[:math.ceil(count / block)]
                expected = attend_blocks(q[row:row + 1].float(), keys[row:row + 1, read].float(),
                                         values[row:row + 1, read].float(), torch.zeros(1, 1, 1, count))
                worst = max(worst, float((got[row] - expected[0]).abs().max()))
    return worst
