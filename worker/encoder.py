"""mp4 encoding in processes of their own, at the lowest priority: the decoding engine keeps the cores.

Measured on a 2-core CPU with the shipped model's engine stepping 12 rows (1.4 ms/step alone): beside an
encoder thread of the worker process the steps took 8.2 ms (the thread's Python holds the interpreter lock
that the engine's loop needs, and ffmpeg takes the cores torch's threads wait on); beside a separate
encoding process 4.5 ms, and at nice 19 1.7 ms, while still encoding three videos a second. This module
imports no torch: the processes only run numpy and ffmpeg.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from media import write_mp4

ENCODE_PROCESSES = 2
ENCODE_NICE = 19
_pool: ProcessPoolExecutor | None = None


def _lower_priority() -> None:
    os.nice(ENCODE_NICE)


def timed_write_mp4(frames: np.ndarray, path: Path, fps: float, scale: int) -> tuple[Path, dict, float]:
    """Encode one video (uint8 frames); its path, what write_mp4 reports, and the seconds it took."""
    started = time.time()
    info = write_mp4(frames, path, fps=fps, scale=scale, threads=1)
    return path, info, time.time() - started


def encode(frames: np.ndarray, path: Path, fps: float, scale: int) -> Future:
    """Encode a video in the encoding processes (started on first use; a pool that lost a process, killed
    from outside, is replaced: the job whose encode it was fails, the next ones encode)."""
    global _pool
    for _ in range(2):
        if _pool is None:
            _pool = ProcessPoolExecutor(ENCODE_PROCESSES, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_lower_priority)
        try:
            return _pool.submit(timed_write_mp4, frames, path, fps, scale)
        except BrokenProcessPool:
            _pool.shutdown(wait=False)
            _pool = None
    raise BrokenProcessPool("the encoding processes could not be started")


def warm_up(scratch: Path) -> None:
    """Start the encoding processes now (a first encode), not with the first job."""
    encode(np.zeros((2, 2, 2, 3), dtype=np.uint8), scratch / "warm-up.mp4", 1.0, 1).result()
    (scratch / "warm-up.mp4").unlink(missing_ok=True)


def shut_down() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
