"""Which positions the prior's causal self-attention may read: full causal, or the strided sparse layout.

The official GPTs run the strided layout through DeepSpeed's block-sparse kernels; here it is a boolean
mask over (query, key) positions with the same support, so any attention kernel can apply it.
"""

from __future__ import annotations

import math

import torch

from .errors import ConfigError


def sparse_block_grid(latent_shape: tuple[int, ...], block: int) -> tuple[int, ...]:
    """The grid the blocks of `block` consecutive positions form, e.g. (4, 32, 32) -> (4, 32)."""
    product = 1
    axis = 0
    for axis in range(len(latent_shape) - 1, -1, -1):
        product *= latent_shape[axis]
        if product > block:
            break
    if product % block:
        raise ConfigError(f"sparse attention needs the latent rows {list(latent_shape[axis:])} to fill whole "
                          f"blocks of {block} positions")
    return (*latent_shape[:axis], product // block)


def sparse_block_layout(latent_shape: tuple[int, ...], block: int = 32, local_blocks: int = 4) -> torch.Tensor:
    """(n_blocks, n_blocks) bool: block row r may read block column c."""
    seq_len = math.prod(latent_shape)
    if seq_len % block:
        raise ConfigError(f"sparse attention needs a sequence length divisible by the block size {block}; "
                          f"latent {list(latent_shape)} has {seq_len} positions")
    grid = sparse_block_grid(latent_shape, block)
    n_blocks = seq_len // block
    rows = torch.arange(n_blocks)
    # Local: the block itself and the `local_blocks` before it.
    layout = (rows[None, :] <= rows[:, None]) & (rows[None, :] >= rows[:, None] - local_blocks)
    # Strided: c equals r except on one grid axis d (not the last), where c's coordinate is <= r's.
    coords = torch.stack(torch.unravel_index(rows, grid), dim=-1)  # (n_blocks, len(grid))
    same = coords[:, None, :] == coords[None, :, :]  # (r, c, axis)
    not_after = coords[None, :, :] <= coords[:, None, :]
    for d in range(len(grid) - 1):
        others_same = torch.cat([same[..., :d], same[..., d + 1:]], dim=-1).all(dim=-1)
        layout |= others_same & not_after[..., d]
    return layout


def causal_mask(latent_shape: tuple[int, ...], attn_type: str, block: int = 32, local_blocks: int = 4) -> torch.Tensor:
    """(N, N) bool over raster-order positions: query i may read key j."""
    seq_len = math.prod(latent_shape)
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    if attn_type == "full":
        return causal
    if attn_type == "sparse":
        layout = sparse_block_layout(latent_shape, block, local_blocks)
        return causal & layout.repeat_interleave(block, 0).repeat_interleave(block, 1)
    raise ConfigError(f"attn_type must be 'full' or 'sparse', got {attn_type!r}")
