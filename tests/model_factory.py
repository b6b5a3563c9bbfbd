"""Small models with random weights (every tensor random, so no test passes by a zero)."""

from __future__ import annotations

import torch

from models import VQVAE, GPTConfig, VideoGPT, VQVAEConfig


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.3)
    return module


def random_vqvae(config: VQVAEConfig, seed: int = 0) -> VQVAE:
    return randomize_(VQVAE(config), seed).eval()


def random_gpt(vq_config: VQVAEConfig, gpt_config: GPTConfig, seed: int = 0) -> VideoGPT:
    gpt = VideoGPT(gpt_config, random_vqvae(vq_config, seed))
    return randomize_(gpt, seed + 1).eval()


def official_args(gpt: VideoGPT) -> dict:
    """The `args` an official GPT checkpoint would carry for this model."""
    c, vq = gpt.config, gpt.vqvae.config
    return {
        "vqvae": "bair_stride4x2x2", "n_cond_frames": c.n_cond_frames, "class_cond": c.class_cond_dim is not None,
        "class_cond_dim": c.class_cond_dim, "hidden_dim": c.hidden_dim, "heads": c.heads, "layers": c.layers,
        "dropout": c.dropout, "attn_type": c.attn_type, "attn_dropout": c.attn_dropout,
        "resolution": vq.resolution, "sequence_length": vq.sequence_length, "data_path": "data", "batch_size": 8,
    }


def official_state_dict(gpt: VideoGPT) -> dict[str, torch.Tensor]:
    """The state dict an official GPT checkpoint would hold, causal mask buffers included for full attention."""
    state = dict(gpt.state_dict())
    if gpt.config.attn_type == "full":
        n = gpt.attn_mask.shape[0] if gpt.attn_mask is not None else None
        n = n or int(torch.tensor(gpt.latent_shape).prod())
        for layer in range(gpt.config.layers):
            state[f"attn_stack.attn_nets.{layer}.attn.attn.mask"] = torch.ones(n, n).tril()
    return state
