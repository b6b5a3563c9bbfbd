"""A prior trained with condition dropout serves every mode, and one batch can mix them."""

import dataclasses

import pytest
import torch
from model_factory import random_gpt
from test_generality import CASES
from test_sampling import forced_step_logits

from models import ConfigError, GPTConfig, InputError, sample

VQ_CONFIG, BASE = CASES["class-frames-sparse"]
OPTIONAL = dataclasses.replace(BASE, condition_dropout=0.5)


@pytest.fixture(scope="module")
def gpt():
    return random_gpt(VQ_CONFIG, OPTIONAL, seed=5)


def mixed_inputs(gpt, batch=4, seed=0):
    """Codes, labels with "no class" (-1) in places, frames, and which samples have frames."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, gpt.n_codes, (batch, *gpt.latent_shape), generator=gen)
    labels = torch.tensor([2, -1, 0, -1])[:batch]
    r = gpt.vqvae.config.resolution
    frames = torch.rand(batch, 3, gpt.config.n_cond_frames, r, r, generator=gen) - 0.5
    present = torch.tensor([True, True, False, False])[:batch]
    return codes, labels, frames, present


def test_modes_follow_the_conditions():
    assert GPTConfig(class_cond_dim=10).modes == ["class"]
    assert GPTConfig(n_cond_frames=1).modes == ["frames"]
    assert GPTConfig().modes == ["unconditional"]
    assert OPTIONAL.modes == ["unconditional", "class", "frames"]
    with pytest.raises(ConfigError, match="condition_dropout needs a condition"):
        GPTConfig(condition_dropout=0.3)
    with pytest.raises(ConfigError, match="condition_dropout"):
        GPTConfig(class_cond_dim=3, condition_dropout=1.0)


def test_no_class_is_a_zero_one_hot_and_no_frames_skips_cross_attention(gpt):
    codes, _, frames, _ = mixed_inputs(gpt, batch=2)
    with torch.no_grad():
        no_conditions = gpt.logits(codes, torch.tensor([-1, -1]), None)
        cond = gpt.condition(None, None, 2)
        assert not cond.class_onehot.any() and cond.frames is None
        assert torch.equal(no_conditions, gpt.forward(codes, cond))
        masked = gpt.forward(codes, gpt.condition(torch.tensor([-1, -1]), frames, 2, torch.tensor([False, False])))
        with_frames = gpt.logits(codes, torch.tensor([-1, -1]), frames)
    assert (masked - no_conditions).abs().max() < 1e-5
    assert (with_frames - no_conditions).abs().max() > 1e-3  # the frames do change the logits


def test_a_mixed_batch_computes_each_sample_as_alone(gpt):
    codes, labels, frames, present = mixed_inputs(gpt)
    with torch.no_grad():
        together = gpt.forward(codes, gpt.condition(labels, frames, 4, present))
        for i in range(4):
            alone = gpt.logits(codes[i:i + 1], labels[i:i + 1], frames[i:i + 1] if present[i] else None)
            assert (together[i:i + 1] - alone).abs().max() < 1e-5


FRAME_PATHS = {"cross-attention": {}, "aligned-frames": {"aligned_frames": True},
               "aligned-given-steps": {"aligned_frames": True, "aligned_steps": "given"},
               "global-frames": {"global_frames": True}}


@pytest.mark.parametrize("paths", FRAME_PATHS.values(), ids=FRAME_PATHS.keys())
@pytest.mark.parametrize("static", [False, True], ids=["prefix-step", "static-step"])
def test_cached_decoding_of_a_mixed_batch_equals_teacher_forcing(static, paths):
    gpt = random_gpt(VQ_CONFIG, dataclasses.replace(OPTIONAL, **paths), seed=5)
    codes, labels, frames, present = mixed_inputs(gpt)
    with torch.no_grad():
        expected = gpt.forward(codes, gpt.condition(labels, frames, 4, present))
    got = forced_step_logits(gpt, codes, labels, frames, static, frames_present=present)
    # float32 rounding grows with the logits' size (random frame-summary gains make them large); the cached
    # pass multiplies row by row and teacher forcing in blocks, so they round apart by a few parts in 1e5
    assert (got - expected).abs().max() < 3e-5 * expected.abs().max().clamp_min(10)


def test_sampling_a_mixed_batch_matches_sampling_each_mode_alone(gpt):
    _, labels, frames, present = mixed_inputs(gpt)
    seeds = [11, 12, 13, 14]
    together = sample(gpt, 4, class_labels=labels, cond_frames=frames, frames_present=present, seed=seeds)
    for i in range(4):
        alone = sample(gpt, 1, class_labels=None if labels[i] < 0 else labels[i:i + 1],
                       cond_frames=frames[i:i + 1] if present[i] else None, seed=[seeds[i]])
        assert torch.equal(together[i:i + 1], alone)


def test_training_drops_conditions_at_the_configured_rate():
    gpt = random_gpt(VQ_CONFIG, dataclasses.replace(OPTIONAL, condition_dropout=0.999, dropout=0.0,
                                                    attn_dropout=0.0), seed=6)
    r = VQ_CONFIG.resolution
    video = torch.rand(3, 3, VQ_CONFIG.sequence_length, r, r, generator=torch.Generator().manual_seed(1)) - 0.5
    labels = torch.tensor([0, 1, 2])
    gpt.train()
    with torch.no_grad():
        dropped = gpt.training_loss(video, labels)
        codes = gpt.vqvae.encode(video)
        unconditioned = torch.nn.functional.cross_entropy(
            gpt.forward(codes, gpt.condition(None, None, 3)).flatten(0, -2), codes.flatten())
        gpt.eval()
        kept = gpt.training_loss(video, labels)  # eval mode: nothing is dropped
    assert abs(float(dropped) - float(unconditioned)) < 1e-5
    assert abs(float(kept) - float(dropped)) > 1e-4


def test_models_without_condition_dropout_still_require_their_conditions():
    strict = random_gpt(VQ_CONFIG, BASE, seed=7)
    r = VQ_CONFIG.resolution
    frames = torch.zeros(1, 3, BASE.n_cond_frames, r, r)
    with pytest.raises(InputError, match="out of range"):
        strict.condition(torch.tensor([-1]), frames, 1)
    with pytest.raises(InputError, match="cond_frames of shape"):
        strict.condition(torch.tensor([0]), None, 1)
    with pytest.raises(InputError, match="condition dropout"):
        strict.condition(torch.tensor([0]), frames, 1, torch.tensor([True]))


def test_bad_frames_present_is_refused(gpt):
    r = VQ_CONFIG.resolution
    frames = torch.zeros(2, 3, OPTIONAL.n_cond_frames, r, r)
    with pytest.raises(InputError, match="frames_present must be bools"):
        gpt.condition(None, frames, 2, torch.tensor([1, 0]))
    with pytest.raises(InputError, match="cond_frames is None"):
        gpt.condition(None, None, 2, torch.tensor([True, False]))


def test_a_classes_bundle_draws_a_class_for_requests_without_one(tmp_path):
    from models import load_gpt, save_bundle
    from models.bundle import BundleInfo
    from models.sampling import SamplingControls

    no_frames = dataclasses.replace(OPTIONAL, n_cond_frames=0)
    model = random_gpt(VQ_CONFIG, no_frames, seed=8)
    dropped = load_gpt(save_bundle(model, tmp_path / "dropped", BundleInfo(name="d")))
    drawing = load_gpt(save_bundle(model, tmp_path / "classes", BundleInfo(name="c", unconditional="classes")))
    assert dropped.info.unconditional == "dropped" and drawing.info.unconditional == "classes"
    drawn = SamplingControls.build(3, seed=11).classes(no_frames.class_cond_dim)
    assert torch.equal(sample(drawing, 3, seed=11), sample(dropped, 3, seed=11, class_labels=drawn))
    mixed = sample(drawing, 3, seed=11, class_labels=[1, -1, -1])
    assert torch.equal(mixed, sample(dropped, 3, seed=11, class_labels=[1, *drawn[1:].tolist()]))
    assert not torch.equal(sample(dropped, 3, seed=11), sample(drawing, 3, seed=11))
    # Guided, it steers towards the drawn class as a class request does (the served default for such a prior).
    guided = sample(drawing, 3, seed=11, guidance=3.0)
    assert torch.equal(guided, sample(dropped, 3, seed=11, class_labels=drawn, guidance=3.0))
    assert not torch.equal(guided, sample(drawing, 3, seed=11))
    counts = torch.bincount(SamplingControls.build(400, seed=0).classes(4), minlength=4)
    assert counts.min() > 70  # about uniform: 100 each


@pytest.mark.parametrize("config, unconditional, message", [
    (OPTIONAL, "sometimes", "unconditional must be one of dropped, classes, got 'sometimes'"),
    (dataclasses.replace(OPTIONAL, class_cond_dim=None), "classes", "needs a class-conditional prior"),
    (dataclasses.replace(OPTIONAL, condition_dropout=0.0), "classes", "trained with condition dropout"),
])
def test_a_bad_unconditional_setting_is_refused(tmp_path, config, unconditional, message):
    from models import save_bundle
    from models.bundle import BundleInfo

    with pytest.raises(ConfigError, match=message):
        save_bundle(random_gpt(VQ_CONFIG, config), tmp_path / "b", BundleInfo(name="b", unconditional=unconditional))
