"""Compiling the decoder's C kernels for this machine (row_attention.c, row_ops.c, row_step.c, row_draw.c):
with the machine's C compiler (`$CC`, else gcc) for this CPU (-march=native), once per machine and source: a
library is kept under $XDG_CACHE_HOME (or ~/.cache)/videogpt-serve/kernels, named by a hash of everything that went
into it.
A kernel not in ENABLED is not used (the worker's VGS_CPU_KERNELS=false empties it): the decoder then uses
torch's operations.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

KERNELS = ("row_attention", "row_ops", "row_step", "row_draw")
ENABLED = set(KERNELS)  # the kernels the decoder may use (a benchmark or test takes some out)
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-Wno-psabi")
COMPILE_TIMEOUT_S = 120
SHARED_HEADER = Path(__file__).with_name("kernel_math.h")  # what the sources #include: part of every key


class BuildError(RuntimeError):
    pass


def build(source: Path, defines: tuple[str, ...] = ()) -> Path:
    """The library compiled from source with these -D defines, compiled unless this machine has it already."""
    compiler = shutil.which(os.environ.get("CC", "gcc"))
    if compiler is None:
        raise BuildError(f"no C compiler ({os.environ.get('CC', 'gcc')}) on PATH")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    texts = [source.read_text(), SHARED_HEADER.read_text()]
    key = hashlib.sha256("\0".join([*texts, *FLAGS, *defines, compiler, version, _cpu()]).encode())
    folder = _cache_dir()
    target = folder / f"{source.stem}-{key.hexdigest()[:20]}.so"
    if target.exists():
        return target
    # Built under a name of its own and renamed: processes that build at once each see a whole library.
    partial = folder / f".{target.name}.{os.getpid()}"
    command = [compiler, *FLAGS, *defines, str(source), "-o", str(partial)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BuildError(f"{' '.join(command)} failed: {done.stderr.strip()[-400:]}")
    partial.replace(target)
    return target


def load(source: Path, defines: tuple[str, ...], log: logging.Logger, what: str, instead: str) -> ctypes.CDLL | None:
    """The library of source (build), loaded; None where it cannot be built or loaded, after a warning on
    the caller's `log` that `what` is unavailable, why, and what does its work `instead`."""
    try:
        return ctypes.CDLL(str(build(source, defines)))
    except (OSError, subprocess.SubprocessError, BuildError) as error:
        log.warning("%s unavailable (%s); %s", what, error, instead)
        return None


def _cpu() -> str:
    """What -march=native compiles for: the CPU's name and flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    for folder in (base / "videogpt-serve" / "kernels",
                   Path(tempfile.gettempdir()) / f"videogpt-serve-kernels-{os.getuid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    raise BuildError("no writable folder for compiled kernels")
