"""`videogpt-serve up` runs Redis, a worker and the gateway together; `generate` is its client; Ctrl-C stops all."""

import signal
import subprocess
import sys
import time

import imageio_ffmpeg
from service_stack import REPO, free_port, write_bundle

from cli.processes import port_is_free


def test_up_serves_generate_and_ctrl_c_stops_everything(tmp_path):
    bundle = write_bundle(tmp_path / "bundles", "tiny")
    port, redis_port = free_port(), free_port()
    up = subprocess.Popen([sys.executable, "-m", "cli", "up", "--port", str(port), "--redis-port",
                           str(redis_port), "--data-dir", str(tmp_path / "data"), "--bundle", str(bundle)],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = []
        deadline = time.monotonic() + 120
        while not any("Ctrl-C stops it all" in line for line in banner):
            line = up.stdout.readline()
            assert line or up.poll() is None, "".join(banner)
            banner.append(line)
            assert time.monotonic() < deadline, "".join(banner)
        text = "".join(banner)
        assert f"http://127.0.0.1:{port}" in text and "curl" in text
        out = tmp_path / "three.mp4"
        done = subprocess.run([sys.executable, "-m", "cli", "generate", "--url", f"http://127.0.0.1:{port}",
                               "--mode", "class", "--label", "3", "-o", str(out)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        reader = imageio_ffmpeg.read_frames(str(out))
        next(reader)
        assert sum(1 for _ in reader) == 4
        refused = subprocess.run([sys.executable, "-m", "cli", "generate", "--url",
                                  f"http://127.0.0.1:{port}", "--mode", "class", "--label", "12", "-o", str(out)],
                                 cwd=REPO, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "class_label" in refused.stderr and "out of range" in refused.stderr
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=60)
    assert code == 0
    assert port_is_free(port) and port_is_free(redis_port), "gateway and redis stopped with it"
