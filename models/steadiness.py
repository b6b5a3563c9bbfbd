"""How steady a video is, as a person looking at it sees it: one digit throughout, one colour.

- digit stability: per video, the share of frames whose digit (read by a frame recognizer, a 2D classifier
  of single frames: 0.99 on real videos, where the video classifier on a frame held still reads 0.95) is
  the video's majority digit;
- colour purity: per video, the share of lit (digit) pixels whose hue is within 20 degrees of the video's
  dominant hue (every training video has one pure colour).
"""

from __future__ import annotations

import torch

HUE_TOLERANCE_DEG = 20.0
LIT = 0.25  # a pixel is lit (part of the digit) when its brightest channel is above this, in [0, 1]


def hues(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hue in degrees (B, T, H, W) of video (B, 3, T, H, W) in [-0.5, 0.5], and which pixels are lit."""
    rgb = (video.clamp(-0.5, 0.5) + 0.5).movedim(1, -1)  # (B, T, H, W, 3) in [0, 1]
    top, top_idx = rgb.max(dim=-1)
    low = rgb.min(dim=-1).values
    span = (top - low).clamp_min(1e-6)
    r, g, b = rgb.unbind(-1)
    hue = torch.where(top_idx == 0, ((g - b) / span) % 6, torch.where(top_idx == 1, (b - r) / span + 2,
                                                                     (r - g) / span + 4)) * 60.0
    return hue % 360.0, top > LIT


def dominant_hue(hue: torch.Tensor, lit: torch.Tensor) -> torch.Tensor:
    """Per item of hue/lit (B, ...): the circular mean hue of the lit pixels (degrees; NaN when none is lit)."""
    rad = torch.deg2rad(hue) * lit
    weight = lit.flatten(1).sum(dim=1).clamp_min(1)
    x = torch.cos(rad).mul(lit).flatten(1).sum(dim=1) / weight
    y = torch.sin(rad).mul(lit).flatten(1).sum(dim=1) / weight
    angle = torch.rad2deg(torch.atan2(y, x)) % 360.0
    return torch.where(lit.flatten(1).any(dim=1), angle, torch.full_like(angle, float("nan")))


def hue_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angular distance in degrees (0..180)."""
    d = (a - b).abs() % 360.0
    return torch.minimum(d, 360.0 - d)


def colour_purity(video: torch.Tensor) -> torch.Tensor:
    """Per video: the share of lit pixels whose hue is within 20 degrees of the video's dominant hue."""
    hue, lit = hues(video)
    dominant = dominant_hue(hue, lit)
    close = (hue_distance(hue, dominant.view(-1, 1, 1, 1)) <= HUE_TOLERANCE_DEG) & lit
    return close.flatten(1).sum(dim=1) / lit.flatten(1).sum(dim=1).clamp_min(1)


@torch.no_grad()
def frame_digits(recognizer: torch.nn.Module, video: torch.Tensor) -> torch.Tensor:
    """Per frame (B, T): the digit a frame recognizer (B, 3, H, W) -> logits reads off each frame."""
    b, _, t, h, w = video.shape
    frames = video.clamp(-0.5, 0.5).permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
    digits = torch.cat([recognizer(frames[i:i + 512]).argmax(dim=1) for i in range(0, b * t, 512)])
    return digits.view(b, t)


def digit_stability(recognizer: torch.nn.Module, video: torch.Tensor) -> torch.Tensor:
    """Per video: the share of frames whose digit (by a frame recognizer) is the video's majority digit."""
    digits = frame_digits(recognizer, video)
    majority = torch.mode(digits, dim=1).values
    return (digits == majority[:, None]).float().mean(dim=1)


def steadiness(recognizer: torch.nn.Module | None, videos: torch.Tensor) -> dict:
    """Mean colour purity of videos (B, 3, T, H, W), and their digit stability when a recognizer is given."""
    figures = {"colour_purity": float(colour_purity(videos).mean())}
    if recognizer is not None:
        figures["digit_stability"] = float(digit_stability(recognizer, videos).mean())
    return figures
