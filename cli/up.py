"""`videogpt-serve up`: Redis, one worker and the gateway on one machine, stopped together by Ctrl-C."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .processes import port_is_free, start_redis, stop_processes


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
    exe = [sys.executable, "-m", "cli"]
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
        stop_processes(procs)
