"""Frames and model tensors, both ways: (T, H, W, 3) uint8 <-> (3, T, H, W) float in [-0.5, 0.5]."""

from __future__ import annotations

import numpy as np
import torch


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float in [-0.5, 0.5], the models' input."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float().div(255.0).sub(0.5)


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """One video (3, T, H, W) in [-0.5, 0.5] (values outside are clamped) -> (T, H, W, 3) uint8."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"expected one video (3, T, H, W), got shape {tuple(video.shape)}")
    pixels = ((video.detach().float().clamp(-0.5, 0.5) + 0.5) * 255).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).cpu().numpy()
