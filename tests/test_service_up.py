"""`videogpt-serve up` runs Redis, a worker and the gateway together; `generate` is its client; Ctrl-C or
SIGTERM stops all three in order: the worker finishes the job it runs before Redis goes."""

import os
import shlex
import signal
import subprocess
import sys
import time

import httpx
import imageio_ffmpeg
import redis
from service_stack import REPO, free_port, write_bundle

from cli.processes import port_is_free, start_redis, stop_processes
from jobs.store import JobStore


def _as_at_a_terminal() -> None:
    # A shell's background job (`pytest &`, nohup) passes SIGINT on ignored, and Python then never turns
    # it into KeyboardInterrupt: at a terminal Ctrl-C is heard, so `up` starts with the default handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Up:
    """`videogpt-serve up` in a session of its own (as at a terminal), its output in a file."""

    def __init__(self, tmp_path, *bundles):
        self.port, self.redis_port, self.data = free_port(), free_port(), tmp_path / "data"
        self.log = tmp_path / "up.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("VGS_")}
        env.update(VGS_THREADS="1", VGS_METRICS_PORT="0", PYTHONUNBUFFERED="1")
        options = [arg for bundle in bundles for arg in ("--bundle", str(bundle))]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "up", "--port", str(self.port), "--redis-port", str(self.redis_port),
             "--data-dir", str(self.data), *options], cwd=REPO, env=env, stdout=open(self.log, "w"),
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_as_at_a_terminal)
        self.url = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text()

    def wait_banner(self, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while "Ctrl-C stops it all" not in self.output():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.2)
        return self.output()

    def stopped(self, timeout_s: float = 150) -> int:
        code = self.proc.wait(timeout=timeout_s)
        assert port_is_free(self.port) and port_is_free(self.redis_port), "gateway and redis stopped with it"
        return code


def test_up_serves_generate_and_ctrl_c_lets_the_running_job_finish(tmp_path):
    tiny = write_bundle(tmp_path / "bundles", "tiny")
    slow = write_bundle(tmp_path / "bundles", "slow", latent=(8, 16, 16), layers=2, seed=1)
    up = Up(tmp_path, tiny, slow)
    try:
        text = up.wait_banner()
        assert f"{up.url}" in text and "curl" in text
        assert f"joined Redis redis://127.0.0.1:{up.redis_port}/0" in text, "the worker says which Redis it joined"
        # The banner's command works as printed, from this shell (no activated virtual environment needed).
        command = shlex.split(next(line for line in text.splitlines() if line.startswith("or: "))[4:])
        out = tmp_path / "three.mp4"
        done = subprocess.run([*command[:-1], str(out)], cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in os.environ.items() if not k.startswith("VGS_")})
        assert done.returncode == 0, done.stderr
        reader = imageio_ffmpeg.read_frames(str(out))
        next(reader)
        assert sum(1 for _ in reader) == 4
        assert "\r" not in done.stderr and len(done.stderr.splitlines()) <= 4, "no progress flood in a log"
        refused = subprocess.run([*command[:-1], str(out), "--label", "12"], cwd=REPO, capture_output=True,
                                 text=True, timeout=60)
        assert refused.returncode == 2 and "class_label" in refused.stderr and "out of range" in refused.stderr
        # `up` pins the default to its first bundle: 'slow' sorts first, and requests without a model still
        # get 'tiny'.
        assert httpx.get(f"{up.url}/v1/models").json()["defaults"]["unconditional"] == "tiny"
        job = httpx.post(f"{up.url}/v1/generate", json={"mode": "unconditional", "model": "slow",
                                                           "num_samples": 8}).json()
        deadline = time.monotonic() + 60
        while httpx.get(f"{up.url}/v1/jobs/{job['id']}").json()["status"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(up.proc.pid, signal.SIGINT)  # Ctrl-C at a terminal: the whole foreground group gets it
    assert up.stopped() == 0
    text = up.output()
    assert "shutting down" in text and "finishing the 1 jobs it runs first" in text, text[-3000:]
    assert "stopped: every job it took has ended" in text, text[-3000:]
    assert "Traceback" not in text and "Redis failed" not in text, text[-3000:]
    port = free_port()
    server = start_redis(port, up.data / "redis")  # its data survived; the job finished before Redis went
    try:
        record = JobStore(redis.Redis(port=port), "vgs", ttl_s=3600).get(job["id"])
        assert record["status"] == "succeeded", record
    finally:
        stop_processes([server])


def test_sigterm_stops_everything_in_order(tmp_path):
    up = Up(tmp_path, write_bundle(tmp_path / "bundles", "tiny"))
    try:
        up.wait_banner()
    finally:
        up.proc.send_signal(signal.SIGTERM)  # as `kill`, systemd or make would: only `up` gets it
    assert up.stopped() == 0
    text = up.output()
    assert "shutting down" in text and "no job runs" in text and "videogpt-serve: stopped" in text, text[-3000:]
    assert "Traceback" not in text


def test_up_help_names_both_shipped_bundles():
    shown = subprocess.run([sys.executable, "-m", "cli", "up", "--help"], cwd=REPO, capture_output=True, text=True,
                           timeout=60, env={**os.environ, "COLUMNS": "300"}).stdout
    assert "weights/moving-digits and weights/moving-digits-frames" in shown, shown
