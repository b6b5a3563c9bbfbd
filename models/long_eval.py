"""How good long videos are: per window, at the seams, in colour; measured with the evaluation classifier and pixels.

- per 16-frame window of a long video: the classifier's agreement with the digit asked for (class) or
  given (frames), and the motion (mean centroid displacement, pixels per frame);
- seams: the mean frame-to-frame pixel change across the boundaries where a generation window's new frames
  begin, over the mean change between the other frames;
- colour: each window's dominant hue against the first window's (within 20 degrees);
- digit stability and colour purity over the whole video (models/steadiness.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from media import write_png

from .classifier import VideoClassifier
from .data import MovingDigits, MovingDigitsSpec
from .evaluation import generate_videos, motion_stats
from .gpt import VideoGPT
from .steadiness import HUE_TOLERANCE_DEG, colour_purity, digit_stability, dominant_hue, hue_distance, hues


@torch.no_grad()
def window_figures(classifier: VideoClassifier, video: torch.Tensor, wanted: torch.Tensor | None, glyph: int,
                   window: int = 16) -> dict:
    """Agreement and motion per `window`-frame window of videos (B, 3, T, H, W), and the hue drift."""
    windows = video.shape[2] // window
    agreement, motion, hue_kept = [], [], []
    first_hue = None
    for k in range(windows):
        part = video[:, :, k * window:(k + 1) * window].clamp(-0.5, 0.5)
        if wanted is not None:
            predicted = torch.cat([classifier(part[i:i + 64]).argmax(dim=1) for i in range(0, len(part), 64)])
            agreement.append(float((predicted == wanted).float().mean()))
        motion.append(float(motion_stats(part, glyph)[0].mean()))
        dominant = dominant_hue(*hues(part))
        first_hue = dominant if first_hue is None else first_hue
        hue_kept.append(float((hue_distance(dominant, first_hue) <= HUE_TOLERANCE_DEG).float().mean()))
    figures = {"windows": windows, "motion_px_per_frame": [round(m, 3) for m in motion],
               "hue_within_20deg_of_first_window": [round(h, 3) for h in hue_kept]}
    if wanted is not None:
        figures["classifier_agreement"] = [round(a, 3) for a in agreement]
    return figures


def seam_ratio(video: torch.Tensor, first: int, stride: int) -> float:
    """Mean frame-to-frame change across generation-window boundaries (frames first, first + stride, ...)
    over the mean change between all other consecutive frames."""
    change = (video[:, :, 1:] - video[:, :, :-1]).abs().mean(dim=(0, 1, 3, 4))  # (T - 1,): t -> t + 1
    boundary = torch.zeros_like(change, dtype=torch.bool)
    for start in range(first, video.shape[2], stride):
        boundary[start - 1] = True  # the change into the window's first new frame
    return float(change[boundary].mean() / change[~boundary].mean())


def evaluate_long(models: dict[str, VideoGPT], classifier: VideoClassifier, recognizer: torch.nn.Module,
                  spec: MovingDigitsSpec, lengths: tuple[int, ...] = (64, 128), n: int = 100, batch: int = 25,
                  seed: int = 0,
                  guidance: dict[str, float] | None = None, stride: int | None = None,
                  sheet_path: str | Path | None = None, log=print, later_frames: str = "generated",
                  later_context: str = "reencoded", temperature: dict[str, float] | None = None) -> dict:
    """The long-video report for the class and frames modes of `models` (mode -> prior), sampled at each mode's
    guidance and temperature; later_frames: what conditions frames videos' later windows, later_context:
    what their context is (DecodeEngine's)."""
    guidance, temperature = guidance or {}, temperature or {}
    test = MovingDigits("test", length=n, seed=seed + 7, spec=spec)
    real = torch.stack([test[i]["video"] for i in range(n)])
    labels = torch.stack([test[i]["label"] for i in range(n)])
    glyph = 8 * spec.scale
    report, rows = {"n_per_length": n, "window_frames": spec.frames}, []
    for mode, gpt in models.items():
        if mode not in ("class", "frames"):
            continue
        vq = gpt.vqvae.config
        t = vq.latent_shape[0]
        step_stride = stride or max(1, t // 2)
        cond = ({"class_labels": torch.arange(n) % gpt.config.class_cond_dim} if mode == "class" else
                {"cond_frames": real[:, :, :gpt.config.n_cond_frames]})
        wanted = cond["class_labels"] if mode == "class" else labels
        scale, mode_temperature = guidance.get(mode, 1.0), temperature.get(mode, 1.0)
        draws = {"guidance": scale, "temperature": mode_temperature}
        _, native_s = generate_videos(gpt, min(n, batch), batch, seed, {k: v[:batch] for k, v in cond.items()},
                                      **draws)
        section = {"stride_latent_steps": step_stride, "stride_frames": step_stride * vq.downsample[0],
                   "later_context": later_context, "guidance": scale, "temperature": mode_temperature}
        if mode == "frames":
            section["later_frames"] = later_frames
        for frames in lengths:
            videos, seconds = generate_videos(gpt, n, batch, seed, cond, **draws, time_steps=frames // vq.downsample[0],
                                              window_stride=step_stride, later_frames=later_frames,
                                              later_context=later_context)
            figures = window_figures(classifier, videos, wanted, glyph, spec.frames)
            extra = (frames - vq.sequence_length) / spec.frames
            per_batch = seconds * min(n, batch) / n
            figures.update({
                "seam_ratio": round(seam_ratio(videos, vq.sequence_length, step_stride * vq.downsample[0]), 3),
                "digit_stability": round(float(digit_stability(recognizer, videos).mean()), 3),
                "colour_purity": round(float(colour_purity(videos).mean()), 3),
                "seconds_per_extra_16_frames_over_first_16": round((per_batch - native_s) / extra / native_s, 3),
            })
            section[f"{frames}_frames"] = figures
            log(f"{mode} {frames} frames: {figures}")
            rows.append(_long_row(videos[0], spec.frames // 2))
        report[mode] = section
    if sheet_path is not None and rows:
        width = max(r.shape[1] for r in rows)
        sheet = np.concatenate([np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0))) for r in rows])
        scale = max(1, math.ceil(1024 / width))
        write_png(sheet.repeat(scale, axis=0).repeat(scale, axis=1), sheet_path)
    return report


def _long_row(video: torch.Tensor, every: int) -> np.ndarray:
    """One video's frames 0, every, 2 * every, ... side by side, 2 px gaps."""
    v = ((video.clamp(-0.5, 0.5) + 0.5) * 255).round().to(torch.uint8)[:, ::every].permute(1, 2, 3, 0).numpy()
    t, h, w, _ = v.shape
    row = np.full((h, t * (w + 2), 3), 40, dtype=np.uint8)
    for i in range(t):
        row[:, i * (w + 2): i * (w + 2) + w] = v[i]
    return row
