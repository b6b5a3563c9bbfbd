"""moving-digits: labelled videos of one handwritten digit gliding and bouncing on a dark background.

The glyphs are scikit-learn's bundled 8x8 `load_digits` images (no download), scaled up by an integer
factor with nearest-neighbour, tinted with one of six pure colours per video. Each video is a pure function of
(seed, split, index), so datasets are reproducible without storing them.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from .frames import frames_to_tensor

CLASS_NAMES = [str(d) for d in range(10)]
SPLITS = ("train", "test")
# Glyphs 0..TRAIN_GLYPHS-1 draw the training videos, the rest the test videos: held-out handwriting.
TRAIN_GLYPHS = 1500


@lru_cache(maxsize=1)
def _glyphs() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


@dataclass(frozen=True)
class MovingDigitsSpec:
    """The video format: frames, square resolution, glyph scale and speed range (pixels per frame)."""

    frames: int = 16
    resolution: int = 64
    scale: int = 3
    min_speed: float = 1.0
    max_speed: float = 1.5
    # Colour saturation range of the digit (value is always 1): 0 gives white digits.
    min_saturation: float = 1.0
    max_saturation: float = 1.0
    # Number of evenly spaced hues the colour is drawn from (0: any hue). Six pure colours (red, yellow,
    # green, cyan, blue, magenta) rather than a continuum: a small prior then spends its codes on the
    # digit, not on telling near-identical tints apart (measured: 0.5 nats less per code, same PSNR).
    hues: int = 6
    # Whole pixels per frame on each axis from a whole-pixel start: the glyph moves the same steps every
    # frame (sub-pixel velocities rounded to the pixel grid jitter: 1, 2, 1, 2 px...).
    integer_velocity: bool = True

    @classmethod
    def for_video(cls, frames: int, resolution: int) -> MovingDigitsSpec:
        """The spec for videos of this size: glyph scale 3 at 64x64 (24-pixel digits), 2 at 32x32."""
        return cls(frames=frames, resolution=resolution, scale=max(1, round(resolution / 21)))

    def __post_init__(self) -> None:
        if self.hues < 0:
            raise ValueError(f"hues must be >= 0 (0: any hue), got {self.hues}")
        if self.scale < 1 or 8 * self.scale > self.resolution:
            raise ValueError(f"glyphs of 8x{self.scale} pixels do not fit in {self.resolution}x{self.resolution}")


def _bounce(start: float, velocity: float, limit: float, steps: int) -> np.ndarray:
    """Positions of a point moving at constant speed inside [0, limit], reflected at the walls."""
    raw = start + velocity * np.arange(steps)
    if limit <= 0:
        return np.zeros(steps)
    period = 2 * limit
    folded = np.mod(raw, period)
    return np.where(folded > limit, period - folded, folded)


def render(glyph: np.ndarray, colour: np.ndarray, xs: np.ndarray, ys: np.ndarray,
           spec: MovingDigitsSpec) -> np.ndarray:
    """(T, R, R, 3) uint8 frames of glyph (8x8 in [0, 1]) at integer positions (xs, ys)."""
    big = np.kron(glyph, np.ones((spec.scale, spec.scale), dtype=np.float32))
    size = big.shape[0]
    frames = np.zeros((spec.frames, spec.resolution, spec.resolution, 3), dtype=np.float32)
    for t, (x, y) in enumerate(zip(np.rint(xs).astype(int), np.rint(ys).astype(int))):
        frames[t, y: y + size, x: x + size] = big[..., None] * colour
    return np.clip(np.rint(frames * 255), 0, 255).astype(np.uint8)


@lru_cache(maxsize=8)
def _integer_velocities(min_speed: float, max_speed: float) -> tuple[tuple[int, int], ...]:
    """Every whole-pixel velocity (vx, vy) whose speed lies in [min_speed, max_speed]."""
    reach = int(max_speed)
    found = tuple((vx, vy) for vx in range(-reach, reach + 1) for vy in range(-reach, reach + 1)
                  if min_speed <= np.hypot(vx, vy) <= max_speed)
    if not found:
        raise ValueError(f"no whole-pixel velocity has a speed in [{min_speed}, {max_speed}]")
    return found


def moving_digit(seed: int, split: str, index: int,
                 spec: MovingDigitsSpec = MovingDigitsSpec()) -> tuple[np.ndarray, int]:
    """Video `index` of `split`: ((T, R, R, 3) uint8 frames, digit label)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images, targets = _glyphs()
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    pool = range(TRAIN_GLYPHS) if split == "train" else range(TRAIN_GLYPHS, len(images))
    g = int(rng.integers(pool.start, pool.stop))
    hue, saturation = rng.random(), rng.uniform(spec.min_saturation, spec.max_saturation)
    if spec.hues:
        hue = np.floor(hue * spec.hues) / spec.hues
    colour = np.array(colorsys.hsv_to_rgb(hue, saturation, 1.0), dtype=np.float32)
    limit = spec.resolution - 8 * spec.scale
    if spec.integer_velocity:
        choices = _integer_velocities(spec.min_speed, spec.max_speed)
        vx, vy = choices[int(rng.integers(len(choices)))]
        x0, y0 = rng.integers(0, limit + 1, size=2)
    else:
        angle = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(spec.min_speed, spec.max_speed)
        vx, vy = speed * np.cos(angle), speed * np.sin(angle)
        x0, y0 = rng.uniform(0, limit, size=2)
    xs = _bounce(x0, vx, limit, spec.frames)
    ys = _bounce(y0, vy, limit, spec.frames)
    return render(images[g], colour, xs, ys, spec), int(targets[g])


class MovingDigits(Dataset):
    """`length` videos of one split, as dicts {"video": (3, T, R, R) in [-0.5, 0.5], "label": long}."""

    class_names = CLASS_NAMES

    def __init__(self, split: str = "train", length: int = 10000, seed: int = 0,
                 spec: MovingDigitsSpec = MovingDigitsSpec()):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split, self.length, self.seed, self.spec = split, length, seed, spec

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        frames, label = moving_digit(self.seed, self.split, index, self.spec)
        return {"video": frames_to_tensor(frames), "label": torch.tensor(label)}
