"""The decoding engine: a sample's codes are the same bits alone, in a batch started together, or joining a
running engine at any step beside any companions; a cancel frees slots without touching the others."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from model_factory import random_gpt
from test_generality import CASES, inputs_for

from models import InputError, decoding, kernels, sample
from models.decoding import RowDecoder
from models.engine import DecodeEngine, EngineFull, SampleRequest

OPTIONAL = {name: (vq, dataclasses.replace(gpt, condition_dropout=0.5) if gpt.class_cond_dim or gpt.n_cond_frames
                   else gpt) for name, (vq, gpt) in CASES.items()}


@pytest.fixture(scope="module", params=sorted(OPTIONAL))
def gpt(request):
    vq, config = OPTIONAL[request.param]
    return random_gpt(vq, config, seed=3)


def requests_for(gpt, count: int, seed: int = 0) -> list[SampleRequest]:
    """Samples with every conditioning the prior takes, mixed settings, and guidance where it can."""
    _codes, labels, frames = inputs_for(gpt, batch=count, seed=seed)
    optional = gpt.config.conditions_optional
    found = []
    for i in range(count):
        found.append(SampleRequest(
            seed=1000 + 17 * i + seed, class_label=None if labels is None else int(labels[i]),
            cond_frames=None if frames is None else frames[i], temperature=[1.0, 0.8, 1.3][i % 3],
            top_k=[None, 5, None][i % 3], top_p=[None, None, 0.9][i % 3],
            guidance=[1.0, 2.5][i % 2] if optional else 1.0, tag=i))
    return found


def run_alone(gpt, request: SampleRequest) -> torch.Tensor:
    engine = DecodeEngine(gpt, slots=2)
    engine.add(request)
    while engine.live:
        finished = engine.step()
    return finished[0].codes


def test_a_sample_is_the_same_alone_together_and_joining_at_any_step(gpt):
    requests = requests_for(gpt, 5)
    alone = [run_alone(gpt, r) for r in requests]
    engine = DecodeEngine(gpt, slots=8)
    for r in requests[:2]:
        engine.add(r)
    got, joins = {}, {3: requests[2], 7: requests[3], 10: requests[4]}  # join after that many steps
    step = 0
    while engine.live or joins:
        if step in joins:
            engine.add(joins.pop(step))
        for finished in engine.step():
            got[finished.tag] = finished.codes
        step += 1
    for i, codes in enumerate(alone):
        assert torch.equal(got[i], codes), f"sample {i} changed beside companions"
    together = sample(gpt, 5, class_labels=None if requests[0].class_label is None else
                      [r.class_label for r in requests],
                      cond_frames=None if requests[0].cond_frames is None else
                      torch.stack([r.cond_frames for r in requests]),
                      temperature=[r.temperature for r in requests], top_k=[r.top_k for r in requests],
                      top_p=[r.top_p for r in requests], guidance=[r.guidance for r in requests],
                      seed=[r.seed for r in requests])
    for i, codes in enumerate(alone):
        assert torch.equal(together[i], codes), f"sample {i} differs in a batch started together"


def test_cancel_frees_slots_and_leaves_the_others_unchanged(gpt):
    requests = requests_for(gpt, 3, seed=1)
    alone = [run_alone(gpt, r) for r in requests]
    engine = DecodeEngine(gpt, slots=4)
    handles = [engine.add(r) for r in requests[:2]]
    got = {}
    for step in range(gpt.vqvae.config.latent_shape[0] * 3):
        if step == 4:
            assert engine.cancel(handles[0]) and not engine.cancel(handles[0])
            engine.add(requests[2])  # the freed slots take the next sample
        for finished in engine.step():
            got[finished.tag] = finished.codes
    while engine.live:
        for finished in engine.step():
            got[finished.tag] = finished.codes
    assert 0 not in got
    assert torch.equal(got[1], alone[1]) and torch.equal(got[2], alone[2])


def test_a_full_engine_refuses_and_a_freed_one_takes_the_sample():
    vq, config = OPTIONAL["class-frames-sparse"]
    gpt = random_gpt(vq, config, seed=4)
    engine = DecodeEngine(gpt, slots=3)
    guided = requests_for(gpt, 2)[1]  # guidance 2.5: two rows
    engine.add(guided)
    assert engine.rows_in_use == 2 and engine.fits(dataclasses.replace(guided, guidance=1.0))
    assert not engine.fits(guided)
    with pytest.raises(EngineFull):
        engine.add(guided)
    with pytest.raises(InputError, match="temperature must be a number > 0"):
        engine.add(dataclasses.replace(guided, temperature=0.0))
    assert engine.rows_in_use == 2, "a refused sample holds no slot"


def test_a_decoding_copy_is_kept_until_the_prior_changes():
    """Engines of one prior share its decoding copy; a change of its weights in place, a new tensor in a
    weight's place or a new shared part makes the next engine copy the prior again, as it is then."""
    vq, config = OPTIONAL["class-frames-sparse"]
    gpt = random_gpt(vq, config, seed=4)
    running = DecodeEngine(gpt, slots=1)
    first = running.main.model
    assert DecodeEngine(gpt, slots=2).main.model is first
    reduced = decoding.decoding_copy(gpt, "bfloat16")
    assert reduced is not first and reduced.decode_precision == "bfloat16", "another precision, another copy"
    assert decoding.decoding_copy(gpt, "float32") is not first, "one copy kept a prior: the last one made"
    assert running.main.model is first, "an engine keeps its own"
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # row_tile chooses per thread count, and sets its choice on the copy
    try:
        other_threads = decoding.decoding_copy(gpt, "float32")
    finally:
        torch.set_num_threads(threads)
    assert decoding.decoding_copy(gpt, "float32") is not other_threads
    first = DecodeEngine(gpt, slots=1).main.model
    with torch.no_grad():
        gpt.fc_out.weight.mul_(2)
    trained = DecodeEngine(gpt, slots=1).main.model
    assert trained is not first
    assert torch.equal(trained.fc_out.weight_t, gpt.fc_out.weight.t())
    gpt.fc_out.weight = torch.nn.Parameter(gpt.fc_out.weight.detach() * 3)
    replaced = DecodeEngine(gpt, slots=1).main.model
    assert replaced is not trained and torch.equal(replaced.fc_out.weight_t, gpt.fc_out.weight.t())
    gpt.vqvae = random_gpt(vq, config, seed=5).vqvae
    assert DecodeEngine(gpt, slots=1).main.model.vqvae is gpt.vqvae


def test_the_cached_rows_equal_teacher_forcing_when_rows_join_mid_run():
    vq, config = CASES["class-frames-sparse"]
    gpt = random_gpt(vq, config, seed=11)
    codes, labels, frames = inputs_for(gpt, batch=3, seed=4)
    with torch.no_grad():
        expected = gpt.logits(codes, labels, frames).flatten(1, 3)
    decoder = RowDecoder(gpt, rows=4)
    flat = codes.flatten(1)
    cond = gpt.condition(labels, frames, 3)
    started, logits = {}, {0: [], 1: [], 2: []}
    for step in range(flat.shape[1] + 9):
        for row, at in ((0, 0), (1, 5), (2, 9)):
            if step == at:
                started[row] = decoder.admit(cond.row(row), 1)[0]
        out = decoder.step()
        live = [row for row in started if len(logits[row]) < flat.shape[1]]
        for row in live:
            place = decoder.place(started[row])
            logits[row].append(out[place])
            decoder.set_tokens(torch.tensor([place]), flat[row, len(logits[row]) - 1:len(logits[row])])
        decoder.release([started[r] for r in live if len(logits[r]) == flat.shape[1]])
        if not decoder.active:
            break
    for row in range(3):
        assert (torch.stack(logits[row]) - expected[row]).abs().max() < 1e-4


def test_prefill_then_steps_equal_teacher_forcing():
    vq, config = CASES["stride4x2x2-frames-full"]
    gpt = random_gpt(vq, config, seed=2)
    codes, labels, frames = inputs_for(gpt, batch=2, seed=1)
    with torch.no_grad():
        expected = gpt.logits(codes, labels, frames).flatten(1, 3)
    decoder = RowDecoder(gpt, rows=2)
    ids = decoder.admit(gpt.condition(labels, frames, 2), 2)
    flat = codes.flatten(1)
    prefix = flat.shape[1] // 3
    decoder.prefill(ids, flat[:, :prefix])
    for pos in range(prefix, flat.shape[1]):
        out = decoder.step()
        assert (out - expected[:, pos]).abs().max() < 1e-4
        decoder.set_tokens(torch.arange(2), flat[:, pos])


CROWDED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 5, 5: 9}  # row (of six): the step it joins at


def forced_logits(gpt, starts: dict[int, int], rows: int) -> dict[int, list[torch.Tensor]]:
    """Rows (of six samples' conditioning and codes) join one decoder of `rows` rows at the given steps and
    are forced through their codes, leaving as they end; each row's logits."""
    codes, labels, frames = inputs_for(gpt, batch=6, seed=3)
    cond, flat = gpt.condition(labels, frames, 6), codes.flatten(1)
    steps = flat.shape[1]
    decoder, ids, logits = RowDecoder(gpt, rows=rows), {}, {row: [] for row in starts}
    step = 0
    while any(len(v) < steps for v in logits.values()):
        for row, at in starts.items():
            if step == at:
                ids[row] = decoder.admit(cond.row(row), 1)[0]
        out = decoder.step()
        live = [r for r in ids if len(logits[r]) < steps]
        for row in live:
            place = decoder.place(ids[row])
            logits[row].append(out[place])
            decoder.set_tokens(torch.tensor([place]), flat[row, len(logits[row]) - 1:len(logits[row])])
        decoder.release([ids[r] for r in live if len(logits[r]) == steps])  # places move: after reading
        step += 1
    return logits


FORCED = ("tiled-products", "onednn-products", "one-row-products", "compiled-products", "bfloat16-row-reads",
          "torch-attention", "bfloat16-torch-row-reads")


@pytest.mark.parametrize("case", [*sorted(CASES), *FORCED])
def test_a_row_s_logits_are_the_same_bits_whatever_rows_share_its_steps(case, monkeypatch, favour_products):
    """The decoder-level reason the codes match: the logits themselves, bit for bit (a code only changes when
    a rounding difference lands on a boundary, so comparing codes alone would rarely notice one).
    tiled-products: the linears multiply tile by tile (what row_tile takes where no one product over all
    rows is exact, as for bfloat16 on some CPUs), forced on a full-attention case. onednn-products: float32
    products through oneDNN, taken as if faster. one-row-products: each row its own product, taken as if
    faster. compiled-products: the compiled kernel's products (row_ops.py), taken as if faster (on a prior
    this small another way may time faster by more than WAY_SLACK). bfloat16-row-reads: a full-attention
    prior in bfloat16 on CPU, each row reading its own blocks of cache. torch-attention,
    bfloat16-torch-row-reads: the same with torch's operations attending and multiplying instead of the
    compiled kernels (a machine without a compiler)."""
    precision = "bfloat16" if case.startswith("bfloat16") else "float32"
    forced = case
    if case in ("torch-attention", "bfloat16-torch-row-reads"):
        monkeypatch.setattr(kernels, "ENABLED", set())
    if case == "tiled-products":
        monkeypatch.setattr(decoding, "PLAIN_ROWS", ())
        monkeypatch.setattr(decoding, "one_row_products_possible", lambda model: False)
    if case == "onednn-products":
        if not torch.backends.mkldnn.is_available():
            pytest.skip("torch without oneDNN")
    if case in ("onednn-products", "one-row-products", "compiled-products"):
        favour_products({"onednn-products": "onednn", "one-row-products": "one_row"}.get(
            case, "compiled"))
    if case in FORCED:
        monkeypatch.setattr(decoding, "_ROW_TILES", {})
        case = next(name for name in sorted(CASES) if CASES[name][1].attn_type == "full")
    vq, config = CASES[case]
    gpt = random_gpt(vq, config, seed=7)
    gpt.decode_precision = precision
    if precision == "bfloat16":
        assert RowDecoder(gpt, rows=8).row_reads
    if forced == "onednn-products" and not RowDecoder(gpt, rows=8).model.decode_linears[0].onednn:
        pytest.skip("oneDNN's products are not exact on this machine: row_tile keeps MKL's")
    if forced == "one-row-products":
        assert RowDecoder(gpt, rows=8).model.decode_linears[0].one_row, "one-row products found inexact"
    if forced == "compiled-products":
        decoder = RowDecoder(gpt, rows=8)
        assert decoder.model.decode_linears[0].compiled is not None, "compiled products not chosen"
        assert decoder.compiled_step is not None, "the compiled step (row_step.py) not taken"
    alone = {row: forced_logits(gpt, {row: 0}, rows=1)[row] for row in range(6)}
    crowded = forced_logits(gpt, CROWDED, rows=8)
    if not decoding.PLAIN_ROWS:
        assert RowDecoder(gpt, rows=8).model.decode_linears[0].tile > 0
    for row in range(6):
        assert all(torch.equal(a, b) for a, b in zip(alone[row], crowded[row])), f"row {row} changed"


def test_codes_left_on_the_device_count_in_progress_and_come_back_whole(gpt, monkeypatch):
    """Drawn codes wait on the device for a few steps (engine.PENDING_STEPS); progress counts them, and a
    sample's grid is the same whether they are fetched every step or every few."""
    import models.engine as engine_module

    request = requests_for(gpt, 1, seed=2)[0]
    grids = []
    for pending in (1, 3):
        monkeypatch.setattr(engine_module, "PENDING_STEPS", pending)
        engine = DecodeEngine(gpt, slots=2)
        handle = engine.add(request)
        engine.step(), engine.step()
        assert engine.progress(handle)[0] == 2
        assert len(engine.live[handle].codes) == (2 if pending == 1 else 0)
        while engine.live:
            finished = engine.step()
        grids.append(finished[0].codes)
    assert torch.equal(grids[0], grids[1])
