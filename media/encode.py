"""Frames out: browser-playable H.264 mp4 (imageio-ffmpeg), PNG, tiling and crisp upscaling."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import imageio_ffmpeg
import numpy as np

MP4_CONTENT_TYPE = "video/mp4"


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
    """Nearest-neighbour upscaling of (..., H, W, C) by an integer factor: crisp pixels."""
    if factor == 1:
        return frames
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def write_mp4(frames: np.ndarray, path: str | Path, fps: float, scale: int = 1, threads: int = 0) -> dict:
    """Write (T, H, W, 3) uint8 frames as H.264/yuv420p mp4 (faststart); returns its frame size and count.

    yuv420p needs even sides: an odd side gets one black row or column. threads: ffmpeg's encoding threads
    (0: its own choice, one per core; a worker encoding beside its decoding engine takes 1).
    """
    frames = upscale(np.ascontiguousarray(frames, dtype=np.uint8), scale)
    t, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        h, w = h + pad_h, w + pad_w
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1, quality=None,
        output_params=["-crf", "16", "-preset", "veryfast", "-movflags", "+faststart", "-threads", str(threads)])
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return {"frames": t, "width": w, "height": h, "fps": fps, "content_type": MP4_CONTENT_TYPE}


def png_bytes(image: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 image as an 8-bit RGB PNG (no image library needed)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def write_png(image: np.ndarray, path: str | Path) -> None:
    Path(path).write_bytes(png_bytes(image))
