"""Write checkpoints in the official VideoGPT (PyTorch Lightning 1.3) layout, for tests of the converter."""

from __future__ import annotations

import argparse
import contextlib
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import torch

_PL_MODULE = "pytorch_lightning.callbacks.model_checkpoint"


@contextlib.contextmanager
def _lightning_callback_class():
    """A class pickled under pytorch_lightning's name, as the official checkpoints key their callbacks.

    pickle imports the module of a class it saves, so stand-in modules exist only while saving.
    """
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", _PL_MODULE]
    added = [n for n in names if n not in sys.modules]
    for n in added:
        sys.modules[n] = types.ModuleType(n)
    cls = type("ModelCheckpoint", (), {"__module__": _PL_MODULE})
    sys.modules[_PL_MODULE].ModelCheckpoint = cls
    try:
        yield cls
    finally:
        for n in added:
            del sys.modules[n]


def write_official_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], args: dict) -> Path:
    """torch.save a Lightning-style checkpoint dict (with argparse args and a callback keyed by class)."""
    with _lightning_callback_class() as callback_class:
        _save(path, state_dict, args, callback_class)
    return path


def _save(path: Path, state_dict: dict[str, torch.Tensor], args: dict, callback_class: type) -> None:
    checkpoint = {
        "epoch": 1,
        "global_step": 10,
        "pytorch-lightning_version": "1.3.3",
        "callbacks": {callback_class: {"monitor": "val/loss", "best_model_score": torch.tensor(1.5)}},
        "optimizer_states": [],
        "lr_schedulers": [],
        "state_dict": OrderedDict((k, v.detach().clone()) for k, v in state_dict.items()),
        "hparams_name": "kwargs",
        "hyper_parameters": {"args": argparse.Namespace(**args)},
    }
    torch.save(checkpoint, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
