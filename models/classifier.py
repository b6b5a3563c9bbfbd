"""Small classifiers: a 3D-CNN video classifier, the evaluation network for moving-digits (as I3D is for FVD),
and a 2D-CNN frame recognizer, which tells a class-guided frames prior what class a given frame shows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from .errors import CheckpointError
from .files import write_safetensors
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


@dataclass(frozen=True)
class RecognizerConfig(Settings):
    n_classes: int = 10
    width: int = 32


class FrameRecognizer(nn.Module):
    """(B, 3, H, W) frames in [-0.5, 0.5] -> class logits. Trained on single frames of the training videos."""

    def __init__(self, config: RecognizerConfig = RecognizerConfig()):
        super().__init__()
        self.config = config
        w = config.width
        self.convs = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
        )
        # Dropout 0.5: the training frames come from a few writers' glyphs, which it would otherwise memorise.
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(2 * w, config.n_classes))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(frames).flatten(1))


def recognizer_loss(recognizer: FrameRecognizer) -> Callable[[dict], dict]:
    """The training loss of a frame recognizer on batches of labelled videos: one random frame of each."""

    def loss_fn(batch: dict) -> dict:
        video = batch["video"]
        pick = torch.randint(video.shape[2], (video.shape[0],), device=video.device)
        logits = recognizer(video[torch.arange(video.shape[0], device=video.device), :, pick])
        return {"loss": F.cross_entropy(logits, batch["label"]),
                "accuracy": (logits.argmax(dim=1) == batch["label"]).float().mean()}

    return loss_fn


Classifier = VideoClassifier | FrameRecognizer
_KINDS = {"video classifier": (VideoClassifier, ClassifierConfig), "frame recognizer": (FrameRecognizer,
                                                                                       RecognizerConfig)}


def save_classifier(model: Classifier, path: str | Path) -> None:
    """Weights and settings (integers, in the file's metadata) of a video classifier or frame recognizer."""
    metadata = {k: str(v) for k, v in model.config.to_dict().items()}
    write_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata=metadata)


def load_classifier(path: str | Path, kind: str = "video classifier") -> Classifier:
    """A file written by save_classifier, as the given kind ("video classifier" or "frame recognizer")."""
    from safetensors import safe_open

    model_class, config_class = _KINDS[kind]
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        config = config_class(**{k: int(v) for k, v in meta.items()})
        model = model_class(config)
        model.load_state_dict(load_file(str(path)))
    except Exception as exc:
        raise CheckpointError(f"{path}: not a {kind} file ({exc})") from None
    return model.eval()
