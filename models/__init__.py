"""VideoGPT in plain PyTorch: the VQ-VAE, the GPT prior, bundles and the official-checkpoint converter."""

from .bundle import BundleInfo, load_gpt, load_vqvae, read_bundle_config, save_bundle
from .errors import CheckpointError, ConfigError, InputError, ModelError, UnsafeCheckpointError
from .gpt import GPTConfig, VideoGPT
from .official import convert_official_checkpoint
from .sampling import SamplingCancelled, sample, sample_seed
from .vqvae import VQVAE, VQVAEConfig

__all__ = [
    "VQVAE",
    "BundleInfo",
    "CheckpointError",
    "ConfigError",
    "GPTConfig",
    "InputError",
    "ModelError",
    "SamplingCancelled",
    "UnsafeCheckpointError",
    "VQVAEConfig",
    "VideoGPT",
    "convert_official_checkpoint",
    "load_gpt",
    "load_vqvae",
    "read_bundle_config",
    "sample",
    "sample_seed",
    "save_bundle",
]
