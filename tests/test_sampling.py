"""The KV-cached sampler: equal to teacher forcing, deterministic per seed, truncation as specified."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from model_factory import random_gpt
from test_generality import CASES, inputs_for

from models import (
    InputError,
    SamplingCancelled,
    convert_official_checkpoint,
    kernels,
    load_gpt,
    sample,
    sample_seed,
)
from models.controls import filter_logits
from models.decoding import RowDecoder
from models.sampling import SamplingControls

GPT_FIXTURES = ["gpt_classcond_full", "gpt_uncond_sparse", "gpt_framecond_full"]


@pytest.fixture(scope="module")
def fixture_models(tmp_path_factory, fixtures_dir):
    out = tmp_path_factory.mktemp("bundles")
    return {name: load_gpt(convert_official_checkpoint(fixtures_dir / f"{name}.ckpt", out / name))
            for name in GPT_FIXTURES}


def forced_step_logits(gpt, codes, labels, frames, static=False, frames_present=None, spare_rows=2):
    """Per-step logits of the cached decoder made to emit `codes` (static: the CUDA-graph form of the step,
    every row over the whole cache), with spare rows the decoder may compute beside them."""
    batch = codes.shape[0]
    decoder = RowDecoder(gpt, batch + spare_rows, cuda_graph=False)  # in the prior's decode_precision
    decoder.admit(gpt.condition(labels, frames, batch, frames_present), batch)
    flat = codes.flatten(1)
    steps = []
    for pos in range(flat.shape[1]):
        steps.append(decoder.step_full() if static else decoder.step())
        decoder.set_tokens(torch.arange(batch), flat[:, pos])
    return torch.stack(steps, dim=1).view(*codes.shape, -1)


@pytest.mark.parametrize("name", GPT_FIXTURES)
def test_cached_decoding_equals_the_golden_step_logits(fixture_models, fixtures_dir, name):
    gpt = fixture_models[name]
    g = torch.load(fixtures_dir / f"{name}.golden.pt", weights_only=True)
    got = forced_step_logits(gpt, g["tokens"], g.get("labels"), g.get("cond_frames"))
    assert (got - g["step_logits"]).abs().max() < 1e-4


@pytest.mark.parametrize("attention", ["kernel", "torch"], ids=["kernels", "torch"])
@pytest.mark.parametrize("static", [False, True], ids=["prefix-step", "static-step"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cached_decoding_equals_teacher_forcing(case, static, attention, monkeypatch):
    """attention: on CPU the compiled kernels (row attention and products), or torch's operations (the path a
    machine without a compiler takes, or VGS_CPU_KERNELS=false)."""
    monkeypatch.setattr(kernels, "ENABLED", set(kernels.KERNELS) if attention == "kernel" else set())
    vq_config, gpt_config = CASES[case]
    gpt = random_gpt(vq_config, gpt_config, seed=11)
    codes, labels, frames = inputs_for(gpt, batch=3, seed=4)
    with torch.no_grad():
        expected = gpt.logits(codes, labels, frames)
    assert (forced_step_logits(gpt, codes, labels, frames, static) - expected).abs().max() < 1e-4


def test_same_seed_same_codes_and_different_seeds_differ(fixture_models):
    gpt = fixture_models["gpt_uncond_sparse"]
    a = sample(gpt, 2, seed=7)
    assert a.shape == (2, 4, 8, 8) and a.dtype == torch.long
    assert torch.equal(a, sample(gpt, 2, seed=7))
    assert not torch.equal(a, sample(gpt, 2, seed=8))
    assert not torch.equal(a[0], a[1]), "samples of one request get distinct streams"


def test_a_sample_does_not_depend_on_its_batch_companions(fixture_models):
    gpt = fixture_models["gpt_classcond_full"]
    alone = sample(gpt, 1, class_labels=[3], seed=[sample_seed(5, 0)], temperature=0.9, top_k=20)
    batched = sample(gpt, 3, class_labels=[1, 3, 4], seed=[123, sample_seed(5, 0), 99],
                     temperature=[1.0, 0.9, 1.3], top_k=[None, 20, 5], top_p=[0.5, None, 1.0])
    assert torch.equal(batched[1], alone[0])
    assert torch.equal(alone, sample(gpt, 1, class_labels=[3], seed=5, temperature=0.9, top_k=20))


def test_frame_conditioned_batch_takes_per_sample_frames(fixture_models):
    gpt = fixture_models["gpt_framecond_full"]
    frames = torch.rand(2, 3, 1, 32, 32) - 0.5
    both = sample(gpt, 2, cond_frames=frames, seed=[1, 2])
    assert torch.equal(both[1], sample(gpt, 1, cond_frames=frames[1:], seed=[2])[0])


def test_top_k_one_is_greedy(fixture_models):
    gpt = fixture_models["gpt_uncond_sparse"]
    codes = sample(gpt, 2, seed=3, top_k=1)
    with torch.no_grad():
        logits = gpt.logits(codes)
    assert torch.equal(codes, logits.argmax(dim=-1))


def test_low_temperature_approaches_greedy_and_codes_stay_in_range(fixture_models):
    gpt = fixture_models["gpt_classcond_full"]
    codes = sample(gpt, 2, class_labels=[0, 1], seed=3, temperature=1e-4)
    with torch.no_grad():
        assert torch.equal(codes, gpt.logits(codes, class_labels=torch.tensor([0, 1])).argmax(dim=-1))
    wild = sample(gpt, 2, class_labels=[0, 1], seed=3, temperature=50.0)
    assert int(wild.min()) >= 0 and int(wild.max()) < gpt.n_codes


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=2, max_size=40), st.integers(0, 50), st.floats(0.01, 1.0))
def test_filter_keeps_the_top_k_then_the_smallest_nucleus(values, k, p):
    logits = torch.tensor([values])
    values = logits[0].tolist()  # as float32 sees them
    kept = torch.isfinite(filter_logits(logits, torch.tensor([k]), torch.tensor([p])))[0]
    n = len(values)
    order = sorted(range(n), key=lambda i: -values[i])
    assert max(values[i] for i in range(n) if kept[i]) == max(values), "a most likely token is always kept"
    assert int(kept.sum()) <= (k if k > 0 else n)
    # every kept token is at least as likely as every dropped one
    if (~kept).any():
        assert min(values[i] for i in range(n) if kept[i]) >= max(values[i] for i in range(n) if not kept[i])
    # the kept set reaches mass p of the top-k distribution, and is minimal: without its least likely member
    # (ties aside) it would fall short
    top = torch.tensor(values)[torch.tensor(order[: (k if k > 0 else n)])]
    probs = torch.softmax(top, dim=0)
    m = int(kept.sum())
    assert float(probs[:m].sum()) >= min(p, 1.0) - 1e-5
    if m > 1 and values[order[m - 1]] != values[order[m - 2]]:
        assert float(probs[: m - 1].sum()) < p + 1e-5


def test_sampled_tokens_stay_inside_the_filtered_support(fixture_models):
    gpt = fixture_models["gpt_uncond_sparse"]
    codes = sample(gpt, 3, seed=21, top_k=3, top_p=0.8)
    with torch.no_grad():
        logits = gpt.logits(codes).flatten(0, 3)
    ranks = (logits > logits.gather(1, codes.flatten()[:, None])).sum(dim=1)
    assert int(ranks.max()) < 3


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0}, "temperature must be a number > 0"),
    ({"temperature": -1.0}, "temperature must be a number > 0"),
    ({"temperature": float("nan")}, "temperature must be a number > 0"),
    ({"top_k": 0}, "top_k must be an integer >= 1"),
    ({"top_p": 0.0}, r"top_p must be a number in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be a number in \(0, 1\]"),
    ({"seed": -3}, "seed must be an integer"),
    ({"temperature": [1.0, 1.0, 1.0]}, "temperature has 3 entries for 2 samples"),
])
def test_bad_sampling_settings_are_refused(fixture_models, kwargs, message):
    with pytest.raises(InputError, match=message):
        sample(fixture_models["gpt_uncond_sparse"], 2, **kwargs)


def test_bad_n_and_conditioning(fixture_models):
    with pytest.raises(InputError, match="n must be an integer >= 1"):
        sample(fixture_models["gpt_uncond_sparse"], 0)
    with pytest.raises(InputError, match="class label 9 is out of range"):
        sample(fixture_models["gpt_classcond_full"], 1, class_labels=[9])


def test_progress_is_reported_and_ends_at_the_total(fixture_models):
    calls = []
    sample(fixture_models["gpt_uncond_sparse"], 1, seed=1, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (256, 256)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))


def test_should_stop_cancels_decoding(fixture_models, monkeypatch):
    import models.sampling as sampling

    monkeypatch.setattr(sampling, "STOP_POLL_INTERVAL_S", 0.0)
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > 10

    with pytest.raises(SamplingCancelled) as err:
        sample(fixture_models["gpt_uncond_sparse"], 1, seed=1, should_stop=should_stop)
    assert 0 < err.value.done_steps < err.value.total_steps == 256


def test_seeds_of_a_request_are_distinct_streams():
    seeds = [sample_seed(s, i) for s in range(20) for i in range(20)]
    assert len(set(seeds)) == len(seeds)
    controls = SamplingControls.build(2, seed=4)
    u = controls.uniforms(100)
    assert u.shape == (2, 100) and not torch.equal(u[0], u[1])
    assert math.isclose(float(u.mean()), 0.5, abs_tol=0.1)


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_reduced_precision_sampling_runs_and_tracks_float32(fixture_models, precision):
    """The reduced decoding precisions on CPU: the same layers, bfloat16 activations and cache."""
    import copy

    gpt = fixture_models["gpt_classcond_full"]
    half = copy.copy(gpt)
    half.decode_precision = precision
    codes = sample(half, 2, class_labels=[1, 2], seed=5)
    assert codes.shape == (2, 4, 8, 8) and 0 <= int(codes.min()) and int(codes.max()) < gpt.n_codes
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        full = gpt.logits(codes, labels)
    got = forced_step_logits(half, codes, labels, None).float()
    assert (got - full).abs().max() < 0.1 * full.abs().max()


@pytest.mark.parametrize("width", [8, 24, 40, 32, 64])
def test_int8_linear_takes_any_input_width(width):
    """torch's int8 CPU kernel takes inputs a multiple of 16 wide (others crashed the process): every width
    gives the float product within int8's rounding."""
    from models.precision import Int8Linear

    torch.manual_seed(width)
    linear = torch.nn.Linear(width, 24)
    x = torch.randn(8, width)
    with torch.no_grad():
        want = linear(x)
    got = Int8Linear(linear)(x).float()
    assert (got - want).abs().max() < 0.03 * want.abs().max()
