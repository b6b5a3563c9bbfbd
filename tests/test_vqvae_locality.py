"""VQ-VAE settings of ours: no axial attention (local codes), replicate padding; saved and loaded like any other."""

import pytest
import torch

from models import VQVAE, BundleInfo, ConfigError, VQVAEConfig, load_vqvae, save_bundle


def _vqvae(axial_attention: bool, padding: str = "zeros") -> VQVAE:
    torch.manual_seed(0)
    config = VQVAEConfig(embedding_dim=8, n_codes=16, n_hiddens=8, n_res_layers=1, downsample=(2, 4, 4),
                         sequence_length=4, resolution=32, axial_attention=axial_attention, padding=padding)
    return VQVAE(config).eval()


@pytest.mark.parametrize("axial_attention", [False, True])
def test_far_away_pixels_reach_a_code_only_through_attention(axial_attention):
    vq = _vqvae(axial_attention)
    video = torch.rand(1, 3, 4, 32, 32) - 0.5
    touched = video.clone()
    touched[:, :, 0, 0, 0] += 0.5  # top-left pixel of the first frame
    with torch.no_grad():
        before, after = vq.encode_continuous(video), vq.encode_continuous(touched)
    # The last cell of the touched pixel's row: 28 px away, beyond the convolutions' reach.
    far_cell_changed = not torch.equal(before[..., 0, 0, -1], after[..., 0, 0, -1])
    near_cell_changed = not torch.equal(before[..., 0, 0, 0], after[..., 0, 0, 0])
    assert near_cell_changed
    assert far_cell_changed == axial_attention


def test_setting_round_trips_through_a_bundle(tmp_path):
    vq = _vqvae(False)
    save_bundle(vq, tmp_path / "vq", BundleInfo(name="local", kind="vqvae"))
    loaded = load_vqvae(tmp_path / "vq")
    assert loaded.config.axial_attention is False
    video = torch.rand(2, 3, 4, 32, 32) - 0.5
    with torch.no_grad():
        assert torch.equal(loaded.encode(video), vq.encode(video))


def test_setting_must_be_a_bool():
    with pytest.raises(ConfigError, match="axial_attention must be true or false"):
        VQVAEConfig(axial_attention="no")


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_replicate_padding_gives_edge_cells_the_codes_of_inner_ones(padding):
    vq = _vqvae(False, padding)
    dark = torch.full((1, 3, 4, 32, 32), -0.5)  # an empty frame: background everywhere
    with torch.no_grad():
        z = vq.encode_continuous(dark)
    same_everywhere = bool(torch.allclose(z, z[..., :1, :1, :1].expand_as(z), atol=1e-6))
    assert same_everywhere == (padding == "replicate")


def test_padding_must_be_known():
    with pytest.raises(ConfigError, match="padding must be one of zeros, replicate"):
        VQVAEConfig(padding="reflect")
