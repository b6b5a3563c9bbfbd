"""A BAIR-sized model built from the manifest's config has exactly the official tensor names and shapes."""

import json

import torch

from models import VQVAE, GPTConfig, VideoGPT, VQVAEConfig


def test_bair_like_model_matches_the_official_manifest(fixtures_dir):
    manifest = json.loads((fixtures_dir / "manifest_bair_like.json").read_text())
    with torch.device("meta"):  # names and shapes only: no need to allocate 100M parameters
        vq = VQVAE(VQVAEConfig(**manifest["vqvae_config"]))
        gpt = VideoGPT(GPTConfig(**manifest["gpt_config"]), vq)  # official-size ResNet is the default
    shapes = {name: list(t.shape) for name, t in gpt.state_dict().items()}
    expected = manifest["state_dict_shapes"]
    assert sorted(shapes) == sorted(expected)
    assert shapes == expected
    assert gpt.latent_shape == (4, 32, 32)
