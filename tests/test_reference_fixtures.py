"""The official-format fixtures convert, load and reproduce the reference implementation's golden outputs."""

import pytest
import torch

from models import convert_official_checkpoint, load_gpt, load_vqvae

GPT_FIXTURES = ["gpt_classcond_full", "gpt_uncond_sparse", "gpt_framecond_full"]
TOLERANCE = 1e-4


def golden(fixtures_dir, name):
    return torch.load(fixtures_dir / f"{name}.golden.pt", weights_only=True)


def test_vqvae_reproduces_golden_codes_and_reconstruction(fixtures_dir, tmp_path):
    vq = load_vqvae(convert_official_checkpoint(fixtures_dir / "vqvae_s244.ckpt", tmp_path / "vq"))
    g = golden(fixtures_dir, "vqvae_s244")
    assert vq.latent_shape == (4, 8, 8)
    with torch.no_grad():
        codes = vq.encode(g["video"])
        assert codes.dtype == torch.long
        assert torch.equal(codes, g["encodings"])
        assert (vq.embed(codes) - g["embeddings"]).abs().max() < TOLERANCE
        assert (vq.decode(g["encodings"]) - g["decoded"]).abs().max() < TOLERANCE


@pytest.mark.parametrize("name", GPT_FIXTURES)
def test_gpt_reproduces_golden_logits(fixtures_dir, tmp_path, name):
    gpt = load_gpt(convert_official_checkpoint(fixtures_dir / f"{name}.ckpt", tmp_path / name))
    g = golden(fixtures_dir, name)
    with torch.no_grad():
        logits = gpt.logits(g["tokens"], class_labels=g.get("labels"), cond_frames=g.get("cond_frames"))
    assert logits.shape == g["step_logits"].shape
    for key in ("logits", "step_logits"):
        if key in g:
            assert (logits - g[key]).abs().max() < TOLERANCE, key


@pytest.mark.parametrize("name", GPT_FIXTURES)
def test_gpt_bundle_carries_the_vqvae_of_its_checkpoint(fixtures_dir, tmp_path, name):
    """A GPT checkpoint alone is enough: its VQ-VAE's settings are read off its tensors."""
    from models.safe_checkpoint import read_checkpoint

    gpt = load_gpt(convert_official_checkpoint(fixtures_dir / f"{name}.ckpt", tmp_path / name))
    vq = load_vqvae(tmp_path / name)
    assert vq.config == gpt.vqvae.config == load_vqvae(
        convert_official_checkpoint(fixtures_dir / "vqvae_s244.ckpt", tmp_path / "vq")).config
    state = read_checkpoint(fixtures_dir / f"{name}.ckpt")["state_dict"]
    for key, value in vq.state_dict().items():
        assert torch.equal(value, state[f"vqvae.{key}"].load()), key


def test_converted_configs_match_the_fixture_configs(fixtures_dir, tmp_path):
    import json

    for name in GPT_FIXTURES:
        expected = json.loads((fixtures_dir / f"{name}.config.json").read_text())
        gpt = load_gpt(convert_official_checkpoint(fixtures_dir / f"{name}.ckpt", tmp_path / name))
        c = gpt.config
        # The reference's VQ-VAEs all have axial attention and zero padding; these settings are ours.
        assert gpt.vqvae.config.to_dict() == {**expected["vqvae"], "axial_attention": True, "padding": "zeros"}
        for key in ("n_cond_frames", "class_cond_dim", "hidden_dim", "heads", "layers", "attn_type"):
            assert getattr(c, key) == expected[key], (name, key)
        if "resnet_widths" in expected:
            assert list(c.resnet_widths) == expected["resnet_widths"]
            assert list(c.resnet_blocks) == expected["resnet_layers"]
