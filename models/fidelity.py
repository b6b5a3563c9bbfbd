"""How a reduced decoding precision compares with float32 on a prior, and which precision auto takes
(models/precision.py says what the precisions are)."""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from .decoding import RowDecoder, prepare_decoding
from .gpt import VideoGPT
from .precision import DTYPES, FASTER_BY, FIDELITY_KL, PRECISIONS, check_precision
from .sampling import sample

log = logging.getLogger(__name__)
AUTO_ENGINE_ROWS = 16  # rows of a busy worker's engine: VGS_BATCH_SIZE 8, guided (two rows a sample)
TIMING_ROUNDS = 3


@torch.no_grad()
def fidelity(gpt: VideoGPT, precision: str, codes: torch.Tensor, class_labels: torch.Tensor | None = None,
             cond_frames: torch.Tensor | None = None) -> dict[str, float]:
    """Teacher-forced next-code distributions of codes (B, t, h, w) in `precision` against float32: mean
    KL(float32 || reduced) in nats per code, and the share of codes whose most likely next code agrees."""
    check_precision(precision, allow_auto=False)
    reference = gpt.logits(codes, class_labels, cond_frames).float().flatten(0, -2)
    copy = prepare_decoding(gpt, precision)
    cond = gpt.condition(class_labels, cond_frames, codes.shape[0]).to(DTYPES[precision])
    reduced = copy.forward(codes.long(), cond).float().flatten(0, -2)
    log_p, log_q = F.log_softmax(reference, dim=-1), F.log_softmax(reduced, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()
    agreement = (reference.argmax(dim=-1) == reduced.argmax(dim=-1)).float().mean()
    return {"kl_nats_per_code": float(kl), "top1_agreement": float(agreement)}


def _probe_conditioning(gpt: VideoGPT, rows: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Labels and frames for decoding runs that only measure (what the prior requires, else none)."""
    c, device = gpt.config, gpt.fc_in.weight.device
    labels = torch.zeros(rows, dtype=torch.long, device=device) \
        if c.class_conditional and not c.conditions_optional else None
    frames = None
    if c.frame_conditional and not c.conditions_optional:
        r = gpt.vqvae.config.resolution
        frames = torch.zeros(rows, 3, c.n_cond_frames, r, r, device=device)
    return labels, frames


@torch.no_grad()
def step_time(gpt: VideoGPT, precision: str, rows: int = 4, steps: int = 8, positions: int = 3) -> float:
    """Seconds per decoding step of `rows` rows in `precision`: the mean over `positions` places spread
    over the sequence, `steps` steps at each after one of warm-up. (Steps near the start read short
    caches: timing only those favoured the precision whose weights are cheapest to read, and auto took
    int8 where, at a full engine late in a video, it was not.)"""
    labels, frames = _probe_conditioning(gpt, rows)
    decoder = RowDecoder(gpt, rows, precision=precision)
    decoder.admit(gpt.condition(labels, frames, rows), rows)
    n = decoder.seq_len
    total = 0.0
    for k in range(positions):
        # A step's time depends on how far its rows read, not on what the cache holds: the rows are put
        # at the position without prefilling it.
        decoder.positions[:rows] = max(0, min(n - steps - 1, int((k + 0.5) * n / positions)))
        decoder.step()
        if decoder.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            decoder.step()
        if decoder.device.type == "cuda":
            torch.cuda.synchronize()
        total += (time.perf_counter() - started) / steps
    return total / positions


@torch.no_grad()
def sampled_codes(gpt: VideoGPT, n: int = 2, steps: int | None = None) -> tuple[torch.Tensor, Any, Any]:
    """Codes the float32 model samples itself (n grids; `steps` raster positions of them, the rest are the
    first codes repeated), with the conditioning they were drawn with: what fidelity is measured on."""
    labels, frames = _probe_conditioning(gpt, n)
    codes = sample(gpt, n, class_labels=labels, cond_frames=frames, seed=0)
    return codes, labels, frames


def choose_precision(gpt: VideoGPT, recorded: dict[str, dict] | None = None,
                     engine_rows: int = AUTO_ENGINE_ROWS) -> tuple[str, dict]:
    """The fastest precision this machine decodes the model in, among those meeting the fidelity goal on
    it; float32 unless another is at least FASTER_BY faster both for one row and for a full engine of
    `engine_rows` rows (what a busy worker steps). The precisions are timed in turns, TIMING_ROUNDS times,
    and each keeps its median, so a burst of load elsewhere on the machine falls on all of them alike.
    Returns the precision and what was measured."""
    fidelities = dict(recorded or {})
    missing = [p for p in PRECISIONS[1:] if p not in fidelities]
    if missing:
        codes, labels, frames = sampled_codes(gpt)
        for precision in missing:
            fidelities[precision] = fidelity(gpt, precision, codes, labels, frames)
    eligible = ["float32", *(p for p in PRECISIONS[1:] if fidelities[p]["kl_nats_per_code"] <= FIDELITY_KL)]
    times: dict[str, dict[int, float]] = {}
    for rows in sorted({1, engine_rows}):
        rounds = [[step_time(gpt, p, rows) for p in eligible] for _ in range(TIMING_ROUNDS)]
        for i, precision in enumerate(eligible):
            times.setdefault(precision, {})[rows] = statistics.median(r[i] for r in rounds)
    faster = [p for p in eligible[1:] if all(times[p][rows] * FASTER_BY <= times["float32"][rows]
                                             for rows in times[p])]
    chosen = min(faster, key=lambda p: times[p][engine_rows]) if faster else "float32"
    report = {"chosen": chosen, "ms_per_step": {p: {str(rows): round(t * 1000, 3) for rows, t in by_rows.items()}
                                                for p, by_rows in times.items()},
              "fidelity": fidelities}
    log.info("decoding precision: %s (%s)", chosen, report)
    return chosen, report
