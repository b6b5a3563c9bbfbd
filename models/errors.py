"""Errors raised for bad configs, bad inputs and bad checkpoint files, each with a message for the user."""


class ModelError(ValueError):
    """Base class: something given to the models package is wrong; the message says what."""


class ConfigError(ModelError):
    """A model setting is invalid or inconsistent."""


class InputError(ModelError):
    """A tensor handed to a model has the wrong shape, type or range."""


class CheckpointError(ModelError):
    """A checkpoint or bundle cannot be read, or does not match its config."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint's pickle references code outside the allow-list; nothing from it was run."""
