"""The compiled CPU attention of a decoding step (models/row_attention.py): equal to torch's arithmetic, a row's
result the same bits whatever rows share its call and whatever the thread count, and decoding that still works
(with torch's operations) where the kernel cannot be built or fails its check (test_sampling's teacher-forcing
test runs both ways)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from model_factory import random_gpt
from test_generality import CASES

from models import row_attention
from models.decoding import RowDecoder
from models.row_attention import attend_blocks


def kernel_for(dtype: torch.dtype, d: int = 24, block: int = 16) -> row_attention.RowAttention:
    attend = row_attention.row_attention(dtype, d, d, block)
    assert attend is not None, "the kernel could not be built on this machine (the log says why)"
    return attend


def cache(dtype: torch.dtype, rows: int = 4, n_blocks: int = 5, heads: int = 3, d: int = 24, block: int = 16):
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn(rows, n_blocks, heads, d, block, generator=gen).to(dtype)
    values = torch.randn(rows, n_blocks, heads, block, d, generator=gen).to(dtype)
    q = (torch.randn(rows, heads, 1, d, generator=gen) * 2).to(dtype)
    return q, keys, values


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_the_kernel_attends_as_torch_does(dtype):
    """Rows at different lengths (inside a block, at its edge, the whole cache), over their first blocks: the
    kernel against attend_blocks, torch's operations on the same layout."""
    attend, (q, keys, values) = kernel_for(dtype), cache(dtype)
    counts = torch.tensor([1, 16, 37, 80])
    got = attend(q, keys, values, torch.arange(5)[None], counts)
    for row, count in enumerate(counts.tolist()):
        blocks = math.ceil(count / 16)
        bias = torch.zeros(1, 1, 1, count, dtype=dtype)
        expected = attend_blocks(q[row:row + 1], keys[row:row + 1, :blocks], values[row:row + 1, :blocks], bias)
        assert torch.allclose(got[row].float(), expected[0].float(), atol=1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_a_row_s_result_depends_on_nothing_but_itself(dtype):
    """The same bits alone or beside others (reading more or less than it), with its blocks read through a
    table of its own or a shared one, on one thread or two."""
    attend, (q, keys, values) = kernel_for(dtype), cache(dtype)
    counts = torch.tensor([70, 3, 80, 41])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        together = attend(q, keys, values, torch.arange(5)[None], counts)
        own_tables = attend(q, keys, values, torch.arange(5).repeat(4, 1), counts)
        torch.set_num_threads(1)
        one_thread = attend(q, keys, values, torch.arange(5)[None], counts)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(together, own_tables) and torch.equal(together, one_thread)
    for row in range(4):
        one = slice(row, row + 1)
        alone = attend(q[one], keys[one], values[one], torch.arange(5)[None], counts[one])
        assert torch.equal(alone[0], together[row]), f"row {row} changed beside the others"


def test_tensors_that_do_not_fit_the_kernel_are_refused():
    attend, (q, keys, values) = kernel_for(torch.float32), cache(torch.float32)
    blocks, counts = torch.arange(5)[None], torch.full((4,), 10)
    with pytest.raises(ValueError, match="built for torch.float32, d_k 24"):
        attend(q.bfloat16(), keys, values, blocks, counts)
    with pytest.raises(ValueError, match="given q"):
        attend(q, keys.transpose(-1, -2), values, blocks, counts)  # not contiguous, shapes swapped
    with pytest.raises(ValueError, match="counts"):
        attend(q, keys, values, blocks, counts[:2])


def test_blocks_are_read_in_the_order_the_table_gives():
    """Sparse priors read a few blocks, not a prefix: the table's order is the entries' order."""
    attend, (q, keys, values) = kernel_for(torch.float32), cache(torch.float32, rows=1)
    order = [3, 0, 4]
    got = attend(q, keys, values, torch.tensor([order]), torch.tensor([40]))
    gathered = (keys[:, order], values[:, order])
    expected = attend_blocks(q, *gathered, torch.zeros(1, 1, 1, 40))
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_the_kernel_writes_each_row_s_new_entry_before_it_reads(dtype):
    """new=(k, v, positions): each row's key and value land in its cache where the torch path writes them
    (block position // block, entry position % block; keys transposed within a block) and are read in the
    same call. Queries, keys and values split from one projection (rows apart, not contiguous) read as
    copies of them do."""
    attend, (_, keys, values) = kernel_for(dtype), cache(dtype)
    heads, d = keys.shape[2], keys.shape[3]
    fused = torch.randn(4, 1, 3 * heads * d, generator=torch.Generator().manual_seed(2)).to(dtype)
    q, k, v = (part.view(4, 1, heads, d).transpose(1, 2) for part in fused.split(heads * d, dim=-1))
    assert not q.is_contiguous()
    positions = torch.tensor([0, 15, 16, 79])
    written_keys, written_values = keys.clone(), values.clone()
    got = attend(q, written_keys, written_values, torch.arange(5)[None], positions + 1, new=(k, v, positions))
    expected_keys, expected_values = keys.clone(), values.clone()
    for row, at in enumerate(positions.tolist()):
        expected_keys[row, at // 16, :, :, at % 16] = k[row, :, 0]
        expected_values[row, at // 16, :, at % 16] = v[row, :, 0]
    assert torch.equal(written_keys, expected_keys) and torch.equal(written_values, expected_values)
    copies = attend(q.contiguous(), expected_keys, expected_values, torch.arange(5)[None], positions + 1)
    assert torch.equal(got, copies)


def test_a_position_beyond_the_cache_is_refused():
    attend, (q, keys, values) = kernel_for(torch.float32), cache(torch.float32)
    k, v = torch.zeros(4, 3, 1, 24), torch.zeros(4, 3, 1, 24)
    with pytest.raises(ValueError, match="beyond the cache's 80 entries"):
        attend(q, keys, values, torch.arange(5)[None], torch.full((4,), 10), new=(k, v, torch.tensor([0, 1, 80, 2])))
    with pytest.raises(ValueError, match="new"):
        attend(q, keys, values, torch.arange(5)[None], torch.full((4,), 10), new=(k[:2], v, torch.tensor([0] * 4)))


def test_without_a_compiler_decoding_uses_torch_and_says_why(fresh_kernels, monkeypatch, caplog):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    with caplog.at_level(logging.WARNING, logger="models.row_attention"):
        assert row_attention.row_attention(torch.float32, 24, 24, 16) is None
    assert "no C compiler (no-such-compiler-here)" in caplog.text
    vq, config = CASES["stride4x2x2-frames-full"]
    assert RowDecoder(random_gpt(vq, config, seed=1), rows=2).kernel is None


def test_a_failed_compile_and_a_kernel_that_disagrees_are_not_used(fresh_kernels, monkeypatch, caplog, tmp_path):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="models.row_attention"):
        assert row_attention.row_attention(torch.float32, 24, 24, 16) is None
    assert "failed: cc: internal error" in caplog.text
    monkeypatch.delenv("CC")
    row_attention._checked.cache_clear()  # a process remembers a kernel it could not have: it asks again
    monkeypatch.setitem(row_attention.CHECK_TOLERANCE, torch.float32, -1.0)  # any difference is too much
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="models.row_attention"):
        assert row_attention.row_attention(torch.float32, 24, 24, 16) is None
    assert "differs from torch's arithmetic" in caplog.text
