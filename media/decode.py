"""Decode the first frames of an image, GIF or video (a file or bytes), optionally resized and cropped."""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

# imageio-ffmpeg logs a warning whenever the output size differs from the source: here that is the point.
logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)


class DecodeError(ValueError):
    """The input is not a decodable image or video, or it breaks a limit; the message says which."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what one decode may cost: source pixels per frame and wall time."""

    max_pixels: int | None = None
    timeout_s: float | None = None


def read_frames(source: str | Path | bytes, max_frames: int, resolution: int | None = None,
                limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Up to max_frames RGB frames (T, H, W, 3) uint8 from the start of an image, GIF or video.

    With `resolution`, ffmpeg scales the shorter side to it (area filter) and cuts the centre square.
    Bytes are decoded from a private temporary file. A source larger than limits.max_pixels is refused
    from its header, before any frame is decoded.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        fd, tmp = tempfile.mkstemp(prefix="vgs-decode-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(source)
            return _read(Path(tmp), "the upload", max_frames, resolution, limits)
        finally:
            os.unlink(tmp)
    path = Path(source)
    if not path.is_file():
        raise DecodeError(f"{path}: no such file")
    return _read(path, str(path), max_frames, resolution, limits)


def _read(path: Path, name: str, max_frames: int, resolution: int | None, limits: DecodeLimits) -> np.ndarray:
    output_params = None
    if resolution is not None:
        r = int(resolution)
        output_params = ["-vf", f"scale={r}:{r}:force_original_aspect_ratio=increase:flags=area,crop={r}:{r}"]
    start = time.monotonic()
    frames = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = imageio_ffmpeg.read_frames(str(path), output_params=output_params)
        try:
            meta = next(reader)
            w, h = meta["size"]
            sw, sh = meta.get("source_size") or (w, h)
            if limits.max_pixels is not None and sw * sh > limits.max_pixels:
                raise DecodeError(f"{name}: frames of {sw}x{sh} pixels are over the limit of {limits.max_pixels} "
                                  "pixels per frame", too_large=True)
            for raw in reader:
                frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3))
                if len(frames) >= max_frames:
                    break
                if limits.timeout_s is not None and time.monotonic() - start > limits.timeout_s:
                    raise DecodeError(f"{name}: decoding took longer than {limits.timeout_s:g} s", too_large=True)
        except (RuntimeError, OSError, StopIteration) as exc:
            last = [line for line in str(exc).splitlines() if line.strip()][-1:] or [type(exc).__name__]
            raise DecodeError(f"{name}: cannot be decoded as an image or video ({last[0].strip()})") from None
        finally:
            reader.close()
    if not frames:
        raise DecodeError(f"{name}: no frames could be decoded")
    return np.stack(frames)


def pad_frames(frames: np.ndarray, count: int) -> np.ndarray:
    """The first `count` frames, the last one repeated when there are fewer."""
    if len(frames) < count:
        frames = np.concatenate([frames, np.repeat(frames[-1:], count - len(frames), axis=0)])
    return frames[:count]
