"""The engine's draw of a step's codes on CPU in one compiled call (row_draw.c): the guidance mix, the class
guide's steer, the temperature, the inverse-CDF draw and the writing of the codes as the rows' next inputs.
The same in torch (models/engine.py, controls.draw) is some twenty operations a step; at one guided sample
of the shipped prior their overhead took as long as the step's layers.

A sample with top-k or top-p is mixed here and drawn by torch (controls.filter_logits): which way a sample
is drawn depends on its own request only, so its codes do not depend on what shares its steps. Where the
library cannot be built, or kernels.ENABLED lacks "row_draw" (VGS_CPU_KERNELS=false), the engine draws
with torch.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch

from . import kernels

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("row_draw.c")
FLAGS = ("-ffp-contract=off",)  # the mix rounds as torch's operations do: no fused multiply-add but lerp's
BAD_ROW = -1

_pointer, _size = ctypes.c_void_p, ctypes.c_int64


class _DrawPlan(ctypes.Structure):
    _fields_ = [("samples", _size), ("n_codes", _size),
                *[(name, _pointer) for name in ("main", "companion", "scales", "temperature", "drawn_here",
                                                "uniforms")],
                ("uniform_row", _size), ("drawn", _pointer), ("steered", _size),
                *[(name, _pointer) for name in ("guided", "guide_class", "guide_none", "guide_scales",
                                                "main_tokens", "guide_tokens", "main_rows", "main_owner",
                                                "guide_rows", "guide_owner")],
                ("main_count", _size), ("guide_count", _size), ("chosen", _pointer), ("cdf", _pointer)]


def _long(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.int64).contiguous()


class RowDraw:
    """One engine plan's draw: call(logits, guide_logits, write_tokens) -> codes (samples,) int64, each
    sample's code drawn at its next uniform (its `drawn` counter then moves on), except the samples whose
    `drawn_here` is False (top-k, top-p), whose mixed logits `chosen` keeps for torch to draw. With
    write_tokens the codes become the rows' next inputs (`main_tokens[main_rows] = codes[main_owner]`, and
    the guide's)."""

    def __init__(self, library: ctypes.CDLL, n_codes: int, main: torch.Tensor, companion: torch.Tensor | None,
                 scales: torch.Tensor, temperature: torch.Tensor, drawn_here: torch.Tensor,
                 uniforms: torch.Tensor, drawn: torch.Tensor, main_tokens: torch.Tensor, main_rows: torch.Tensor,
                 main_owner: torch.Tensor, guide: dict[str, torch.Tensor] | None = None):
        samples = main.shape[0]
        if not (uniforms.dtype == torch.float64 and uniforms.dim() == 2 and uniforms.shape[0] == samples
                and uniforms.is_contiguous() and drawn.dtype == torch.int64 and drawn.shape == (samples,)
                and drawn.is_contiguous() and main_tokens.dtype == torch.int64 and main_tokens.is_contiguous()
                and drawn_here.shape == scales.shape == temperature.shape == (samples,)
                and (companion is None or companion.shape == (samples,))
                and main_rows.shape == main_owner.shape and int(main_owner.max()) < samples
                and int(main_rows.max()) < main_tokens.shape[0]):
            raise ValueError("row draw takes per-sample plans of one length, float64 uniforms and int64 counters "
                             "and tokens, every row within the tokens")
        # kept alive (and contiguous) while the plan holds their addresses
        self._kept = [_long(main), _long(companion), scales.float().contiguous(), temperature.float().contiguous(),
                      drawn_here.to(torch.uint8).contiguous(), uniforms, drawn, main_tokens, _long(main_rows),
                      _long(main_owner)]
        self.chosen = torch.empty(samples, n_codes)
        self._cdf = torch.empty(n_codes, dtype=torch.float64)
        self.library, self.samples, self.n_codes = library, samples, n_codes
        plan = self._plan = _DrawPlan()
        plan.samples, plan.n_codes = samples, n_codes
        (plan.main, plan.companion, plan.scales, plan.temperature, plan.drawn_here, plan.uniforms, plan.drawn,
         plan.main_tokens, plan.main_rows, plan.main_owner) = (None if t is None else t.data_ptr()
                                                                for t in self._kept)
        plan.uniform_row = uniforms.shape[1]
        plan.main_count = main_rows.shape[0]
        self.steered = 0 if guide is None else guide["guided"].shape[0]
        if guide is not None:
            # the tokens are written: checked, never converted (a copy would take the codes, not the guide)
            tokens = guide["tokens"]
            parts = [*(_long(guide[name]) for name in ("guided", "class", "none", "rows", "owner")), tokens]
            if not (tokens.dtype == torch.int64 and tokens.is_contiguous() and int(parts[0].max()) < samples
                    and int(parts[4].max()) < samples and int(parts[3].max()) < tokens.shape[0]
                    and parts[3].shape == parts[4].shape):
                raise ValueError("row draw: a guide's rows beyond its samples or its tokens, or tokens not int64 "
                                 "contiguous")
            scales = guide["scales"].float().contiguous()
            self._kept += [*parts, scales]
            plan.steered, plan.guide_count = self.steered, parts[3].shape[0]
            (plan.guided, plan.guide_class, plan.guide_none, plan.guide_rows, plan.guide_owner,
             plan.guide_tokens) = (t.data_ptr() for t in parts)
            plan.guide_scales = scales.data_ptr()
        plan.chosen, plan.cdf = self.chosen.data_ptr(), self._cdf.data_ptr()
        self._plan_ref = ctypes.byref(plan)

    def __call__(self, logits: torch.Tensor, guide_logits: torch.Tensor | None = None,
                 write_tokens: bool = True) -> torch.Tensor:
        if not (logits.dtype == torch.float32 and logits.dim() == 2 and logits.shape[1] == self.n_codes
                and logits.is_contiguous() and (guide_logits is None or (
                    guide_logits.dtype == torch.float32 and guide_logits.dim() == 2
                    and guide_logits.shape[1] == self.n_codes and guide_logits.is_contiguous()))):
            raise ValueError(f"row draw takes contiguous float32 logits (rows, {self.n_codes}), given "
                             f"{tuple(logits.shape)} {logits.dtype}")
        codes = torch.empty(self.samples, dtype=torch.int64)
        guide = (None, 0) if guide_logits is None else (guide_logits.data_ptr(), guide_logits.shape[0])
        failed = self.library.draw_codes(self._plan_ref, logits.data_ptr(), logits.shape[0], *guide, codes.data_ptr(),
                                         int(write_tokens))
        if failed == BAD_ROW:
            raise ValueError(f"row draw: the plan names a row beyond the step's {logits.shape[0]} rows of logits"
                             + ("" if self.steered == 0 else " or the guide's"))
        return codes


def row_draw() -> ctypes.CDLL | None:
    """The compiled draw's library, or None where it is not enabled or cannot be built (then torch draws)."""
    if "row_draw" not in kernels.ENABLED:
        return None
    return _library()


@functools.cache
def _library() -> ctypes.CDLL | None:
    library = kernels.load(SOURCE, FLAGS, log, "row draw library", "the engine draws with torch")
    if library is None:
        return None
    library.draw_codes.argtypes = [_pointer, _pointer, _size, _pointer, _size, _pointer, ctypes.c_int]
    library.draw_codes.restype = ctypes.c_int
    return library
