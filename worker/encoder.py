"""The finishing processes: mp4 encoding (and, on a CPU worker, the VQ-VAE's decoding) in processes of their
own, at the lowest priority, so the decoding engine keeps the cores.

Measured on a 2-core CPU with the shipped model's engine stepping 12 rows (1.4 ms/step alone): beside an
encoder thread of the worker process the steps took 8.2 ms (the thread's Python holds the interpreter lock
that the engine's loop needs, and ffmpeg takes the cores torch's threads wait on); beside a separate
encoding process 4.5 ms, and at nice 19 1.7 ms, while still encoding three videos a second.

A CPU worker's continuous batching also decodes here (`use_decoders`): on the engine's thread, the shipped
model's VQ-VAE took 12-15 ms a video, in which no slot stepped, and at saturation that thread (the engine's
only one while videos encode) was what bounded the worker's capacity. Each process then holds the VQ-VAEs
and decodes on one torch thread; the others import no torch and run numpy and ffmpeg only.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from media import write_mp4

ENCODE_PROCESSES = 2
ENCODE_NICE = 19
PARENT_CHECK_S = 1.0  # how often a process looks whether the worker that started it is still there
_pool: ProcessPoolExecutor | None = None
_decoders: dict[str, Any] = {}  # model name -> VQ-VAE: in the worker, what the processes are started with;
#                                 in a process, what it decodes with


@dataclass
class Encoded:
    """One video, encoded: its file, what write_mp4 reports, and the seconds the process spent."""

    path: Path
    info: dict
    encode_s: float
    decode_s: float = 0.0  # 0: it was handed frames


def _start_process(decoders: dict[str, Any]) -> None:
    os.nice(ENCODE_NICE)
    # A pool's processes outlive a worker killed with SIGKILL (the OOM killer, a chaos test): without this
    # a test suite's killed workers had left 41 of them behind, 7 GB
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    # A group of its own: a terminal's Ctrl-C, which the worker answers by finishing what it holds, does not
    # kill the videos in flight. ffmpeg inherits it, so imageio-ffmpeg need not give each ffmpeg a group of
    # its own (its preexec_fn made Python fork instead of vfork: ~15 ms of CPU a video beside torch).
    os.setpgrp()
    os.environ["IMAGEIO_FFMPEG_NO_PREVENT_SIGINT"] = "1"
    if decoders:
        import torch  # only a process that decodes pays for torch

        torch.set_num_threads(1)  # a second thread would be a core taken from the engine
        _decoders.update(decoders)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def _write(frames: np.ndarray, path: Path, fps: float, scale: int) -> Encoded:
    started = time.time()
    info = write_mp4(frames, path, fps=fps, scale=scale, threads=1)
    return Encoded(path, info, time.time() - started)


def _decode_and_write(model: str, codes: np.ndarray, path: Path, fps: float, scale: int) -> Encoded:
    import torch  # imported in the processes that decode only

    from .videos import decode_videos

    started = time.time()
    frames = decode_videos(_decoders[model], torch.from_numpy(codes)[None])[0]
    decode_s = time.time() - started
    encoded = _write(frames, path, fps, scale)
    encoded.decode_s = decode_s
    return encoded


def use_decoders(vqvaes: dict[str, Any]) -> None:
    """Decode in the processes from now on, with these VQ-VAEs (on the CPU) by model name; processes
    started with other VQ-VAEs are replaced."""
    if vqvaes == _decoders:
        return
    shut_down()
    _decoders.clear()
    _decoders.update(vqvaes)


def decodes(model: str) -> bool:
    """Whether the processes decode this model's codes (use_decoders)."""
    return model in _decoders


def _submit(fn, *args: Any) -> Future:
    """Run fn in the processes (started on first use; a pool that lost a process, killed from outside, is
    replaced: the job whose video it was fails, the next ones go on)."""
    global _pool
    for _ in range(2):
        if _pool is None:
            _pool = ProcessPoolExecutor(ENCODE_PROCESSES, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_process, initargs=(dict(_decoders),))
        try:
            return _pool.submit(fn, *args)
        except BrokenProcessPool:
            _pool.shutdown(wait=False)
            _pool = None
    raise BrokenProcessPool("the finishing processes could not be started")


def encode(frames: np.ndarray, path: Path, fps: float, scale: int) -> Future:
    """Encode a video (uint8 frames (T, H, W, 3)) in the processes; a future of its Encoded."""
    return _submit(_write, frames, path, fps, scale)


def decode_and_encode(model: str, codes: np.ndarray, path: Path, fps: float, scale: int) -> Future:
    """Decode one sample's codes (t, h, w) with the model's VQ-VAE and encode the video, in the processes
    (see use_decoders); a future of its Encoded."""
    if model not in _decoders:
        raise KeyError(f"the finishing processes have no VQ-VAE of model {model!r}")
    return _submit(_decode_and_write, model, codes, path, fps, scale)


def warm_up(scratch: Path) -> None:
    """Start every process now (a first encode each), not with the first jobs: one that decodes takes a
    second or two to import torch."""
    tiny = np.zeros((2, 2, 2, 3), dtype=np.uint8)
    paths = [scratch / f"warm-up-{os.getpid()}-{i}.mp4" for i in range(ENCODE_PROCESSES)]
    # submitted together, before any process is up: the pool starts one process for each
    for future in [encode(tiny, path, 1.0, 1) for path in paths]:
        future.result()
    for path in paths:
        path.unlink(missing_ok=True)


def shut_down() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
