"""The shipped moving-digits bundles: what the service loads by default serves all three modes, offline."""

from pathlib import Path

import pytest
import torch

from jobs.settings import ServiceSettings
from models import load_gpt, sample
from models.classifier import load_classifier
from models.data import MovingDigits, MovingDigitsSpec

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights"


@pytest.fixture(scope="module")
def shipped():
    return [load_gpt(REPO / path) for path in ServiceSettings().bundles]


def test_shipped_weights_stay_under_20_mb():
    total = sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file())
    assert 0 < total < 20 * 1024 * 1024


def test_the_default_bundles_serve_every_mode_with_digit_classes(shipped):
    modes = {mode for gpt in shipped for mode in gpt.config.modes}
    assert modes == {"unconditional", "class", "frames"}
    for gpt in shipped:
        assert gpt.vqvae.config.resolution == 32 and gpt.vqvae.config.sequence_length == 16
        if gpt.config.class_conditional:
            assert gpt.info.class_names == [str(d) for d in range(10)]
        if gpt.config.frame_conditional:
            assert gpt.config.n_cond_frames == 1


def test_each_mode_generates_a_moving_digit_video(shipped):
    spec = MovingDigitsSpec.for_video(16, 32)
    real = MovingDigits("test", length=2, seed=0, spec=spec)[0]["video"]
    classifier = load_classifier(WEIGHTS / "moving-digits-classifier.safetensors")
    for gpt in shipped:
        c = gpt.config
        kwargs = {}
        if c.class_conditional:
            kwargs["class_labels"] = torch.tensor([3, -1])  # class 3, and no class (unconditional)
        if c.frame_conditional:
            kwargs["cond_frames"] = real[None, :, :1].expand(2, -1, -1, -1, -1)
        codes = sample(gpt, 2, seed=0, guidance=[gpt.info.guidance, 1.0], **kwargs)
        with torch.no_grad():
            video = gpt.vqvae.decode(codes).clamp(-0.5, 0.5)
            probs = classifier(video).softmax(dim=-1)
        assert video.shape == (2, 3, 16, 32, 32)
        assert float(video.max()) > 0.2  # something bright is drawn on the dark background
        assert torch.allclose(probs.sum(dim=-1), torch.ones(2))


def test_the_frames_bundle_reads_the_given_digit_for_its_class_guide(shipped):
    (frames_prior,) = [gpt for gpt in shipped if gpt.config.frame_conditional]
    guide = frames_prior.class_guide
    assert guide is not None and guide.scale == 4.0 and guide.prior.info.class_names == [str(d) for d in range(10)]
    test = MovingDigits("test", length=100, seed=3, spec=MovingDigitsSpec.for_video(16, 32))
    first_frames = torch.stack([test[i]["video"][:, :1] for i in range(100)])
    labels = torch.stack([test[i]["label"] for i in range(100)])
    assert (guide.classes(first_frames) == labels).float().mean() >= 0.9  # held-out handwriting
