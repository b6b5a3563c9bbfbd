"""VideoGPT in plain PyTorch: the VQ-VAE, the GPT prior, bundles and the official-checkpoint converter."""

from .bundle import BundleInfo, load_gpt, load_vqvae, read_bundle_config, save_bundle
from .errors import CheckpointError, ConfigError, InputError, ModelError, UnsafeCheckpointError
from .gpt import GPTConfig, VideoGPT
from .official import convert_official_checkpoint
from .vqvae import VQVAE, VQVAEConfig

__all__ = [
    "VQVAE",
    "BundleInfo",
    "CheckpointError",
    "ConfigError",
    "GPTConfig",
    "InputError",
    "ModelError",
    "UnsafeCheckpointError",
    "VQVAEConfig",
    "VideoGPT",
    "convert_official_checkpoint",
    "load_gpt",
    "load_vqvae",
    "read_bundle_config",
    "save_bundle",
]
