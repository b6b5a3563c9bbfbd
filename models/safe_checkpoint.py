"""Read a `torch.save` zip checkpoint without running any code from it.

`torch.load` would import pytorch_lightning and call whatever the pickle names. This reader admits only
tensors and their storages, OrderedDict, argparse.Namespace and builtin containers; pytorch_lightning's own
classes become inert placeholders (they are only dictionary keys in a checkpoint); every other global is
refused before anything is called. Tensor bytes are read lazily, so data a caller drops (the official
checkpoints' causal masks) is never loaded.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, UnsafeCheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_PLACEHOLDER_MODULES = ("pytorch_lightning.", "lightning.", "lightning_fabric.")


class LightningPlaceholder:
    """Stands in for a pytorch_lightning class named in a checkpoint; it does nothing and keeps nothing."""

    qualname = "pytorch_lightning"

    def __new__(cls, *args: Any, **kwargs: Any) -> LightningPlaceholder:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """A tensor of the checkpoint, not yet read: `load()` reads its bytes."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    reader: CheckpointReader

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    def load(self) -> torch.Tensor:
        flat = self.reader.storage(self.storage)
        if self.shape and any(s == 0 for s in self.shape):
            return torch.empty(self.shape, dtype=self.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        if self.offset < 0 or last >= max(flat.numel(), 1) or any(s < 0 for s in self.stride):
            raise CheckpointError(f"{self.reader.path}: a tensor of shape {list(self.shape)} "
                                  "reaches outside its storage")
        return torch.as_strided(flat, self.shape, self.stride, self.offset).clone()


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> TensorRef:
    if not isinstance(storage, tuple) or len(storage) != 2 or not isinstance(storage[0], _StorageRef):
        raise CheckpointError("malformed tensor record in checkpoint")
    ints = (offset, *size, *stride)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or len(size) != len(stride):
        raise CheckpointError("malformed tensor record in checkpoint (shape, stride or offset)")
    return TensorRef(storage[0], offset, tuple(size), tuple(stride), storage[1])


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, *rest: Any) -> TensorRef:
    if not isinstance(data, TensorRef):
        raise CheckpointError("malformed parameter record in checkpoint")
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, reader: CheckpointReader):
        super().__init__(io.BytesIO(data))
        self.reader = reader

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names first, as the stock unpickler would map them (protocol 2 writes "commands.call").
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if full == "torch._utils._rebuild_tensor_v2":
            return _rebuild_tensor
        if full == "torch._utils._rebuild_parameter":
            return _rebuild_parameter
        if full == "collections.OrderedDict":
            return collections.OrderedDict
        if full == "argparse.Namespace":
            return argparse.Namespace
        if module.startswith(_PLACEHOLDER_MODULES) or module == "pytorch_lightning":
            return type(name, (LightningPlaceholder,), {"qualname": full})
        raise UnsafeCheckpointError(
            f"{self.reader.path}: refused to load: its pickle references '{full}', which is not on the "
            "allow-list (tensors, OrderedDict, argparse.Namespace, pytorch_lightning placeholders); "
            "nothing from the file was run")

    def persistent_load(self, pid: Any) -> Any:
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], torch.dtype) or not isinstance(pid[4], int)):
            raise CheckpointError(f"{self.reader.path}: unsupported storage record {pid!r:.80}")
        ref = _StorageRef(str(pid[2]), pid[1], pid[4])
        return (ref, self.reader)


class CheckpointReader:
    """A zip checkpoint opened for reading; `load()` returns its object with TensorRefs for tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise CheckpointError(f"{self.path}: is a directory, expected a .ckpt file")
        if not zipfile.is_zipfile(self.path):
            raise CheckpointError(f"{self.path}: not a PyTorch checkpoint (a zip file written by torch.save "
                                  "with torch >= 1.6 was expected)")
        self._zip = zipfile.ZipFile(self.path)
        pickles = [n for n in self._zip.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointError(f"{self.path}: not a PyTorch checkpoint (no single data.pkl inside the zip)")
        self._prefix = pickles[0][: -len("data.pkl")]
        byteorder = self._read_optional("byteorder")
        if byteorder not in (None, b"little"):
            raise CheckpointError(f"{self.path}: big-endian checkpoints are not supported")
        self._cache: dict[str, torch.Tensor] = {}

    def _read_optional(self, name: str) -> bytes | None:
        try:
            return self._zip.read(self._prefix + name)
        except KeyError:
            return None

    def load(self) -> Any:
        try:
            return _RestrictedUnpickler(self._zip.read(self._prefix + "data.pkl"), self).load()
        except CheckpointError:
            raise
        except Exception as exc:  # a truncated or garbled pickle
            raise CheckpointError(f"{self.path}: the checkpoint's pickle is corrupt ({exc})") from exc

    def storage(self, ref: _StorageRef) -> torch.Tensor:
        if ref.key not in self._cache:
            try:
                raw = self._zip.read(f"{self._prefix}data/{ref.key}")
            except KeyError:
                raise CheckpointError(f"{self.path}: tensor data '{ref.key}' is missing from the zip") from None
            itemsize = torch.empty(0, dtype=ref.dtype).element_size()
            if len(raw) < ref.numel * itemsize:
                raise CheckpointError(f"{self.path}: tensor data '{ref.key}' is truncated "
                                      f"({len(raw)} bytes, {ref.numel * itemsize} expected)")
            raw = raw[: ref.numel * itemsize]
            empty = torch.empty(0, dtype=ref.dtype)
            self._cache[ref.key] = torch.frombuffer(bytearray(raw), dtype=ref.dtype) if raw else empty
        return self._cache[ref.key]


def read_checkpoint(path: str | Path) -> Any:
    """The unpickled checkpoint object, tensors as TensorRef (call `.load()`); no code from the file runs."""
    return CheckpointReader(path).load()

