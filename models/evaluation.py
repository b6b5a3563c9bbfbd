"""Measured sample quality of moving-digits models: classifier agreement, PSNR, motion, Fréchet distance,
digit stability and colour purity (models/steadiness.py)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from media import write_png

from .classifier import ClassifierConfig, VideoClassifier
from .data import MovingDigits, MovingDigitsSpec
from .gpt import VideoGPT
from .sampling import sample
from .steadiness import steadiness
from .training import TrainSettings, train
from .vqvae import VQVAE

Log = Callable[[str], None]


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item PSNR (dB) of videos or frames in [-0.5, 0.5] (pixel range 1), over all but the first axis."""
    mse = (a.clamp(-0.5, 0.5) - b.clamp(-0.5, 0.5)).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)

    def sqrtm(m: torch.Tensor) -> torch.Tensor:
        vals, vecs = torch.linalg.eigh((m + m.T) / 2)
        return vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T

    root_a = sqrtm(cov_a)
    cross = sqrtm(root_a @ cov_b @ root_a)
    return float((mu_a - mu_b).square().sum() + torch.trace(cov_a + cov_b - 2 * cross))


def motion_stats(video: torch.Tensor, glyph_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per video (B, 3, T, H, W): mean centroid displacement (pixels per frame), and whether every frame's
    lit pixels fit in a box of 1.5 glyphs (one digit, not two or a smear)."""
    mass = (video.clamp(-0.5, 0.5) + 0.5).amax(dim=1)  # (B, T, H, W) brightness
    mass = torch.where(mass > 0.25, mass, torch.zeros_like(mass))
    h, w = mass.shape[-2:]
    ys = torch.arange(h, dtype=mass.dtype)[:, None]
    xs = torch.arange(w, dtype=mass.dtype)[None, :]
    total = mass.sum(dim=(-2, -1)).clamp_min(1e-6)
    cy = (mass * ys).sum(dim=(-2, -1)) / total
    cx = (mass * xs).sum(dim=(-2, -1)) / total
    displacement = torch.sqrt(cy.diff(dim=1).square() + cx.diff(dim=1).square()).mean(dim=1)
    lit = mass > 0
    rows, cols = lit.any(dim=-1), lit.any(dim=-2)  # (B, T, H), (B, T, W)

    def extent(any_lit: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(any_lit.shape[-1])
        first = torch.where(any_lit, idx, any_lit.shape[-1]).amin(dim=-1)
        last = torch.where(any_lit, idx, -1).amax(dim=-1)
        return (last - first + 1).clamp_min(0)

    fits = (extent(rows) <= 1.5 * glyph_size) & (extent(cols) <= 1.5 * glyph_size) & rows.any(dim=-1)
    return displacement, fits.all(dim=1)


def train_classifier(spec: MovingDigitsSpec, steps: int = 800, seed: int = 0, log: Log = print,
                     config: ClassifierConfig | None = None, device: str = "cpu") -> VideoClassifier:
    """The evaluation classifier, trained on real moving-digits videos (returned on the CPU)."""
    torch.manual_seed(seed)
    model = VideoClassifier(config or ClassifierConfig())
    train_set = MovingDigits("train", length=20000, seed=seed + 1000, spec=spec)
    val_set = MovingDigits("test", length=256, seed=seed + 1000, spec=spec)

    def loss_fn(batch: dict) -> dict:
        logits = model(batch["video"])
        return {"loss": F.cross_entropy(logits, batch["label"]),
                "accuracy": (logits.argmax(dim=1) == batch["label"]).float().mean()}

    settings = TrainSettings(steps=steps, batch_size=32, lr=2e-3, val_every=steps, val_batches=8, schedule="cosine",
                             warmup_steps=min(50, steps - 1),
                             checkpoint_every=steps, seed=seed, device=device)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        metrics = train(model, loss_fn, train_set, val_set, settings, Path(tmp) / "classifier.pt")
    log(f"classifier: held-out accuracy {metrics['accuracy']:.3f}")
    return model.cpu().eval()


@torch.no_grad()
def _classify(classifier: VideoClassifier, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return F.softmax(classifier(video.clamp(-0.5, 0.5)), dim=-1), classifier.features(video.clamp(-0.5, 0.5))


@torch.no_grad()
def generate_videos(gpt: VideoGPT, n: int, batch: int, seed: int, cond: dict[str, torch.Tensor | None],
                    **options: object) -> tuple[torch.Tensor, float]:
    """n videos (n, 3, T, H, W) in [-0.5, 0.5], sampled `batch` at a time (sample i seeded seed * 1_000_003
    + i; `cond`'s per-sample conditions cut to each batch, `options` passed to `sample` as they are: guidance,
    temperature, time_steps, ...), and the seconds the sampling took."""
    videos, seconds = [], 0.0
    for start in range(0, n, batch):
        size = min(batch, n - start)
        part = {k: (v[start:start + size] if v is not None else None) for k, v in cond.items()}
        began = time.perf_counter()
        codes = sample(gpt, size, seed=[seed * 1_000_003 + start + i for i in range(size)], **options, **part)
        seconds += time.perf_counter() - began
        videos.append(gpt.vqvae.decode_long(codes).clamp(-0.5, 0.5).cpu())
    return torch.cat(videos), seconds


def _sheet_row(videos: torch.Tensor, count: int = 8, frames: tuple[int, ...] = (0, 5, 10, 15)) -> np.ndarray:
    """count videos side by side, each as a column of the given frames, 2 px gaps."""
    v = ((videos[:count].clamp(-0.5, 0.5) + 0.5) * 255).round().to(torch.uint8)
    t_idx = [min(f, v.shape[2] - 1) for f in frames]
    tiles = v[:, :, t_idx].permute(0, 2, 3, 4, 1).numpy()  # (N, F, H, W, 3)
    n, f, h, w, _ = tiles.shape
    row = np.full((f * (h + 2), n * (w + 2), 3), 40, dtype=np.uint8)
    for i in range(n):
        for j in range(f):
            row[j * (h + 2): j * (h + 2) + h, i * (w + 2): i * (w + 2) + w] = tiles[i, j]
    return row


def evaluate(models: dict[str, VideoGPT], vqvae: VQVAE, classifier: VideoClassifier, spec: MovingDigitsSpec,
             n: int = 200, batch: int = 50, seed: int = 0, sheet_path: str | Path | None = None,
             log: Log = print, guidance: dict[str, float] | None = None,
             recognizer: torch.nn.Module | None = None, temperature: dict[str, float] | None = None) -> dict:
    """The quality report. `models` maps a mode (unconditional, class, frames) to the prior that serves it;
    `guidance` and `temperature` map a mode to the guidance scale and temperature to sample them with
    (default 1: none, the prior's own distribution);
    `recognizer`, a frame classifier, reads each frame's digit for the digit stability (none: not measured)."""
    guidance, temperature = guidance or {}, temperature or {}
    test = MovingDigits("test", length=n, seed=seed + 7, spec=spec)
    real = torch.stack([test[i]["video"] for i in range(n)])
    labels = torch.stack([test[i]["label"] for i in range(n)])
    glyph = 8 * spec.scale
    # "frames" names the frame-conditional mode's section, so the video length is "video_frames".
    report: dict = {"n_per_mode": n, "resolution": spec.resolution, "video_frames": spec.frames}
    device = next(vqvae.parameters()).device  # the models' device: generation runs there, scoring on the CPU
    with torch.no_grad():
        recon = torch.cat([vqvae.decode(vqvae.encode(real[i:i + batch].to(device))).cpu()
                           for i in range(0, n, batch)]).clamp(-0.5, 0.5)
    real_probs, real_feats = _classify(classifier, real)
    recon_probs, recon_feats = _classify(classifier, recon)
    report["real"] = {"classifier_accuracy": float((real_probs.argmax(1) == labels).float().mean()),
                      **steadiness(recognizer, real)}
    report["reconstruction"] = {
        "psnr_db": float(psnr(recon, real).mean()),
        "classifier_accuracy": float((recon_probs.argmax(1) == labels).float().mean()),
        "frechet_distance": frechet_distance(real_feats, recon_feats),
    }
    rows = [_sheet_row(real), _sheet_row(recon)]
    log(f"reconstruction: PSNR {report['reconstruction']['psnr_db']:.2f} dB")
    for mode, gpt in models.items():
        scale, mode_temperature = guidance.get(mode, 1.0), temperature.get(mode, 1.0)
        draws = {"guidance": scale, "temperature": mode_temperature}
        if mode == "class":
            wanted = torch.arange(n) % gpt.config.class_cond_dim
            cond = {"class_labels": wanted}
        elif mode == "frames":
            wanted = labels
            cond = {"cond_frames": real[:, :, : gpt.config.n_cond_frames]}
        else:
            wanted, cond = None, {}
        generated, _ = generate_videos(gpt, n, batch, seed, cond, **draws)
        probs, feats = _classify(classifier, generated)
        predicted = probs.argmax(dim=1)
        displacement, one_digit = motion_stats(generated, glyph)
        counts = torch.bincount(predicted, minlength=probs.shape[1]).double()
        share = counts / counts.sum()
        entry = {
            "guidance": scale,
            "temperature": mode_temperature,
            "frechet_distance": frechet_distance(real_feats, feats),
            "mean_confidence": float(probs.amax(dim=1).mean()),
            "class_entropy_nats": float(-(share[share > 0] * share[share > 0].log()).sum()),
            "classes_present": int((counts > 0).sum()),
            "mean_displacement_px_per_frame": float(displacement.mean()),
            "one_digit_fraction": float(one_digit.float().mean()),
            **steadiness(recognizer, generated),
        }
        if wanted is not None:
            entry["classifier_agreement"] = float((predicted == wanted).float().mean())
        if mode == "frames":
            entry["first_frame_psnr_db"] = float(psnr(generated[:, :, 0], real[:, :, 0]).mean())
            if gpt.class_guide is not None:
                recognised = gpt.class_guide.classes(real[:, :, :1].to(device)).cpu()
                entry["class_guidance"] = gpt.class_guide.scale
                entry["recognizer_accuracy"] = float((recognised == labels).float().mean())
        report[mode] = entry
        rows.append(_sheet_row(generated))
        log(f"{mode}: " + ", ".join(f"{k} {v:.3f}" for k, v in entry.items()))
    report["real"]["mean_displacement_px_per_frame"] = float(motion_stats(real, glyph)[0].mean())
    if sheet_path is not None:
        width = max(r.shape[1] for r in rows)
        sheet = np.concatenate([np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0))) for r in rows])
        scale = max(1, math.ceil(512 / width))
        write_png(sheet.repeat(scale, axis=0).repeat(scale, axis=1), sheet_path)
        report["contact_sheet_rows"] = ["real", "reconstruction", *models]
    return report


# The quality bars of the shipped moving-digits models: (report path, comparison, threshold).
QUALITY_BARS = [
    ("reconstruction.psnr_db", ">=", 28.0),
    ("class.classifier_agreement", ">=", 0.95),
    ("frames.classifier_agreement", ">=", 0.93),
    ("frames.first_frame_psnr_db", ">=", 20.0),
    ("unconditional.mean_confidence", ">=", 0.80),
    ("unconditional.class_entropy_nats", ">=", 2.1),
    ("unconditional.classes_present", ">=", 10),
    *[(f"{mode}.{metric}", ">=", bar) for mode in ("class", "frames", "unconditional")
      for metric, bar in (("mean_displacement_px_per_frame", 1.0), ("digit_stability", 0.95), ("colour_purity", 0.97))],
]


def check_bars(report: dict) -> list[dict]:
    """Each quality bar with the measured value and whether it is met (missing modes are skipped)."""
    results = []
    for path, op, threshold in QUALITY_BARS:
        section, key = path.split(".")
        if section not in report or key not in report[section]:
            continue
        value = report[section][key]
        results.append({"metric": path, "value": value, "bar": f"{op} {threshold}", "met": value >= threshold})
    return results
