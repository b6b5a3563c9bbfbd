"""The finishing processes (worker/encoder.py): a CPU worker's videos are decoded there, off the engine's
thread, into the same frames the worker's own VQ-VAE gives."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from models import load_vqvae
from worker import encoder
from worker.videos import decode_videos

SHIPPED = "weights/moving-digits"


def read_mp4(path) -> np.ndarray:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return np.stack([np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader])


def finishing_pids() -> list[int]:
    """This process's children in process groups of their own: the finishing processes (not, say,
    multiprocessing's resource tracker)."""
    pids = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
            pids += [int(pid) for pid in f.read().split()]
    return [pid for pid in pids if os.getpgid(pid) != os.getpgid(0)]


@pytest.fixture
def decoding(tmp_path):
    vqvae = load_vqvae(SHIPPED)
    encoder.use_decoders({"shipped": vqvae})
    encoder.warm_up(tmp_path)
    yield vqvae
    encoder.use_decoders({})
    encoder.shut_down()


def test_the_processes_decode_what_the_worker_would_and_encode_it(decoding, tmp_path):
    codes = torch.randint(0, decoding.config.n_codes, (2, *decoding.latent_shape))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the processes decode: a video alone, on one thread (other thread counts
    try:  # sum in other orders, and a pixel may round to one level more or less)
        here = [decode_videos(decoding, grid[None])[0] for grid in codes]
    finally:
        torch.set_num_threads(threads)
    for i, grid in enumerate(codes):
        encoded = encoder.decode_and_encode("shipped", grid.numpy(), tmp_path / f"{i}.mp4", 8.0, 2).result()
        assert encoded.decode_s > 0 and encoded.encode_s > 0
        assert encoded.info["width"] == 2 * decoding.config.resolution
        encoder.encode(here[i], tmp_path / f"here-{i}.mp4", 8.0, 2).result()
        # the same frames: the same mp4 bytes (x264 is deterministic on one thread)
        assert (tmp_path / f"{i}.mp4").read_bytes() == (tmp_path / f"here-{i}.mp4").read_bytes()
        assert read_mp4(tmp_path / f"{i}.mp4").shape == (16, 64, 64, 3)
    assert encoder.decodes("shipped") and not encoder.decodes("other")
    with pytest.raises(KeyError, match="no VQ-VAE of model 'other'"):
        encoder.decode_and_encode("other", codes[0].numpy(), tmp_path / "x.mp4", 8.0, 1)


def test_the_processes_run_apart_from_a_terminals_ctrl_c(decoding):
    finishing = finishing_pids()
    assert len(finishing) == encoder.ENCODE_PROCESSES  # their own process groups: SIGINT to ours misses them
    assert all(os.getpriority(os.PRIO_PROCESS, pid) == encoder.ENCODE_NICE for pid in finishing)


def test_other_decoders_restart_the_processes(decoding, tmp_path):
    before = set(finishing_pids())
    encoder.use_decoders({"shipped": decoding})  # the same: the processes stay
    assert set(finishing_pids()) == before
    encoder.use_decoders({"again": load_vqvae(SHIPPED)})
    encoder.warm_up(tmp_path)
    assert finishing_pids() and not set(finishing_pids()) & before
    assert not encoder.decodes("shipped") and encoder.decodes("again")


def test_the_processes_end_with_a_worker_killed_outright(tmp_path):
    script = tmp_path / "killed_worker.py"  # not worker.py: the package of that name
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from worker import encoder\n"
        "if __name__ == '__main__':\n"
        f"    encoder.warm_up(Path({str(tmp_path)!r}))\n"
        "    print('up', flush=True)\n"
        "    time.sleep(600)\n")
    worker = subprocess.Popen([sys.executable, str(script)], cwd=Path(__file__).resolve().parents[1],
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "up"
        with open(f"/proc/{worker.pid}/task/{worker.pid}/children") as f:
            finishing = [int(pid) for pid in f.read().split()]
        finishing = [pid for pid in finishing if os.getpgid(pid) != os.getpgid(worker.pid)]
        assert len(finishing) == encoder.ENCODE_PROCESSES
    finally:
        worker.kill()  # SIGKILL: the worker cannot shut its pool down
        worker.wait()
    deadline = time.monotonic() + 10 * encoder.PARENT_CHECK_S
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
              for pid in finishing):
        assert time.monotonic() < deadline, "the finishing processes outlived their worker"
        time.sleep(0.1)
