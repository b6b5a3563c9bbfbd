"""The compiled step (models/row_step.py): a step's layers in one call give the logits and cache entries of
the layer-by-layer step bit for bit, for rows joining and leaving at any step, and a row the same bits
alone as beside others; a plan that would differ is not used, its check leaves the decoder as it found
it, and it runs once a prior and row count."""

from __future__ import annotations

import logging

import pytest
import torch
from model_factory import random_gpt
from test_engine import CROWDED, forced_logits
from test_generality import CASES

from models import GPTConfig, VQVAEConfig, kernels, row_step
from models.decoding import RowDecoder

SMALL_VQ = VQVAEConfig(embedding_dim=8, n_codes=32, n_hiddens=16, n_res_layers=1, downsample=(2, 4, 4),
                       sequence_length=8, resolution=32)  # latent 4x8x8: 256 positions, blocks of 128
STEP_CASES = {
    "class-full": (SMALL_VQ, GPTConfig(hidden_dim=48, heads=3, layers=2, attn_type="full", class_cond_dim=4)),
    "class-sparse": (SMALL_VQ, GPTConfig(hidden_dim=36, heads=2, layers=2, attn_type="sparse", class_cond_dim=3,
                                         sparse_block_size=16)),
    "uncond-sparse": CASES["stride1x2x2-uncond-sparse"],
    "class-frames-sparse": CASES["class-frames-sparse"],  # the halves, with the cross-attention between
    "frames-full": CASES["stride4x2x2-frames-full"],
}


def decoded_logits(gpt, compiled: bool, monkeypatch, starts: dict[int, int] = CROWDED,
                   rows: int = 8) -> dict[int, list[torch.Tensor]]:
    """forced_logits with the compiled step or without it (and checking which the decoder took)."""
    monkeypatch.setattr(kernels, "ENABLED", set(kernels.KERNELS) - (set() if compiled else {"row_step"}))
    assert (RowDecoder(gpt, rows=rows).compiled_step is not None) == compiled
    return forced_logits(gpt, starts, rows)


@pytest.mark.parametrize("case", sorted(STEP_CASES))
def test_the_compiled_step_gives_the_layer_by_layer_logits_bit_for_bit(case, monkeypatch, favour_products):
    favour_products("compiled")
    gpt = random_gpt(*STEP_CASES[case], seed=5)
    layered = decoded_logits(gpt, compiled=False, monkeypatch=monkeypatch)
    compiled = decoded_logits(gpt, compiled=True, monkeypatch=monkeypatch)
    for row in layered:
        assert all(torch.equal(a, b) for a, b in zip(layered[row], compiled[row])), f"row {row} differs"
    for row in layered:  # and alone, a row's bits are the ones it had beside the others
        alone = decoded_logits(gpt, compiled=True, monkeypatch=monkeypatch, starts={row: 0}, rows=1)[row]
        assert all(torch.equal(a, b) for a, b in zip(alone, compiled[row])), f"row {row} changed alone"


def test_a_plan_that_differs_is_not_used_and_the_check_leaves_the_decoder_fresh(monkeypatch, favour_products,
                                                                                caplog):
    favour_products("compiled")
    gpt = random_gpt(*STEP_CASES["class-full"], seed=5)
    checked = RowDecoder(gpt, rows=4)
    assert checked.compiled_step is not None
    fresh = {"positions": 0, "tokens": checked.sos, "keys": 0, "values": 0}
    for name, value in fresh.items():
        assert bool((getattr(checked, name) == value).all()), f"the check left {name} changed"
    for gain, bias in checked.tables.norms.values():
        assert bool((gain == 1).all()) and bool((bias == 0).all())
    assert checked.active == 0

    def off_by_a_bit(original):
        def step(self, *args):
            logits = original(self, *args)
            logits[-1, -1] = torch.nextafter(logits[-1, -1], torch.tensor(float("inf")))
            return logits
        return step

    monkeypatch.setattr(row_step.RowStep, "step", off_by_a_bit(row_step.RowStep.step))
    other = random_gpt(*STEP_CASES["class-full"], seed=6)  # a prior whose plan has not been checked yet
    with caplog.at_level(logging.WARNING, logger="models.row_step"):
        assert RowDecoder(other, rows=4).compiled_step is None
    assert "differs from the layer-by-layer step" in caplog.text


def test_the_check_runs_once_for_a_prior_and_row_count(monkeypatch, favour_products):
    favour_products("compiled")
    checks = []
    real = row_step._agrees
    monkeypatch.setattr(row_step, "_agrees", lambda *args: checks.append(args[0]) or real(*args))
    gpt = random_gpt(*STEP_CASES["class-full"], seed=7)
    decoders = [RowDecoder(gpt, rows=rows) for rows in (4, 4, 2)]
    assert all(decoder.compiled_step is not None for decoder in decoders)
    assert checks == [decoders[0], decoders[2]]


def test_the_compiled_step_refuses_inputs_it_was_not_planned_for(favour_products):
    favour_products("compiled")
    gpt = random_gpt(*STEP_CASES["class-full"], seed=5)
    decoder = RowDecoder(gpt, rows=2)
    step = decoder.compiled_step
    for rows in (0, 3):  # none, or more than the decoder holds
        with pytest.raises(ValueError, match="row step takes 1 to 2 rows"):
            step.step(rows)
    for tokens, positions in (([decoder.sos + 1, 0], [0, 0]), ([-1, 0], [0, 0]), ([0, 0], [0, decoder.seq_len])):
        decoder.tokens[:2], decoder.positions[:2] = torch.tensor(tokens), torch.tensor(positions)
        with pytest.raises(ValueError, match="a code beyond"):
            step.step(2)
        assert decoder.positions[:2].tolist() == positions  # nothing stepped
