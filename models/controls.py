"""How one sample's codes are drawn: its settings (temperature, top-k, top-p), its seed's random streams,
and the draw itself, by inverse CDF in float64 so that a seed means the same video on every device.

Every function here treats a row of logits alone: a sample's draw never depends on its companions.
"""

from __future__ import annotations

import hashlib
import math
import os

import torch
import torch.nn.functional as F

from .errors import InputError
from .limits import MAX_SEED


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of a request seeded with `seed` (distinct streams, not seed + index)."""
    digest = hashlib.sha256(f"videogpt-serve:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & MAX_SEED


def random_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") & MAX_SEED


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    return seed


def check_sampling(temperature: object, top_k: object, top_p: object) -> None:
    """Raise InputError unless these are valid settings of one sample (top_k, top_p None: no limit)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise InputError(f"temperature must be a number > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"top_k must be an integer >= 1 (or None for no limit), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise InputError(f"top_p must be a number in (0, 1] (or None for no limit), got {top_p!r}")


def drawn_class(seed: int, n_classes: int) -> int:
    """A class drawn uniformly from a stream of the sample's seed apart from its codes' stream."""
    return int(torch.randint(n_classes, (1,), generator=torch.Generator().manual_seed(sample_seed(seed, -1))))


def uniform_stream(seed: int, steps: int) -> torch.Tensor:
    """(steps,) float64 uniforms in [0, 1): the numbers a sample's codes are drawn with, in order."""
    return torch.rand(steps, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def filter_logits(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Logits (B, K) with the tokens outside each row's top-k, then outside its top-p nucleus, set to -inf.

    top-p keeps the smallest set of most likely tokens whose probability (after top-k) reaches top_p;
    rows with top_k 0 and top_p 1 are left exactly as they are.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)
    limit = torch.where(top_k > 0, top_k, logits.shape[-1]).to(logits.device)
    removed = ranks[None, :] >= limit[:, None]
    probs = F.softmax(sorted_logits.masked_fill(removed, float("-inf")), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    top_p = top_p.to(logits.device)[:, None]
    # top_p 1 keeps everything: a cumulative sum that rounds past 1 must not drop a tail token
    removed |= (mass_before >= top_p) & (top_p < 1)
    removed[:, 0] = False  # the most likely token always stays
    return logits.scatter(-1, order, sorted_logits.masked_fill(removed, float("-inf")))


def draw(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
         uniforms: torch.Tensor, truncated: bool | None = None) -> torch.Tensor:
    """One code per row of logits (B, K), by inverse CDF at each row's uniform number (B,); truncated says
    whether any row has a top-k or top-p (None: look)."""
    logits = logits.float() / temperature.to(logits.device)[:, None]
    if truncated is None:
        truncated = bool((top_k > 0).any()) or bool((top_p < 1).any())
    if truncated:
        logits = filter_logits(logits, top_k, top_p)
    cdf = F.softmax(logits, dim=-1, dtype=torch.float64).cumsum(dim=-1)
    target = uniforms.to(cdf.device)[:, None] * cdf[:, -1:]
    picks = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return picks.clamp_(max=logits.shape[-1] - 1)
