"""Conditioning frames as a job carries them in Redis: (T, H, W, 3) uint8 as npy bytes (no pickles)."""

from __future__ import annotations

import io

import numpy as np


def frames_to_bytes(frames: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(frames, dtype=np.uint8), allow_pickle=False)
    return buffer.getvalue()


def frames_from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
