"""Write checkpoints in the official VideoGPT (PyTorch Lightning 1.3) layout, for tests of the converter."""

from __future__ import annotations

import argparse
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import torch

_PL_MODULE = "pytorch_lightning.callbacks.model_checkpoint"


def _lightning_callback_class() -> type:
    """A class pickled under pytorch_lightning's name, as the official checkpoints key their callbacks."""
    module = sys.modules.get(_PL_MODULE)
    if module is None:
        module = types.ModuleType(_PL_MODULE)
        sys.modules[_PL_MODULE] = module
    if not hasattr(module, "ModelCheckpoint"):
        cls = type("ModelCheckpoint", (), {"__module__": _PL_MODULE})
        module.ModelCheckpoint = cls
    return module.ModelCheckpoint


def write_official_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], args: dict) -> Path:
    """torch.save a Lightning-style checkpoint dict (with argparse args and a callback keyed by class)."""
    checkpoint = {
        "epoch": 1,
        "global_step": 10,
        "pytorch-lightning_version": "1.3.3",
        "callbacks": {_lightning_callback_class(): {"monitor": "val/loss", "best_model_score": torch.tensor(1.5)}},
        "optimizer_states": [],
        "lr_schedulers": [],
        "state_dict": OrderedDict((k, v.detach().clone()) for k, v in state_dict.items()),
        "hparams_name": "kwargs",
        "hyper_parameters": {"args": argparse.Namespace(**args)},
    }
    torch.save(checkpoint, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    return path
