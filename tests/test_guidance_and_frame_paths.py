"""Classifier-free guidance in the sampler, and priors with our extra frame paths: the frame encoding added at
each code's place (aligned_frames) and a summary of it given to every layer norm (global_frames).

(Cached decoding of aligned priors equals teacher forcing: test_optional_conditions.)"""

import dataclasses

import pytest
import torch
from model_factory import random_gpt
from test_generality import CASES
from test_optional_conditions import mixed_inputs

from models import ConfigError, InputError, VideoGPT, sample

VQ_CONFIG, BASE = CASES["class-frames-sparse"]
ALIGNED = dataclasses.replace(BASE, condition_dropout=0.5, aligned_frames=True)


@pytest.fixture(scope="module")
def aligned():
    return random_gpt(VQ_CONFIG, ALIGNED, seed=3)


@pytest.fixture(scope="module")
def plain(aligned):
    """The aligned prior without its aligned path: every other weight the same."""
    model = VideoGPT(dataclasses.replace(ALIGNED, aligned_frames=False), aligned.vqvae)
    state = {k: v for k, v in aligned.state_dict().items() if not k.startswith("frames_in.")}
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("name", ["aligned_frames", "global_frames"])
def test_frame_paths_need_frames(name):
    with pytest.raises(ConfigError, match=f"{name} needs frame conditioning"):
        dataclasses.replace(CASES["stride1x2x2-uncond-sparse"][1], **{name: True})
    with pytest.raises(ConfigError, match=f"{name} must be true or false"):
        dataclasses.replace(ALIGNED, **{name: "yes"})
    with pytest.raises(ConfigError, match="aligned_steps must be one of all, given, got 'first'"):
        dataclasses.replace(ALIGNED, aligned_steps="first")
    with pytest.raises(ConfigError, match="aligned_steps 'given' needs aligned_frames"):
        dataclasses.replace(ALIGNED, aligned_frames=False, aligned_steps="given")


def test_aligned_given_steps_hold_the_frames_only_where_they_fall():
    """With aligned_steps "given", the frames' features go to the latent steps the frames fall in, and
    are the same there as with "all"."""
    everywhere = random_gpt(VQ_CONFIG, ALIGNED, seed=7)
    given = VideoGPT(dataclasses.replace(ALIGNED, aligned_steps="given"), everywhere.vqvae).eval()
    given.load_state_dict(everywhere.state_dict())
    _, labels, frames, present = mixed_inputs(everywhere)
    t, h, w = everywhere.latent_shape
    steps = -(-ALIGNED.n_cond_frames // VQ_CONFIG.downsample[0])
    assert 0 < steps < t
    with torch.no_grad():
        full = everywhere.condition(labels, frames, 4, present).frames_aligned.view(4, t, h, w, -1)
        part = given.condition(labels, frames, 4, present).frames_aligned.view(4, t, h, w, -1)
    assert torch.equal(part[:, :steps], full[:, :steps]) and part[:2, :steps].abs().amax() > 0
    assert torch.equal(part[:, steps:], torch.zeros_like(part[:, steps:]))


def test_a_new_global_frames_prior_computes_what_the_plain_prior_does():
    """The summary's gains and biases start at zero: training begins from the plain prior."""
    plain = random_gpt(VQ_CONFIG, ALIGNED, seed=4)
    fresh = VideoGPT(dataclasses.replace(ALIGNED, global_frames=True), plain.vqvae).eval()
    missing, unexpected = fresh.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".summary_" in k for k in missing)
    codes, labels, frames, present = mixed_inputs(plain)
    with torch.no_grad():
        assert torch.equal(fresh.forward(codes, fresh.condition(labels, frames, 4, present)),
                           plain.forward(codes, plain.condition(labels, frames, 4, present)))


def test_global_summary_reaches_only_the_samples_with_frames():
    gpt = random_gpt(VQ_CONFIG, dataclasses.replace(ALIGNED, global_frames=True), seed=6)
    without = VideoGPT(dataclasses.replace(ALIGNED, global_frames=False), gpt.vqvae).eval()
    without.load_state_dict({k: v for k, v in gpt.state_dict().items() if ".summary_" not in k})
    codes, labels, frames, present = mixed_inputs(gpt)
    c = gpt.config
    with torch.no_grad():
        cond = gpt.condition(labels, frames, 4, present)
        assert cond.frames_summary.shape == (4, 2 * c.n_cond_frames * c.resnet_dim)
        assert cond.frames_summary[:2].abs().amax(dim=-1).amin() > 0  # present = [1, 1, 0, 0]
        assert torch.equal(cond.frames_summary[2:], torch.zeros_like(cond.frames_summary[2:]))
        # The summary's only effect is in the samples with frames.
        differs = (gpt.forward(codes, cond) - without.forward(codes, without.condition(labels, frames, 4, present)))
        differs = differs.abs().amax(dim=(1, 2, 3, 4))
        assert differs[:2].min() > 1e-3 and differs[2:].max() < 1e-5


def test_aligned_path_adds_the_frames_at_each_place_and_only_for_samples_with_frames(aligned, plain):
    codes, labels, frames, present = mixed_inputs(aligned)
    with torch.no_grad():
        base = plain.condition(labels, frames, 4, present)
        cond = aligned.condition(labels, frames, 4, present)
        t, h, w = aligned.latent_shape
        added = cond.frames_aligned.view(4, t, h, w, -1)
        assert torch.equal(added[:, 0], added[:, 1])  # the same at every latent time step
        assert added[:2].abs().amin(dim=-1).amax() > 0 and torch.equal(added[2:], torch.zeros_like(added[2:]))
        assert not torch.equal(added[0, 0, 0, 0], added[0, 0, 1, 1])  # it differs by place
        # The rest of the model is the plain prior's: with the path zeroed, the logits are the same.
        differs = (aligned.forward(codes, cond) - plain.forward(codes, base)).abs().amax(dim=(1, 2, 3, 4))
        assert differs[:2].min() > 1e-3 and differs[2:].max() < 1e-5


def test_guidance_one_is_plain_sampling(aligned):
    _, labels, frames, present = mixed_inputs(aligned)
    kwargs = {"class_labels": labels, "cond_frames": frames, "frames_present": present, "seed": 5}
    assert torch.equal(sample(aligned, 4, **kwargs), sample(aligned, 4, guidance=1.0, **kwargs))
    assert not torch.equal(sample(aligned, 4, **kwargs), sample(aligned, 4, guidance=4.0, **kwargs))


def test_guided_greedy_codes_follow_the_extrapolated_logits(aligned):
    """Each guided pick is the argmax of u + s (c - u), c and u the teacher-forced logits with and
    without the sample's conditions."""
    _, labels, frames, present = mixed_inputs(aligned)
    scales = [3.0, 1.0, 0.5, 2.0]
    codes = sample(aligned, 4, class_labels=labels, cond_frames=frames, frames_present=present, top_k=1,
                   guidance=scales, seed=0)
    with torch.no_grad():
        c = aligned.forward(codes, aligned.condition(labels, frames, 4, present))
        u = aligned.forward(codes, aligned.condition(torch.full_like(labels, -1), None, 4))
    s = torch.tensor(scales).view(4, 1, 1, 1, 1)
    assert torch.equal(codes, (u + s * (c - u)).argmax(dim=-1))


def test_guidance_is_checked(aligned):
    with pytest.raises(InputError, match="guidance must be a number in"):
        sample(aligned, 2, guidance=-1.0)
    with pytest.raises(InputError, match="guidance must be a number in"):
        sample(aligned, 2, guidance=[1.0, float("nan")])
    with pytest.raises(InputError, match="guidance has 3 entries for 2 samples"):
        sample(aligned, 2, guidance=[1.0, 2.0, 3.0])
    strict = random_gpt(VQ_CONFIG, BASE, seed=1)
    _, labels, frames, _ = mixed_inputs(strict)
    labels = labels.clamp_min(0)
    with pytest.raises(InputError, match="guidance needs a prior trained with condition dropout"):
        sample(strict, 4, class_labels=labels, cond_frames=frames, guidance=2.0)
    sample(strict, 4, class_labels=labels, cond_frames=frames, guidance=1.0)  # 1 is no guidance: allowed
