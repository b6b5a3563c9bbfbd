"""The compiled CPU products and norms of a decoding step (models/row_ops.py): equal to torch's arithmetic, a
row's result the same bits whatever rows share its call and whatever the thread count, shapes they were not
made for refused, and decoding that still works (with torch's operations) where they cannot be built or fail
their check (test_engine's same-bits cases and test_sampling's teacher-forcing test run both ways)."""

from __future__ import annotations

import logging

import pytest
import torch
from model_factory import random_gpt
from test_generality import CASES

from models import kernels, row_ops
from models.decoding import RowDecoder, row_gelu2
from models.layers import LayerNorm
from models.row_ops import pack_columns


def ops() -> row_ops.RowOps:
    found = row_ops.row_ops()
    assert found is not None, "the kernels could not be built on this machine (the log says why)"
    return found


def linear_inputs(rows: int, k_dim: int, n_dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 1, k_dim, generator=gen), torch.randn(k_dim, n_dim, generator=gen) / k_dim ** 0.5,
            torch.randn(n_dim, generator=gen))


@pytest.mark.parametrize("n_dim", [16, 144, 37, 56], ids=["one-block", "shipped-width", "with-tail-columns",
                                                      "blocks-of-two-and-one-vectors-and-a-tail"])
@pytest.mark.parametrize("gelu", [False, True], ids=["plain", "gelu2"])
def test_products_equal_torch_and_a_row_keeps_its_bits_whatever_its_companions(n_dim, gelu):
    x, weight_t, bias = linear_inputs(13, 40, n_dim)
    linear = ops().bind(weight_t, bias)
    got = linear(x, gelu)
    expected = x @ weight_t + bias
    assert (got - (row_gelu2(expected) if gelu else expected)).abs().max() < 1e-5
    for count in range(1, 14):  # every split into blocks of 8 (AVX-512) or 4, then 2 and 1 rows, at each place
        for first in range(0, 13 - count + 1, 3):
            part = linear(x[first:first + count], gelu)
            assert torch.equal(part, got[first:first + count]), f"rows {first}..{first + count} changed"


def test_packed_weights_hold_each_column_block_as_one_strip():
    """What row_linear reads: blocks of two vectors of columns, one of one vector, then the rest, each (K,
    width) contiguous (here vectors of 8: three blocks of 16 columns, one of 8, a last column)."""
    weight_t = torch.arange(3 * 57, dtype=torch.float32).view(3, 57)
    packed = pack_columns(weight_t, 8)
    strips = [(0, 16), (16, 32), (32, 48), (48, 56), (56, 57)]
    assert torch.equal(packed, torch.cat([weight_t[:, a:b].flatten() for a, b in strips]))


def test_products_read_strided_rows_and_take_no_bias():
    x, weight_t, _ = linear_inputs(6, 32, 48)
    wide = torch.cat([x, torch.randn_like(x)], dim=-1)[..., :32]  # each row's 32 values, rows 64 apart
    linear = ops().bind(weight_t, None)
    assert torch.equal(linear(wide), linear(x.contiguous()))
    assert (linear(x) - x @ weight_t).abs().max() < 1e-5


def test_products_keep_their_bits_at_another_thread_count():
    x, weight_t, bias = linear_inputs(9, 144, 432)
    linear = ops().bind(weight_t, bias)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = linear(x)
        torch.set_num_threads(max(2, threads))
        assert torch.equal(linear(x), one)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("per_row", [True, False], ids=["per-row-gains", "shared-gains"])
def test_norms_equal_the_reference_norm_and_keep_a_row_s_bits(per_row):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(7, 1, 2 * 37, generator=gen)[..., :37] * 4 + 2  # rows apart, a width with a tail
    shape = (7, 1, 37) if per_row else (37,)
    g, b = 1 + 0.1 * torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
    got = ops().norm(x, g, b)
    assert (got - LayerNorm.normalize(x, g, b)).abs().max() < 1e-5
    for row in range(7):
        alone = ops().norm(x[row:row + 1], g[row:row + 1] if per_row else g, b[row:row + 1] if per_row else b)
        assert torch.equal(alone, got[row:row + 1])


def test_shapes_and_types_the_kernels_were_not_made_for_are_refused():
    x, weight_t, bias = linear_inputs(3, 16, 32)
    linear = ops().bind(weight_t, bias)
    with pytest.raises(ValueError, match="row linear"):
        linear(x[..., :8])  # rows of another width
    with pytest.raises(ValueError, match="row linear"):
        linear(x.double())
    with pytest.raises(ValueError, match="row linear"):
        ops().bind(weight_t.t(), bias)  # not contiguous
    with pytest.raises(ValueError, match="row linear"):
        ops().bind(weight_t, bias[:5])
    with pytest.raises(ValueError, match="row norm"):
        ops().norm(x, torch.ones(3, 1, 8), torch.zeros(16))
    with pytest.raises(ValueError, match="row norm"):
        ops().norm(x.bfloat16(), torch.ones(16), torch.zeros(16))


def test_without_a_compiler_decoding_multiplies_and_normalizes_with_torch(fresh_kernels, monkeypatch, caplog):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    with caplog.at_level(logging.WARNING, logger="models.row_ops"):
        assert row_ops.row_ops() is None
    assert "no C compiler (no-such-compiler-here)" in caplog.text
    vq, config = CASES["stride4x2x2-frames-full"]
    decoder = RowDecoder(random_gpt(vq, config, seed=1), rows=2)
    assert decoder.ops is None and all(linear.compiled is None for linear in decoder.model.decode_linears)


def test_turned_off_or_disagreeing_kernels_are_not_used(fresh_kernels, monkeypatch, caplog):
    monkeypatch.setattr(kernels, "ENABLED", {"row_attention"})
    assert row_ops.row_ops() is None
    monkeypatch.setattr(kernels, "ENABLED", set(kernels.KERNELS))
    monkeypatch.setattr(row_ops, "CHECK_TOLERANCE", -1.0)  # any difference is too much
    with caplog.at_level(logging.WARNING, logger="models.row_ops"):
        assert row_ops.row_ops() is None
    assert "differ from torch's arithmetic" in caplog.text


def test_a_float32_decoder_on_cpu_takes_the_compiled_products_and_norms(favour_products):
    favour_products("compiled")  # found exact, and taken where fastest
    vq, config = CASES["stride4x2x2-frames-full"]
    decoder = RowDecoder(random_gpt(vq, config, seed=1), rows=2)
    assert decoder.ops is not None
    assert all(linear.compiled is not None for linear in decoder.model.decode_linears)
