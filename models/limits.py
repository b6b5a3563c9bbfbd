"""The models' rules that the gateway checks requests against, without torch: seeds, guidance scales and
sampling temperatures.

The gateway imports this module alone (`models/__init__.py` loads the torch modules only when asked for
them), so a request is refused by the same numbers the sampler would refuse it by.
"""

from __future__ import annotations

MAX_SEED = 2**63 - 1  # seeds seed torch.Generator, which takes 64-bit signed integers
MAX_GUIDANCE = 20.0
MAX_TEMPERATURE = 10.0


def is_guidance_scale(value: object) -> bool:
    """Whether value is a number in [0, MAX_GUIDANCE]: a guidance or class-guide scale."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_GUIDANCE


def is_temperature(value: object) -> bool:
    """Whether value is a number in (0, MAX_TEMPERATURE]: a sampling temperature."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= MAX_TEMPERATURE


def guided_unconditional(unconditional: str) -> bool:
    """Whether unconditional requests can be guided: a prior that draws them a class ("classes") steers
    towards that class as a class request does; through the class-dropped path there is nothing to steer to."""
    return unconditional == "classes"


def default_guidance(mode: str, model_guidance: float, unconditional: str = "dropped") -> float:
    """The guidance scale of a request that names none: the model's, except without a condition to steer
    towards (mode unconditional on the class-dropped path), where guidance is off (1)."""
    if mode == "unconditional" and not guided_unconditional(unconditional):
        return 1.0
    return float(model_guidance)
