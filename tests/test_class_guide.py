"""A frames prior steered by a class prior toward the class a frame recognizer reads off the given frame
(ClassGuide, set-class-guide), and the recognizer's training command."""

import dataclasses
import json

import pytest
import torch
from model_factory import random_gpt, randomize_
from test_generality import CASES

from cli.main import main
from models import ConfigError, InputError, VideoGPT, load_gpt, sample, save_bundle
from models.bundle import BundleInfo, set_class_guide
from models.classifier import FrameRecognizer, RecognizerConfig, load_classifier, save_classifier
from models.sampling import ClassGuide

VQ_CONFIG, BOTH = CASES["class-frames-sparse"]
FRAMES = dataclasses.replace(BOTH, class_cond_dim=None, n_cond_frames=1, condition_dropout=0.5)
CLASSES = dataclasses.replace(BOTH, n_cond_frames=0, condition_dropout=0.5)


def _prior_on(vqvae, config=CLASSES, seed=5) -> VideoGPT:
    """A random prior on exactly vqvae's codes (randomize_ also draws the VQ-VAE; it is put back)."""
    prior = randomize_(VideoGPT(config, vqvae), seed)
    prior.vqvae.load_state_dict(vqvae.state_dict())
    return prior.eval()


def _recognizer(n_classes=4) -> FrameRecognizer:
    return randomize_(FrameRecognizer(RecognizerConfig(n_classes=n_classes, width=4)), 7).eval()


@pytest.fixture(scope="module")
def guided():
    frames = random_gpt(VQ_CONFIG, FRAMES, seed=1)
    frames.class_guide = ClassGuide(_prior_on(frames.vqvae), _recognizer(), 3.0)
    return frames


def _frames(n=3, seed=0):
    r = VQ_CONFIG.resolution
    return torch.rand(n, 3, 1, r, r, generator=torch.Generator().manual_seed(seed)) - 0.5


def test_each_code_follows_both_priors_guidance(guided):
    """Greedy codes are the argmax of frames guidance plus the class prior's pull toward the recognised class,
    computed by teacher forcing."""
    frames = _frames()
    codes = sample(guided, 3, cond_frames=frames, top_k=1, guidance=2.0, seed=0)
    guide = guided.class_guide
    classes = guide.recognizer(frames[:, :, 0]).argmax(dim=1)
    no_class = torch.full_like(classes, -1)
    with torch.no_grad():
        with_frames, without = guided.logits(codes, cond_frames=frames), guided.logits(codes)
        with_class, plain = guide.prior.logits(codes, class_labels=classes), guide.prior.logits(codes, no_class)
    composed = without + 2.0 * (with_frames - without) + 3.0 * (with_class - plain)
    chosen = composed.gather(-1, codes.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(chosen, composed.amax(dim=-1), atol=1e-4)
    unguided = sample(guided, 3, cond_frames=frames, top_k=1, guidance=2.0, seed=0, class_guidance=0)
    assert not torch.equal(unguided, codes)  # the class prior's pull changed some codes


def test_scale_zero_and_samples_without_frames_are_not_class_guided(guided):
    frames = _frames(4, seed=1)
    present = torch.tensor([True, False, True, False])
    kwargs = dict(cond_frames=frames, frames_present=present, seed=3, guidance=1.5)
    steered = sample(guided, 4, **kwargs)
    off = sample(guided, 4, class_guidance=0, **kwargs)
    guide, guided.class_guide = guided.class_guide, None
    try:
        plain = sample(guided, 4, **kwargs)
    finally:
        guided.class_guide = guide
    assert torch.equal(off, plain)
    assert torch.equal(steered[~present], plain[~present])  # no frames, nothing to recognise
    assert not torch.equal(steered[present], plain[present])


def test_bad_class_guidance_is_refused(guided):
    with pytest.raises(InputError, match=r"class_guidance must be a number in \[0, 20.0\] \(0: off\), got -1"):
        sample(guided, 1, cond_frames=_frames(1), class_guidance=-1)
    plain = random_gpt(VQ_CONFIG, FRAMES, seed=2)
    with pytest.raises(InputError, match="class_guidance needs a frames prior with a class guide"):
        sample(plain, 1, cond_frames=_frames(1), class_guidance=2.0)


@pytest.fixture
def bundles(tmp_path, guided):
    """The frames prior, its class prior and recognizer written as set-class-guide reads them."""
    info = BundleInfo(name="frames", guidance=2.0)
    frames_dir = save_bundle(guided, tmp_path / "frames", info)
    prior_dir = save_bundle(guided.class_guide.prior, tmp_path / "classes",
                            BundleInfo(name="classes", class_names=list("abcd")))
    save_classifier(guided.class_guide.recognizer, tmp_path / "recognizer.safetensors")
    return frames_dir, prior_dir, tmp_path / "recognizer.safetensors"


def test_a_class_guide_travels_with_the_frames_bundle(bundles, guided):
    frames_dir, prior_dir, recognizer = bundles
    assert load_gpt(frames_dir).class_guide is None
    set_class_guide(frames_dir, prior_dir, recognizer, 3.0)
    loaded = load_gpt(frames_dir)
    assert loaded.class_guide.scale == 3.0 and loaded.class_guide.prior.info.class_names == list("abcd")
    frames = _frames()
    assert torch.equal(sample(loaded, 3, cond_frames=frames, seed=4), sample(guided, 3, cond_frames=frames, seed=4))
    (frames_dir / "class-guide" / "guide.json").write_text("{not json")
    with pytest.raises(ConfigError, match="guide.json: not a class guide's settings"):
        load_gpt(frames_dir)
    assert load_gpt(frames_dir, with_class_guide=False).class_guide is None
    set_class_guide(frames_dir, prior_dir, recognizer, 2.0)  # a broken guide can be replaced
    assert load_gpt(frames_dir).class_guide.scale == 2.0


def test_a_guide_that_cannot_steer_is_refused(bundles, tmp_path, guided):
    frames_dir, prior_dir, recognizer = bundles
    vq = guided.vqvae
    cases = [
        (_prior_on(vq, dataclasses.replace(CLASSES, condition_dropout=0.0)), recognizer, 3.0,
         "must be class-conditional and trained with condition dropout"),
        (random_gpt(VQ_CONFIG, CLASSES, seed=9), recognizer, 3.0, r"trained on other codes \(encoder"),
        (guided.class_guide.prior, tmp_path / "five.safetensors", 3.0,
         "the recognizer tells 5 classes and the prior 4"),
        (guided.class_guide.prior, recognizer, 25.0, r"scale must be a number in \[0, 20.0\], got 25.0"),
    ]
    save_classifier(_recognizer(5), tmp_path / "five.safetensors")
    for i, (prior, recognizer_path, scale, message) in enumerate(cases):
        other = save_bundle(prior, tmp_path / f"prior{i}", BundleInfo(name=f"p{i}"))
        with pytest.raises(ConfigError, match=message):
            set_class_guide(frames_dir, other, recognizer_path, scale)
    with pytest.raises(ConfigError, match="this prior takes no frames"):
        set_class_guide(prior_dir, prior_dir, recognizer, 3.0)
    assert not (frames_dir / "class-guide").exists()


def test_train_recognizer_writes_a_frame_recognizer(tmp_path, capsys):
    out = tmp_path / "recognizer.safetensors"
    assert main(["train-recognizer", "--out", str(out), "--steps", "3", "--batch-size", "4", "--train-size", "40",
                 "--val-every", "3", "--width", "4"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    recognizer = load_classifier(out, "frame recognizer")
    assert recognizer(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert json.loads(json.dumps(recognizer.config.to_dict())) == {"n_classes": 10, "width": 4}


def test_the_sample_command_takes_a_class_guidance(bundles, tmp_path, capsys):
    frames_dir, prior_dir, recognizer = bundles
    out = tmp_path / "s.mp4"
    assert main(["sample", str(frames_dir), "--n", "1", "--class-guidance", "2", "-o", str(out)]) == 2
    assert "class_guidance needs a frames prior with a class guide" in capsys.readouterr().err
    set_class_guide(frames_dir, prior_dir, recognizer, 3.0)
    assert main(["sample", str(frames_dir), "--n", "1", "--class-guidance", "2", "-o", str(out)]) == 0
    assert out.stat().st_size > 0
