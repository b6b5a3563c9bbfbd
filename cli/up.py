"""`videogpt-serve up`: Redis, one worker and the gateway on one machine, stopped together by Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .processes import own_session, port_is_free, start_redis, stop_processes

DEFAULT_URL = "http://127.0.0.1:8000"  # generate's default --url
WORKER_STOP_S = 120  # how long the worker may take to finish its jobs at shutdown (docker compose's grace too)


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
    """Run everything until Ctrl-C, SIGTERM or until one part exits; then stop the rest in order."""
    if not port_is_free(port, host):
        raise SystemExit(f"port {port} is taken: stop what runs there, or pass --port")
    if not port_is_free(redis_port):
        raise SystemExit(f"port {redis_port} is taken: pass --redis-port")
    env = dict(os.environ)
    env.setdefault("VGS_REDIS_URL", f"redis://127.0.0.1:{redis_port}/0")
    env.setdefault("VGS_STORAGE_DIR", str(data_dir / "outputs"))
    env.setdefault("VGS_PUBLIC_URL", f"http://{host}:{port}")
    if bundles:
        env["VGS_BUNDLES"] = ",".join(bundles)
    # Requests without a model get the first of these bundles that does their mode, whatever else joins later.
    env.setdefault("VGS_DEFAULT_MODEL", ",".join(bundle_names(env)))
    exe = [sys.executable, "-m", "cli"]
    signal.signal(signal.SIGTERM, _interrupt)  # `kill`, systemd, make: the same clean stop as Ctrl-C
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start_redis(redis_port, data_dir / "redis", detached=True))
        procs.append(subprocess.Popen([*exe, "worker"], env=env, **own_session()))
        procs.append(subprocess.Popen([*exe, "gateway", "--host", host, "--port", str(port)], env=env,
                                      **own_session()))
        url = f"http://{host}:{port}"
        wait_ready(url, procs, timeout_s=120)
        print(banner(url), flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        shut_down(procs)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def bundle_names(env: dict[str, str]) -> list[str]:
    """The model names of the bundles the worker will serve (VGS_BUNDLES, else the shipped ones)."""
    from jobs.settings import ServiceSettings
    from models import read_bundle_config

    settings = ServiceSettings(**{"bundles": env["VGS_BUNDLES"]} if "VGS_BUNDLES" in env else {})
    return [read_bundle_config(path)[0].name for path in settings.bundles]


def cli_command() -> str:
    """How this shell calls videogpt-serve: bare when PATH finds this environment's, else by its path."""
    script = Path(sys.executable).parent / "videogpt-serve"
    found = shutil.which("videogpt-serve")
    if found and Path(found).resolve() == script.resolve():
        return "videogpt-serve"
    if not script.exists():
        return f"{sys.executable} -m cli"
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else str(script)


def banner(url: str) -> str:
    url_option = "" if url == DEFAULT_URL else f" --url {url}"
    return f"""
videogpt-serve is up at {url}  (API docs: {url}/docs)
Try:
  curl -s -X POST {url}/v1/generate -H 'Content-Type: application/json' \\
       -d '{{"mode": "class", "class_label": 3}}'
  curl -s {url}/v1/jobs/<id>            # poll until "succeeded", then open outputs[0].url
or: {cli_command()} generate{url_option} --mode class --label 3 -o out.mp4
Ctrl-C stops it all."""


def shut_down(procs: list[subprocess.Popen]) -> None:
    """Stop the gateway, then the worker (it finishes the jobs it runs), then Redis; a second Ctrl-C stops
    the worker at once."""
    running = [p for p in procs if p.poll() is None]
    if not running:
        return
    if len(procs) > 1 and procs[1].poll() is None:
        print(f"\nvideogpt-serve: shutting down: the gateway stops taking requests, the worker finishes the jobs it "
              f"runs (up to {WORKER_STOP_S} s; Ctrl-C again stops it now, and its jobs are retried at the next start), "
              "queued jobs stay queued in Redis for the next start, then Redis stops", flush=True)
    try:
        for index in reversed(range(len(procs))):  # procs: Redis, the worker, the gateway
            stop_processes([procs[index]], timeout_s=WORKER_STOP_S if index == 1 else 30)
    except KeyboardInterrupt:
        print("videogpt-serve: stopping now", flush=True)
        for proc in reversed(procs[1:]):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stop_processes(procs[:1], timeout_s=30)
    print("videogpt-serve: stopped", flush=True)
