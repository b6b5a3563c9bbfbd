#!/usr/bin/env python3
"""HEALTHCHECK of both images: `vgs-healthcheck gateway` or `vgs-healthcheck worker` (exit 0: healthy).

It asks the container's own gateway or worker process which port to probe: the gateway's `--port` from its
command line (default 8000), the worker's VGS_METRICS_PORT from its environment (default 9100). So changing
either keeps the check right, and with no such process running the check fails, whatever else answers on the
port (on a host network, another container's gateway). Standard library only: the gateway image has no
torch, and a probe should start fast.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

TIMEOUT_S = 4


def find_process(role: str) -> tuple[list[str], dict[str, str]] | None:
    """The command line and environment of `videogpt-serve <role>` here (PID 1, or the child of an init)."""
    for pid in sorted(int(name) for name in os.listdir("/proc") if name.isdigit()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:  # gone meanwhile
            continue
        for i, arg in enumerate(argv[:-1]):
            command = os.path.basename(arg) == "videogpt-serve" or (arg == "cli" and argv[i - 1 : i] == ["-m"])
            if command and argv[i + 1] == role:
                return argv[i + 2 :], read_environ(pid)
    return None


def read_environ(pid: int) -> dict[str, str]:
    """A process's environment; this probe's own where it cannot be read (another user's process)."""
    try:
        pairs = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    except OSError:
        return dict(os.environ)
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def option(args: list[str], name: str, default: str) -> str:
    """The value of `--name VALUE` or `--name=VALUE` in args (the last one wins, as with argparse)."""
    value = default
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return response.read()


def check_gateway(args: list[str]) -> str:
    host = option(args, "--host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{host}:{option(args, '--port', '8000')}/healthz"
    if json.loads(get(url)) != {"status": "ok"}:
        raise ValueError(f"{url} did not answer as the gateway does")
    return f"the gateway answers {url}"


def check_worker(env: dict[str, str]) -> str:
    port = env.get("VGS_METRICS_PORT", "9100")
    if int(port) == 0:
        return "the worker runs (VGS_METRICS_PORT=0: no metrics to probe)"
    url = f"http://127.0.0.1:{port}/metrics"
    if b"vgs_worker_busy" not in get(url):
        raise ValueError(f"{url} answers without the worker's metrics: another process holds port {port}")
    return f"the worker answers {url}"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("gateway", "worker"):
        print("usage: vgs-healthcheck gateway|worker", file=sys.stderr)
        return 2
    role = argv[0]
    found = find_process(role)
    if found is None:
        print(f"unhealthy: no `videogpt-serve {role}` process runs in this container")
        return 1
    args, env = found
    try:
        print(check_gateway(args) if role == "gateway" else check_worker(env))
    except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
        print(f"unhealthy: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
