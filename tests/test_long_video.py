"""Videos longer than a model's trained length: a window slides over latent time, each later window
prefilled with the last t - stride time steps of the one before (re-encoded from their frames, or as drawn)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from model_factory import random_gpt, random_vqvae
from test_generality import CASES, inputs_for

from models import InputError, VQVAEConfig, sample
from models.engine import DecodeEngine, SampleRequest

OPTIONAL = {name: (vq, dataclasses.replace(gpt, condition_dropout=0.5) if gpt.class_cond_dim or gpt.n_cond_frames
                   else gpt) for name, (vq, gpt) in CASES.items()}
# The three fixtures' latent time steps: 4 (class-frames-sparse), 2 (stride4x2x2-frames-full), 2 (sparse).


@pytest.fixture(scope="module", params=sorted(OPTIONAL))
def gpt(request):
    vq, config = OPTIONAL[request.param]
    return random_gpt(vq, config, seed=8)


def conditioning(gpt, n: int = 2) -> dict:
    _, labels, frames = inputs_for(gpt, batch=n, seed=2)
    guided = gpt.config.conditions_optional and (labels is not None or frames is not None)
    return {"class_labels": labels, "cond_frames": frames, "guidance": 2.0 if guided else 1.0, "seed": [4, 9]}


def test_the_first_window_is_the_native_sample_and_later_ones_continue_it(gpt):
    t = gpt.latent_shape[0]
    native = sample(gpt, 2, **conditioning(gpt))
    long = sample(gpt, 2, time_steps=4 * t, **conditioning(gpt))
    assert long.shape == (2, 4 * t, *gpt.latent_shape[1:])
    assert torch.equal(long[:, :t], native)
    assert not torch.equal(long[:, t:2 * t], native), "a later window is new codes, not a copy"
    assert 0 <= int(long.min()) and int(long.max()) < gpt.n_codes


@pytest.mark.parametrize("later_context", ["codes", "reencoded"])
def test_every_window_s_context_is_the_end_of_what_came_before(later_context):
    """With a stride of one latent step, each new step is drawn after t - 1 steps of context: the codes as
    drawn, or those the VQ-VAE gives the window's last frames encoded as a clip of their own. Sampling the
    same codes again as teacher forcing over that window gives the same argmax (greedy)."""
    vq, config = OPTIONAL["class-frames-sparse"]
    gpt = random_gpt(vq, config, seed=1)
    t, _h, _w = gpt.latent_shape
    codes = sample(gpt, 1, class_labels=[2], time_steps=t + 3, window_stride=1, top_k=1, seed=3,
                   later_context=later_context)
    window = codes[:, :t]
    for end in range(t, t + 3):
        with torch.no_grad():
            if later_context == "codes":
                context = window[:, 1:]
            else:
                frames = gpt.vqvae.decode(window)[:, :, gpt.vqvae.config.downsample[0]:].clamp(-0.5, 0.5)
                context = gpt.vqvae.codebook.quantize(gpt.vqvae.encode_continuous(frames))[:, :t - 1]
            window = torch.cat([context, codes[:, end:end + 1]], dim=1)
            logits = gpt.logits(window, class_labels=torch.tensor([2]))
        assert torch.equal(logits[:, -1].argmax(-1), window[:, -1])
    if later_context == "reencoded":
        assert not torch.equal(sample(gpt, 1, class_labels=[2], time_steps=t + 3, window_stride=1, top_k=1, seed=3,
                                      later_context="codes"), codes), "re-encoding changes what the windows see"


def test_a_reencoded_context_starts_as_the_vqvae_starts_a_clip():
    """What re-encoding is for: a zero-padded VQ-VAE codes a clip's first time step unlike the same frames
    inside a longer video (the shipped one: most codes differ); the re-encoded context holds the former."""
    from models.bundle import load_vqvae
    from models.data import MovingDigits, MovingDigitsSpec

    vq = load_vqvae("weights/moving-digits")
    videos = MovingDigits("test", length=8, seed=5, spec=MovingDigitsSpec.for_video(32, 32))
    video = torch.stack([videos[i]["video"] for i in range(8)])
    with torch.no_grad():
        inside = vq.codebook.quantize(vq.encode_continuous(video))[:, 4:8]  # frames 8..15 within 32
        alone = vq.codebook.quantize(vq.encode_continuous(video[:, :, 8:16]))
    assert (inside[:, 0] == alone[:, 0]).float().mean() < 0.5, "a clip's first step is coded as a start"


def test_frames_samples_condition_later_windows_on_their_own_frames_or_the_original():
    vq, config = OPTIONAL["stride4x2x2-frames-full"]
    gpt = random_gpt(vq, config, seed=2)
    _, _, frames = inputs_for(gpt, batch=1, seed=5)
    t = gpt.latent_shape[0]
    results = {}
    for later in ("generated", "original"):
        engine = DecodeEngine(gpt, slots=2, later_frames=later)
        engine.add(SampleRequest(seed=11, cond_frames=frames[0], time_steps=3 * t))
        while engine.live:
            finished = engine.step()
        results[later] = finished[0].codes
    assert torch.equal(results["generated"][:t], results["original"][:t])
    assert not torch.equal(results["generated"], results["original"])
    through_sample = sample(gpt, 1, cond_frames=frames[:1], seed=[11], time_steps=3 * t, later_frames="original")
    assert torch.equal(through_sample.flatten(), results["original"].flatten())
    with pytest.raises(InputError, match="later_frames must be one of generated, original"):
        sample(gpt, 1, cond_frames=frames[:1], time_steps=3 * t, later_frames="last")


def test_progress_counts_every_window_and_bad_lengths_are_refused():
    vq, config = OPTIONAL["stride1x2x2-uncond-sparse"]
    gpt = random_gpt(vq, config, seed=3)
    engine = DecodeEngine(gpt, slots=1)
    t, h, w = gpt.latent_shape
    handle = engine.add(SampleRequest(seed=1, time_steps=3 * t))
    assert engine.progress(handle) == (0, 3 * t * h * w)
    for _ in range(t * h * w + 5):
        engine.step()
    assert engine.progress(handle) == (t * h * w + 5, 3 * t * h * w)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(InputError, match="time_steps must be a whole number"):
            engine.add(SampleRequest(seed=1, time_steps=bad))
    with pytest.raises(InputError, match="window stride must be 1..1"):
        DecodeEngine(gpt, slots=1, stride=2)


@pytest.mark.parametrize("attention", [False, True], ids=["convolutional", "axial-attention"])
def test_a_long_grid_decodes_to_one_video(attention):
    vq = random_vqvae(VQVAEConfig(embedding_dim=8, n_codes=16, n_hiddens=8, n_res_layers=1, downsample=(2, 4, 4),
                                  sequence_length=8, resolution=16, axial_attention=attention), seed=2)
    native = torch.randint(0, 16, (1, 4, 4, 4))
    with torch.no_grad():
        assert torch.allclose(vq.decode_long(native), vq.decode(native), atol=1e-6)
        long = torch.randint(0, 16, (2, 11, 4, 4))
        video = vq.decode_long(long)
        assert video.shape == (2, 3, 22, 16, 16) and torch.isfinite(video).all()
        if not attention:  # one pass: the same as decoding it as a whole
            assert torch.allclose(video, vq.decode_any_length(long))
        else:  # the windows agree with the native decode where only one covers the frames
            assert torch.allclose(video[:, :, :4], vq.decode(long[:, :4])[:, :, :4], atol=1e-5)
    with pytest.raises(InputError, match=r"latent grid is \(B, t, 4, 4\)"):
        vq.decode_long(torch.zeros(1, 3, 4, 5, dtype=torch.long))
