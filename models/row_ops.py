"""A decoding step's linear products and layer norms on CPU in compiled calls (row_ops.c), float32: each
row's result the same bits whatever rows share the step, by construction (every output computed in one
fixed order), and each weight read once for eight rows (four where the CPU has no AVX-512).

torch's ways to that exactness cost more. A product of each row on its own (a batched call over the same
weights) reads the weights once per row; one product over all rows is exact only at row multiples that
row_tile has to find by probing. A norm is seven small operations (the reference's epsilon on the
reciprocal root, the per-row gains and biases), each a call with its own overhead; the MLP's GeLU2 four
more. On a 2-core AMD EPYC the compiled products took 0.45-0.65x the time of the one-row products for 16
and 32 rows of the shipped prior's shapes, and no longer for one or two. Holding each block's sums in
registers (they had gone through memory at every multiply-add), eight rows against two 16-float vectors
with AVX-512, and GeLU2 in vector code took the products 0.55-0.6x further on an Intel Xeon (AMX), and
the MLP's first with its GeLU2 0.86x.

Compiled at load for this CPU (models/kernels.py). Where there is no compiler, the compile fails, or the
kernels disagree with torch's arithmetic (or a row's bits change with the rows beside it) on a check at
load, `row_ops` returns None and the decoder computes with torch (and logs why once). kernels.ENABLED
without "row_ops" (the worker's VGS_CPU_KERNELS=false) turns them off.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
from pathlib import Path

import torch

from . import kernels
from .layers import LayerNorm

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("row_ops.c")
CHECK_TOLERANCE = 1e-5  # against torch's float32 arithmetic, relative to the largest output


class RowLinear:
    """The compiled products bound to one linear's weights: weight_t (K, N) float32 contiguous on CPU and bias
    (N,) or None (checked once here). Called with x (R, 1, K) float32 on CPU (each row's K values
    contiguous), it returns x @ weight_t + bias as (R, 1, N), through GeLU2 where `gelu`."""

    def __init__(self, function: ctypes._CFuncPtr, weight_t: torch.Tensor, bias: torch.Tensor | None, width: int):
        # The kernel reads raw memory at offsets it computes from these shapes: what does not match them must
        # not reach it.
        if not (weight_t.dtype == torch.float32 and weight_t.is_cpu and weight_t.dim() == 2
                and weight_t.is_contiguous() and (bias is None or (bias.dtype == torch.float32 and bias.is_cpu
                                                                   and bias.shape == weight_t.shape[1:]
                                                                   and bias.is_contiguous()))):
            raise ValueError(f"row linear takes float32 weights (K, N) and a bias (N,) contiguous on CPU, given "
                             f"{tuple(weight_t.shape)} {weight_t.dtype} {weight_t.device}, bias "
                             f"{None if bias is None else (tuple(bias.shape), bias.dtype)}")
        self.function, self.weight_t, self.bias = function, weight_t, bias  # kept alive while bound
        self.k_dim, self.n_dim = weight_t.shape
        self.packed = pack_columns(weight_t, width)  # what the kernel reads (row_ops.c), one block a run
        self._weights = ctypes.c_void_p(self.packed.data_ptr())
        self._bias = None if bias is None else ctypes.c_void_p(bias.data_ptr())

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        # A step calls this dozens of times: only what can differ from call to call is checked.
        if not (x.dtype == torch.float32 and x.is_cpu and x.dim() == 3 and x.shape[1] == 1
                and x.shape[2] == self.k_dim):
            raise ValueError(f"row linear for ({self.k_dim} -> {self.n_dim}) takes float32 rows (R, 1, "
                             f"{self.k_dim}) on CPU, given {tuple(x.shape)} {x.dtype} {x.device}")
        if x.stride(-1) != 1:
            x = x.contiguous()
        rows = x.shape[0]
        y = torch.empty(rows, 1, self.n_dim, dtype=torch.float32)
        self.function(x.data_ptr(), x.stride(0), self._weights, self._bias, y.data_ptr(), self.n_dim, rows,
                      self.k_dim, self.n_dim, int(gelu))
        return y


def pack_columns(weight_t: torch.Tensor, width: int) -> torch.Tensor:
    """weight_t (K, N) as row_linear reads it: each block of 2 * width columns (then one of width where one
    is left) as its own (K, block) strip, then the columns past the last whole vector as a (K, rest) one,
    all in one flat tensor."""
    n_dim = weight_t.shape[1]
    pairs = n_dim // (2 * width)
    edges = [i * 2 * width for i in range(pairs + 1)]
    if n_dim - edges[-1] >= width:
        edges.append(edges[-1] + width)
    if edges[-1] < n_dim:
        edges.append(n_dim)
    return torch.cat([weight_t[:, a:b].flatten() for a, b in itertools.pairwise(edges)])


class RowOps:
    """The compiled library: bind(weight_t, bias) gives a linear's products (RowLinear); norm(x, g, b) the
    reference's layer norm of rows x (R, 1, D) with gains and biases g, b (R, 1, D) or (D,)."""

    def __init__(self, library: ctypes.CDLL):
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        self.linear = library.row_linear
        self.linear.argtypes = [pointer, size, pointer, pointer, pointer, size, size, size, size, ctypes.c_int]
        self.linear.restype = None
        self.row_norm = library.row_norm
        self.row_norm.argtypes = [pointer, size] * 4 + [size, size]
        self.row_norm.restype = None
        self.width = library.row_vector_width()

    def bind(self, weight_t: torch.Tensor, bias: torch.Tensor | None) -> RowLinear:
        return RowLinear(self.linear, weight_t, bias, self.width)

    def norm(self, x: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        rows, dim = x.shape[0], x.shape[-1]
        if not (x.dtype == g.dtype == b.dtype == torch.float32 and x.is_cpu and g.is_cpu and b.is_cpu
                and x.dim() == 3 and x.shape[1] == 1 and x.stride(-1) == g.stride(-1) == b.stride(-1) == 1
                and _per_row(g, rows, dim) and _per_row(b, rows, dim)):
            raise ValueError(f"row norm takes float32 rows (R, 1, D) on CPU, each row contiguous, and gains and "
                             f"biases (R, 1, D) or (D,), given x {tuple(x.shape)} {x.dtype}, g {tuple(g.shape)}, "
                             f"b {tuple(b.shape)}")
        y = torch.empty(rows, 1, dim, dtype=torch.float32)
        self.row_norm(x.data_ptr(), x.stride(0), g.data_ptr(), _row_stride(g), b.data_ptr(), _row_stride(b),
                      y.data_ptr(), dim, rows, dim)
        return y


def _per_row(t: torch.Tensor, rows: int, dim: int) -> bool:
    return t.shape == (dim,) or (t.dim() == 3 and t.shape[0] >= rows and t.shape[1:] == (1, dim))


def _row_stride(t: torch.Tensor) -> int:
    return 0 if t.dim() == 1 else t.stride(0)


def row_ops() -> RowOps | None:
    """The compiled products and norms, or None where they are off, cannot be built here or fail their
    check (the decoder then computes with torch)."""
    if "row_ops" not in kernels.ENABLED:
        return None
    return _checked()


@functools.cache
def _checked() -> RowOps | None:
    library = kernels.load(SOURCE, (), log, "row ops kernels", "decoding multiplies and normalizes with torch")
    if library is None:
        return None
    ops = RowOps(library)
    error = _check(ops)
    if error is None:
        log.warning("row ops kernels give a row other bits beside other rows; not used")
        return None
    if error > CHECK_TOLERANCE:
        log.warning("row ops kernels differ from torch's arithmetic by %.3g; not used", error)
        return None
    log.info("row ops kernels (largest difference from torch %.2g)", error)
    return ops


def _check(ops: RowOps) -> float | None:
    """The kernels' largest difference from torch's arithmetic (relative to the largest output) over shapes
    that take their every path (whole and short blocks of rows and columns, a strided input, no bias,
    GeLU2, shared and per-row gains), or None where a row's bits differ between computed alone and beside
    others."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0

    def compare(got: torch.Tensor, expected: torch.Tensor) -> None:
        nonlocal worst
        worst = max(worst, float((got - expected).abs().max() / expected.abs().max()))

    for rows, k_dim, n_dim, with_bias, gelu in ((1, 24, 16, True, False), (7, 40, 37, False, True),
                                                (11, 33, 64, True, True)):
        weight_t = torch.randn(k_dim, n_dim, generator=gen)
        bias = torch.randn(n_dim, generator=gen) if with_bias else None
        linear = ops.bind(weight_t, bias)
        x = torch.randn(rows, 1, 2 * k_dim, generator=gen)[..., :k_dim]  # rows 2K apart
        got = linear(x, gelu)
        expected = x @ weight_t + (0 if bias is None else bias)
        compare(got, (1.702 * expected).sigmoid() * expected if gelu else expected)  # GeLU2
        for row in range(rows):  # alone, and as the second of two (blocks of 4, 2 and 1 compute the rows)
            if not (torch.equal(linear(x[row:row + 1], gelu), got[row:row + 1])
                    and torch.equal(linear(x[max(row - 1, 0):row + 1], gelu)[-1], got[row])):
                return None
    for rows, dim, per_row in ((1, 24, False), (7, 37, True), (11, 64, True)):
        x = (torch.randn(rows, 1, 2 * dim, generator=gen) * 3 + 1)[..., :dim]
        shape = (rows, 1, dim) if per_row else (dim,)
        g, b = 1 + 0.1 * torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
        got = ops.norm(x, g, b)
        compare(got, LayerNorm.normalize(x, g, b))
        for row in range(rows):
            alone = (g[row:row + 1], b[row:row + 1]) if per_row else (g, b)
            if not torch.equal(ops.norm(x[row:row + 1], *alone), got[row:row + 1]):
                return None
    return worst
