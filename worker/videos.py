"""Code grids to videos: the VQ-VAE's decoding as the worker does it, on the engine's thread (static
batches, GPUs) or in the finishing processes (worker/encoder.py)."""

from __future__ import annotations

import numpy as np
import torch

from models.data.frames import to_uint8_frames

DECODE_CHUNK = 16  # samples the VQ-VAE decodes at once: its activations grow with them


def video_frames(videos: torch.Tensor) -> list[np.ndarray]:
    """Decoded videos (n, 3, T, H, W) as uint8 frames (T, H, W, 3), each: on the thread that runs torch.
    (torch's CPU thread pool belongs to the thread that uses it: a second thread running torch ops starts a
    second pool, and the two, spinning, slowed the decoding step 4x; the encoders get numpy only.)"""
    return [to_uint8_frames(video) for video in videos]


@torch.no_grad()
def decode_videos(vqvae: torch.nn.Module, codes: torch.Tensor) -> list[np.ndarray]:
    """Code grids (n, t, h, w) decoded by the VQ-VAE into videos of uint8 frames (T, H, W, 3)."""
    videos = torch.cat([vqvae.decode_long(codes[i:i + DECODE_CHUNK]).float().cpu()
                        for i in range(0, len(codes), DECODE_CHUNK)])
    return video_frames(videos)
