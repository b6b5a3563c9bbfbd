"""VideoGPT in plain PyTorch: the VQ-VAE, the GPT prior, bundles and the official-checkpoint converter.

The names below load their modules (and torch) on first use, so that torch-free modules of this package
(`models.limits`) can be imported by the gateway, which has no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BundleInfo": ".bundle", "load_gpt": ".bundle", "load_vqvae": ".bundle", "read_bundle_config": ".bundle",
    "save_bundle": ".bundle",
    "CheckpointError": ".errors", "ConfigError": ".errors", "InputError": ".errors", "ModelError": ".errors",
    "UnsafeCheckpointError": ".errors",
    "GPTConfig": ".gpt", "VideoGPT": ".gpt",
    "convert_official_checkpoint": ".official",
    "SamplingCancelled": ".sampling", "sample": ".sampling", "sample_seed": ".controls",
    "DecodeEngine": ".engine", "SampleRequest": ".engine",
    "VQVAE": ".vqvae", "VQVAEConfig": ".vqvae",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
