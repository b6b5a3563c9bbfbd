"""Frames in and out of files: decode with ffmpeg, resize and center-crop, convert to model tensors."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch
import torch.nn.functional as F


def read_frames(path: str | Path, max_frames: int) -> np.ndarray:
    """Up to max_frames RGB frames (T, H, W, 3) uint8 of an image, GIF or video file, decoded by ffmpeg."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    reader = imageio_ffmpeg.read_frames(str(path))
    frames = []
    try:
        meta = next(reader)
        w, h = meta["size"]
        for raw in reader:
            frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3))
            if len(frames) >= max_frames:
                break
    except (RuntimeError, OSError, StopIteration) as exc:
        last = [line for line in str(exc).splitlines() if line.strip()][-1:] or [type(exc).__name__]
        raise ValueError(f"{path}: cannot be decoded as an image or video ({last[0].strip()})") from None
    finally:
        reader.close()
    if not frames:
        raise ValueError(f"{path}: no frames could be decoded")
    return np.stack(frames)


def resize_crop(frames: np.ndarray, resolution: int) -> np.ndarray:
    """(T, H, W, 3) uint8: scale the shorter side to resolution (area filter when shrinking), cut the centre."""
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    h, w = clip.shape[-2:]
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    if scale < 1:
        clip = F.interpolate(clip, size=size, mode="area")
    elif scale > 1:
        clip = F.interpolate(clip, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    clip = clip[:, :, top: top + resolution, left: left + resolution]
    return clip.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def pad_frames(frames: np.ndarray, count: int) -> np.ndarray:
    """The first `count` frames, the last one repeated when there are fewer."""
    if len(frames) < count:
        frames = np.concatenate([frames, np.repeat(frames[-1:], count - len(frames), axis=0)])
    return frames[:count]


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float in [-0.5, 0.5], the models' input."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float().div(255.0).sub(0.5)


def write_png(image: np.ndarray, path: str | Path) -> None:
    """An (H, W, 3) uint8 image as an 8-bit RGB PNG (no image library needed)."""
    import struct
    import zlib

    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
                           + chunk(b"IEND", b""))
