"""Writing weight files: safetensors, readable by whoever the umask lets read them (safetensors itself
writes 0600, and other users of a shared model folder must be able to read a bundle)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                      metadata: dict[str, str] | None = None) -> None:
    save_file(tensors, str(path), metadata=metadata)
    mask = os.umask(0)
    os.umask(mask)
    mode = Path(path).stat().st_mode
    Path(path).chmod(mode | (0o444 & ~mask))
