"""Checkpoints of shapes and combinations beyond the fixtures go through the same converter and API."""

import itertools

import pytest
import torch
from model_factory import official_args, official_state_dict, random_gpt
from official_format import write_official_checkpoint

from models import GPTConfig, VQVAEConfig, convert_official_checkpoint, load_gpt, load_vqvae
from models.layout import causal_mask, sparse_block_layout

CASES = {
    # class + frame conditioning + sparse attention at once, 3 heads, a shallow narrow ResNet
    "class-frames-sparse": (
        VQVAEConfig(embedding_dim=8, n_codes=32, n_hiddens=16, n_res_layers=1, downsample=(2, 4, 4),
                    sequence_length=8, resolution=32),
        GPTConfig(hidden_dim=48, heads=3, layers=2, attn_type="sparse", class_cond_dim=4, n_cond_frames=2,
                  resnet_widths=(8, 16, 16), resnet_blocks=(2, 1, 1, 2))),
    # BAIR's temporal-heavy downsample, frame conditioning with a 48-wide encoding, full attention, 6 heads
    "stride4x2x2-frames-full": (
        VQVAEConfig(embedding_dim=8, n_codes=16, n_hiddens=8, n_res_layers=2, downsample=(4, 2, 2),
                    sequence_length=8, resolution=16),
        GPTConfig(hidden_dim=36, heads=6, layers=1, attn_type="full", n_cond_frames=1,
                  resnet_widths=(4, 8, 8), resnet_blocks=(1, 2, 1, 1), resnet_dim=48)),
    # one temporal stage only, unconditional sparse, 1 head, 3 layers
    "stride1x2x2-uncond-sparse": (
        VQVAEConfig(embedding_dim=4, n_codes=8, n_hiddens=4, n_res_layers=0, downsample=(1, 2, 2),
                    sequence_length=2, resolution=16),
        GPTConfig(hidden_dim=12, heads=1, layers=3, attn_type="sparse")),
}


def inputs_for(gpt, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, gpt.n_codes, (batch, *gpt.latent_shape), generator=gen)
    labels = torch.randint(0, gpt.config.class_cond_dim, (batch,), generator=gen) \
        if gpt.config.class_cond_dim else None
    frames = None
    if gpt.config.n_cond_frames:
        r = gpt.vqvae.config.resolution
        frames = torch.rand(batch, 3, gpt.config.n_cond_frames, r, r, generator=gen) - 0.5
    return codes, labels, frames


@pytest.mark.parametrize("case", sorted(CASES))
def test_other_shapes_convert_and_compute_the_same(case, tmp_path):
    vq_config, gpt_config = CASES[case]
    original = random_gpt(vq_config, gpt_config)
    ckpt = write_official_checkpoint(tmp_path / "model.ckpt", official_state_dict(original), official_args(original))
    gpt = load_gpt(convert_official_checkpoint(ckpt, tmp_path / "bundle"))
    assert gpt.config == gpt_config
    assert gpt.vqvae.config == vq_config
    codes, labels, frames = inputs_for(gpt)
    with torch.no_grad():
        expected = original.logits(codes, labels, frames)
        got = gpt.logits(codes, class_labels=labels, cond_frames=frames)
        assert got.shape == (2, *vq_config.latent_shape, vq_config.n_codes)
        assert torch.equal(got, expected)
        video = torch.rand(2, 3, vq_config.sequence_length, vq_config.resolution, vq_config.resolution) - 0.5
        vq = load_vqvae(tmp_path / "bundle")
        assert torch.equal(vq.encode(video), original.vqvae.encode(video))
        assert vq.decode(codes).shape == video.shape


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_at_a_position_never_depend_on_later_codes(case):
    vq_config, gpt_config = CASES[case]
    gpt = random_gpt(vq_config, gpt_config, seed=3)
    codes, labels, frames = inputs_for(gpt, batch=1, seed=1)
    n = codes[0].numel()
    with torch.no_grad():
        base = gpt.logits(codes, labels, frames).flatten(1, 3)
        for j in (0, n // 3, n - 2):
            changed = codes.clone().flatten()
            changed[j] = (changed[j] + 1) % gpt.n_codes
            out = gpt.logits(changed.view_as(codes), labels, frames).flatten(1, 3)
            differs = (out - base).abs().amax(dim=-1)[0] > 0
            assert not differs[: j + 1].any(), f"position <= {j} saw code {j}"
            assert differs[j + 1:].any(), "later positions should see the change"


def test_single_layer_sparse_model_reads_exactly_its_layout():
    """With one layer, logits at i change with code j exactly when i may read position j + 1 (right shift)."""
    vq_config, gpt_config = CASES["class-frames-sparse"]
    gpt = random_gpt(vq_config, GPTConfig(**{**gpt_config.to_dict(), "layers": 1}), seed=5)
    codes, labels, frames = inputs_for(gpt, batch=1, seed=2)
    mask = causal_mask(gpt.latent_shape, "sparse")
    n = codes.numel()
    with torch.no_grad():
        base = gpt.logits(codes, labels, frames).flatten(1, 3)
        for j in (0, 40, 97, 200):
            changed = codes.clone().flatten()
            changed[j] = (changed[j] + 1) % gpt.n_codes
            out = gpt.logits(changed.view_as(codes), labels, frames).flatten(1, 3)
            # Exactly zero change outside the layout (masked keys get zero weight); any change inside it (a
            # tolerance would call a real but tiny float32 influence "no change").
            differs = (out - base).abs().amax(dim=-1)[0] > 0
            assert torch.equal(differs[j + 1:], mask[j + 1:, j + 1]), j
            assert n > j + 1


def reference_layout(shape, block=32, local=4):
    """The official StridedSparsityConfig, loop for loop (causal)."""
    seq_len = 1
    for s in shape:
        seq_len *= s
    cum, axis = 1, 0
    for axis in range(len(shape) - 1, -1, -1):
        cum *= shape[axis]
        if cum > block:
            break
    grid = (*shape[:axis], cum // block)
    n_blocks = seq_len // block
    layout = torch.zeros(n_blocks, n_blocks, dtype=torch.bool)
    for row in range(n_blocks):
        for col in range(max(0, row - local), row + 1):
            layout[row, col] = True
    flat_index = {idx: i for i, idx in enumerate(itertools.product(*[range(g) for g in grid]))}
    for idx, row in flat_index.items():
        for d in range(len(grid) - 1):
            for i in range(idx[d] + 1):
                layout[row, flat_index[(*idx[:d], i, *idx[d + 1:])]] = True
    return layout


@pytest.mark.parametrize("shape", [(4, 8, 8), (4, 32, 32), (2, 8, 8), (8, 16, 16), (16, 4, 4), (4, 4, 2)])
def test_sparse_layout_is_the_official_strided_layout(shape):
    assert torch.equal(sparse_block_layout(shape), reference_layout(shape))
