"""What the model config dataclasses share: integer checks and a JSON-ready dict."""

from __future__ import annotations

import dataclasses

from .errors import ConfigError


def require_int(name: str, value: object, minimum: int) -> None:
    """Raise ConfigError unless value is an int (not a bool) of at least minimum."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")


class Settings:
    """Mixin for frozen config dataclasses."""

    def to_dict(self) -> dict:
        """Every setting, tuples as lists (as they read back from JSON)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}  # type: ignore[call-overload]
