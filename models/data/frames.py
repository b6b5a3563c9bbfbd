"""Decoded frames to model tensors: (T, H, W, 3) uint8 -> (3, T, H, W) in [-0.5, 0.5]."""

from __future__ import annotations

import numpy as np
import torch


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float in [-0.5, 0.5], the models' input."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float().div(255.0).sub(0.5)
