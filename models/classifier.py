"""A small 3D-CNN video classifier: the evaluation network for moving-digits (as I3D is for FVD)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CheckpointError
from .settings import Settings


@dataclass(frozen=True)
class ClassifierConfig(Settings):
    n_classes: int = 10
    width: int = 32
    feature_dim: int = 64


class VideoClassifier(nn.Module):
    """(B, 3, T, H, W) in [-0.5, 0.5] -> class logits; `features` gives the penultimate activations."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = config
        w = config.width
        self.convs = nn.Sequential(
            nn.Conv3d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool3d((1, 2, 2)),
            nn.Conv3d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
            nn.Conv3d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool3d(1),
        )
        self.fc = nn.Linear(2 * w, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.n_classes)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.convs(video).flatten(1)))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(video))


def save_classifier(model: VideoClassifier, path: str | Path) -> None:
    metadata = {k: str(v) for k, v in model.config.to_dict().items()}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)


def load_classifier(path: str | Path) -> VideoClassifier:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        config = ClassifierConfig(**{k: int(v) for k, v in meta.items()})
        model = VideoClassifier(config)
        model.load_state_dict(load_file(str(path)))
    except Exception as exc:
        raise CheckpointError(f"{path}: not a video classifier file ({exc})") from None
    return model.eval()
