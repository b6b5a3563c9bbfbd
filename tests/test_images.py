"""The images built and run for real: `make image-test` (scripts/image-test.sh builds them with podman, then runs
this file). Containers on a bridge network with auth on: one video per mode through the gateway, every
HEALTHCHECK (and failing ones: a hung worker, something else answering on the gateway's port), the non-root
user, one copy of the code; then the compose files through podman-compose, Prometheus scraping both services.

Skipped unless VGS_IMAGE_TEST is set: the script sets it, with podman's configuration under build/podman.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import imageio_ffmpeg
import numpy as np
import pytest

from media import png_bytes

if not os.environ.get("VGS_IMAGE_TEST"):
    pytest.skip("builds and runs the images with podman: `make image-test`", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
GATEWAY_IMAGE = "localhost/videogpt-serve-gateway:latest"
WORKER_IMAGE = "localhost/videogpt-serve-worker:latest"
REDIS_IMAGE = "docker.io/library/redis:7.2-alpine"  # the stand-in: tests/images/redis.Dockerfile
APP_UID = "10001"
PREFIX = "vgs-it"
# Ports inside the containers, not the defaults: the HEALTHCHECKs must follow the gateway's --port and the
# worker's VGS_METRICS_PORT. The host reaches only the gateway (and, with compose, Prometheus) on free ports.
GATEWAY_PORT, METRICS_PORT = 8011, 9111
COMPOSE_PORTS = (18380, 18390)  # the host ports of gateway and Prometheus in tests/images/compose.test.yml
READY_TIMEOUT_S = 180
JOB_TIMEOUT_S = 180


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode:
        raise AssertionError(f"podman {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]


def port_is_free(port: int) -> bool:
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        return False
    return True


def key_file(directory: Path, key: str) -> Path:
    """An API-key file as deployments keep a secret: mode 0600, owned by root (this test runs as root)."""
    path = directory / "api_keys.txt"
    path.write_text(f"tester:{hashlib.sha256(key.encode()).hexdigest()}:admin\n")
    path.chmod(0o600)
    return path


def logs(containers: list[str]) -> str:
    return "\n".join(f"--- {name}\n" + podman("logs", "--tail", "30", name, check=False).stderr[-3000:]
                     for name in containers)


def wait_ready(url: str, containers: list[str]) -> None:
    """Until the gateway's /readyz says a worker is up; a container that stopped fails at once, with its logs."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        states = podman("inspect", "--format", "{{.Name}} {{.State.Status}}", *containers, check=False).stdout
        stopped = [line for line in states.splitlines() if not line.endswith(" running")]
        assert not stopped, f"stopped: {stopped}\n{logs(containers)}"
        time.sleep(1)
    raise AssertionError(f"{url}/readyz not ready after {READY_TIMEOUT_S} s\n{logs(containers)}")


def generate(url: str, key: str, body: dict) -> dict:
    """Submit a job through the gateway and wait for its end; returns the finished job."""
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.post(f"{url}/v1/generate", json=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    job = response.json()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while job["status"] not in ("succeeded", "failed", "canceled") and time.monotonic() < deadline:
        time.sleep(0.5)
        job = httpx.get(f"{url}/v1/jobs/{job['id']}", headers=headers, timeout=10).json()
    assert job["status"] == "succeeded", job
    return job


def check_mp4(output: dict, path: Path, frames: int) -> None:
    """Download an output and read it back: an h264 mp4 of the announced size and frame count."""
    response = httpx.get(output["url"], timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    path.write_bytes(response.content)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    count = sum(1 for _ in reader)
    assert meta["codec"] == "h264", meta
    assert tuple(meta["size"]) == (output["width"], output["height"]), meta
    assert count == output["frames"] == frames, (count, output)


def health(container: str) -> subprocess.CompletedProcess:
    return podman("healthcheck", "run", container, check=False, timeout=60)


def host_users(container: str) -> set[str]:
    """The host uid of every process in a container (no user namespace here: the container's uid)."""
    return set(podman("top", container, "huser").stdout.split()[1:])


# First: the containers of `stack` below (a module fixture) are not up yet to compete for the 2 cores.
def test_compose_deployment_with_podman_compose(tmp_path):
    """docker-compose.yml + docker-compose.cpu.yml (+ the test's ports, torch index and key file): built,
    brought up, a job through it, every HEALTHCHECK, and Prometheus scraping gateway and worker."""
    key = secrets.token_urlsafe(24)
    for port in COMPOSE_PORTS:
        assert port_is_free(port), f"port {port} (tests/images/compose.test.yml) is taken"
    gateway_port, prometheus_port = COMPOSE_PORTS
    url = f"http://127.0.0.1:{gateway_port}"
    env = {**os.environ, "VGS_URL_SIGNING_KEY": secrets.token_hex(16), "VGS_WEBHOOK_SECRET": secrets.token_hex(16),
           "VGS_PUBLIC_URL": url, "VGS_TEST_API_KEYS_FILE": str(key_file(tmp_path, key))}
    project = f"{PREFIX}-compose"
    compose = [os.environ["VGS_TEST_PODMAN_COMPOSE"], "-p", project, "-f", "docker-compose.yml",
               "-f", "docker-compose.cpu.yml", "-f", "tests/images/compose.test.yml"]

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*compose, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 or not check, f"podman-compose {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done

    # The same build as the script's (cached layers): the compose files' build sections work.
    run("--podman-build-args=--network=host", "build", "gateway", "worker")
    try:
        run("up", "-d", "redis", "gateway", "worker", "prometheus")
        names = podman("ps", "--filter", f"label=io.podman.compose.project={project}",
                       "--format", "{{.Names}}").stdout.split()
        by_service = {service: next(n for n in names if f"_{service}_" in n)
                      for service in ("redis", "gateway", "worker", "prometheus")}
        wait_ready(url, names)
        job = generate(url, key, {"mode": "class", "class_label": 7})
        check_mp4(job["outputs"][0], tmp_path / "class.mp4", 16)
        for service in ("redis", "gateway", "worker"):
            done = health(by_service[service])
            assert done.returncode == 0, (service, done.stdout, done.stderr)
        assert host_users(by_service["gateway"]) == host_users(by_service["worker"]) == {APP_UID}
        wait_targets_up(f"http://127.0.0.1:{prometheus_port}", {"gateway", "worker"})
    finally:
        run("down", "-v", "-t", "10", check=False)


def wait_targets_up(prometheus: str, jobs: set[str], timeout_s: float = 90) -> None:
    """Until Prometheus has scraped a target of each job successfully (the scrape interval is 15 s)."""
    deadline, health_by_job = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        try:
            targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            health_by_job = {t["labels"]["job"]: (t["health"], t.get("lastError")) for t in targets}
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if all(health_by_job.get(job, ("",))[0] == "up" for job in jobs):
            return
        time.sleep(2)
    raise AssertionError(f"Prometheus targets not up after {timeout_s} s: {health_by_job}")


@dataclass
class Stack:
    url: str
    key: str
    redis: str
    worker: str
    gateway: str
    network: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis, a worker and the gateway (auth on) on a bridge network, as the compose file runs them."""
    key = secrets.token_urlsafe(24)
    keys = key_file(tmp_path_factory.mktemp("secrets"), key)
    port = free_port()
    s = Stack(f"http://127.0.0.1:{port}", key, f"{PREFIX}-redis", f"{PREFIX}-worker", f"{PREFIX}-gateway",
              f"{PREFIX}-net")
    volume = f"{PREFIX}-outputs"
    env = ["-e", "VGS_REDIS_URL=redis://redis:6379/0", "-e", "VGS_STORAGE_DIR=/data/outputs",
           "-e", f"VGS_URL_SIGNING_KEY={secrets.token_hex(16)}", "-v", f"{volume}:/data/outputs"]
    try:
        podman("network", "create", s.network)
        podman("volume", "create", volume)
        podman("run", "-d", "--name", s.redis, "--network", s.network, "--network-alias", "redis", REDIS_IMAGE)
        podman("run", "-d", "--name", s.worker, "--network", s.network, *env, "-e", "VGS_DEVICE=cpu",
               "-e", f"VGS_METRICS_PORT={METRICS_PORT}", WORKER_IMAGE)
        # Started as root with a root-only secret, as the compose file does: the entrypoint drops to the app user.
        podman("run", "-d", "--name", s.gateway, "--network", s.network, "--user", "0:0",
               "-p", f"127.0.0.1:{port}:{GATEWAY_PORT}", *env, "-e", "VGS_AUTH=true",
               "-e", "VGS_API_KEYS_FILE=/run/secrets/api_keys", "-e", f"VGS_PUBLIC_URL={s.url}",
               "-v", f"{keys}:/run/secrets/api_keys:ro", GATEWAY_IMAGE,
               "videogpt-serve", "gateway", "--host", "0.0.0.0", "--port", str(GATEWAY_PORT), "--workers", "2")
        wait_ready(s.url, [s.redis, s.worker, s.gateway])
        yield s
    finally:
        podman("rm", "-f", "-t", "0", s.gateway, s.worker, s.redis, check=False)
        podman("network", "rm", "-f", s.network, check=False)
        podman("volume", "rm", "-f", volume, check=False)


@pytest.mark.parametrize(("image", "kept"), [(GATEWAY_IMAGE, []), (WORKER_IMAGE, ["weights"])])
def test_image_runs_as_the_app_user_and_holds_one_copy_of_the_code(image, kept):
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    assert info["Config"]["User"] == f"{APP_UID}:{APP_UID}"
    probe = ("import glob, importlib.util as u, json, os, sys; print(json.dumps({"
             "'app': sorted(os.listdir('/app')), 'src': os.path.exists('/src'),"
             "'missing': [n for n in sys.argv[1:] if u.find_spec(n) is None],"
             "'egg_info': glob.glob('/usr/local/**/videogpt_serve*.egg-info', recursive=True)}))")
    found = json.loads(podman("run", "--rm", "--network=none", "--entrypoint", "python", image, "-c", probe,
                              "media", "models", "jobs", "worker", "service", "cli").stdout)
    assert found == {"app": kept, "src": False, "missing": [], "egg_info": []}


def test_worker_image_has_the_cpu_torch_and_no_cuda_packages():
    listed = podman("run", "--rm", "--network=none", WORKER_IMAGE, "pip", "list", "--format=json").stdout
    packages = {p["name"].lower(): p["version"] for p in json.loads(listed)}
    assert packages["torch"] == "2.13.0+cpu"
    assert not [name for name in packages if name.startswith(("nvidia", "triton"))]


def test_the_containers_run_as_the_app_user(stack):
    for container in (stack.worker, stack.gateway):  # the gateway was started as root
        assert host_users(container) == {APP_UID}, container


def test_one_video_per_mode_through_the_gateway_with_auth(stack, tmp_path):
    assert httpx.post(f"{stack.url}/v1/generate", json={"mode": "class"}, timeout=10).status_code == 401
    first_frame = np.zeros((32, 32, 3), np.uint8)
    first_frame[8:24, 12:20] = 255
    frames_uri = "data:image/png;base64," + base64.b64encode(png_bytes(first_frame)).decode()
    bodies = {"unconditional": {"mode": "unconditional", "seed": 1},
              "class": {"mode": "class", "class_label": 3, "seed": 2},
              "frames": {"mode": "frames", "cond_frames": frames_uri, "seed": 3}}
    models = httpx.get(f"{stack.url}/v1/models", headers={"Authorization": f"Bearer {stack.key}"}, timeout=10)
    frames = {m["name"]: m["frames"] for m in models.json()["models"]}
    for mode, body in bodies.items():
        job = generate(stack.url, stack.key, body)
        assert len(job["outputs"]) == 1, job
        check_mp4(job["outputs"][0], tmp_path / f"{mode}.mp4", frames[job["model"]])


def test_the_cpu_worker_decodes_with_its_compiled_attention(stack):
    """The image's gcc builds the kernel at load, as the app user (whose home is not writable: the cache goes
    to the temp folder)."""
    done = podman("logs", stack.worker, check=False)
    said = done.stdout + done.stderr
    assert "row attention kernel for torch.float32" in said, said[-3000:]
    assert "row attention kernel unavailable" not in said


def test_healthchecks_pass_and_follow_the_configured_ports(stack):
    for image, role in ((GATEWAY_IMAGE, "gateway"), (WORKER_IMAGE, "worker")):
        assert json.loads(podman("image", "inspect", image).stdout)[0]["Healthcheck"]["Test"] == [
            "CMD", "vgs-healthcheck", role]
    for container in (stack.redis, stack.worker, stack.gateway):
        done = health(container)
        assert done.returncode == 0, (container, done.stdout, done.stderr)
    said = podman("exec", stack.worker, "vgs-healthcheck", "worker").stdout
    assert f":{METRICS_PORT}/metrics" in said
    assert f":{GATEWAY_PORT}/healthz" in podman("exec", stack.gateway, "vgs-healthcheck", "gateway").stdout


def test_healthcheck_fails_while_the_worker_hangs(stack):
    podman("kill", "--signal", "STOP", stack.worker)
    try:
        done = health(stack.worker)
        assert done.returncode != 0, done.stdout
    finally:
        podman("kill", "--signal", "CONT", stack.worker)
    assert health(stack.worker).returncode == 0


def test_healthcheck_fails_when_something_else_answers_on_the_gateway_port(stack):
    """The defect the old probe had: without the gateway, any /healthz on :8000 passed it."""
    decoy = f"{PREFIX}-decoy"
    serve = ("mkdir -p /tmp/d && echo '{\"status\": \"ok\"}' > /tmp/d/healthz "
             "&& exec python -m http.server --directory /tmp/d 8000")
    podman("run", "-d", "--name", decoy, "--network", stack.network, GATEWAY_IMAGE, "sh", "-c", serve)
    try:
        old_probe = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
        for _ in range(50):
            if podman("exec", decoy, "python", "-c", old_probe, check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the decoy did not start")
        done = health(decoy)
        assert done.returncode != 0
        said = podman("exec", decoy, "vgs-healthcheck", "gateway", check=False)
        assert said.returncode == 1 and "no `videogpt-serve gateway` process" in said.stdout
    finally:
        podman("rm", "-f", "-t", "0", decoy, check=False)
