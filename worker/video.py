"""Video tensors to browser-playable H.264 mp4 files (imageio-ffmpeg), and frames back from files."""

from __future__ import annotations

import math
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

from models.data.frames import frames_to_tensor, pad_frames, read_frames, resize_crop

__all__ = ["frames_to_model_input", "read_frames", "tile", "to_uint8_frames", "upscale", "write_mp4"]

MP4_CONTENT_TYPE = "video/mp4"


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """One video (3, T, H, W) in [-0.5, 0.5] (values outside are clamped) -> (T, H, W, 3) uint8."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"expected one video (3, T, H, W), got shape {tuple(video.shape)}")
    pixels = ((video.detach().float().clamp(-0.5, 0.5) + 0.5) * 255).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).cpu().numpy()


def tile(videos: np.ndarray, columns: int | None = None, gap: int = 2) -> np.ndarray:
    """(N, T, H, W, 3) -> one (T, H', W', 3) grid, `gap` dark pixels between tiles."""
    n, t, h, w, c = videos.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((t, rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, c), dtype=videos.dtype)
    for i in range(n):
        r, col = divmod(i, columns)
        grid[:, r * (h + gap): r * (h + gap) + h, col * (w + gap): col * (w + gap) + w] = videos[i]
    return grid


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor: crisp pixels."""
    if factor == 1:
        return frames
    return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def write_mp4(frames: np.ndarray, path: str | Path, fps: float, scale: int = 1) -> dict:
    """Write (T, H, W, 3) uint8 frames as H.264/yuv420p mp4 (faststart); returns its frame size and count.

    yuv420p needs even sides: an odd side gets one black row or column.
    """
    frames = upscale(np.ascontiguousarray(frames, dtype=np.uint8), scale)
    t, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        h, w = h + pad_h, w + pad_w
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1, quality=None,
        output_params=["-crf", "16", "-preset", "medium", "-movflags", "+faststart"])
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return {"frames": t, "width": w, "height": h, "fps": fps, "content_type": MP4_CONTENT_TYPE}


def frames_to_model_input(frames: np.ndarray, n_frames: int, resolution: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, n_frames, R, R) in [-0.5, 0.5]: the first frames, resized and center-cropped.

    A clip shorter than n_frames repeats its last frame.
    """
    return frames_to_tensor(resize_crop(pad_frames(frames, n_frames), resolution))
