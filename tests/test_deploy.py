"""Deployment files: Dockerfile (hadolint), compose (docker-compose config), Prometheus config and alert
rules (promtool, with rule unit tests), the Grafana dashboard against the metrics the code exports, k8s."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "build" / "tools"
PROMTOOL = TOOLS / "prometheus" / "usr" / "bin" / "promtool"
COMPOSE = TOOLS / "compose" / "bin" / "docker-compose"


def tool(path: Path) -> str:
    if not path.exists():
        pytest.fail(f"{path} is missing: `make tools` installs it")
    return str(path)


def run(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def test_promtool_checks_config_rules_and_rule_unit_tests():
    promtool = tool(PROMTOOL)
    prom = REPO / "deploy" / "prometheus"
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml"),
                 ("test", "rules", "alerts_test.yml")):
        done = run(promtool, *args, cwd=prom)
        assert done.returncode == 0, done.stdout + done.stderr
    rules = yaml.safe_load((prom / "alerts.yml").read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {"NoLiveWorker", "QueueBacklogGrowing", "JobFailureRatioHigh",
                                          "GatewayLatencyP99High", "GPUMemoryNearlyFull"}


def test_dockerfile_is_hadolint_clean_with_both_targets():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = run(hadolint, "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr
    text = (REPO / "Dockerfile").read_text()
    code = re.sub(r"^#.*\n", "", text, flags=re.M)
    parts = re.split(r"^FROM (\S+) AS (\S+)$", code, flags=re.M)  # [before, image, name, body, image, name, ...]
    stages = {name: (image, body) for image, name, body in zip(parts[1::3], parts[2::3], parts[3::3])}
    worker, gateway = stages["worker"][1], stages["gateway"][1]
    assert "USER 10001" in worker and "HEALTHCHECK" in worker and "COPY weights" in worker
    assert stages["gateway"][0] == "base" and "USER 10001" in gateway
    assert "torch" not in (stages["gateway-packages"][1] + gateway).lower()
    # The HEALTHCHECKs ask the container's own process for its port instead of probing fixed ones.
    checks = re.findall(r"^HEALTHCHECK .* CMD (.+)$", text, re.M)
    assert checks == ['["vgs-healthcheck", "gateway"]', '["vgs-healthcheck", "worker"]']


def test_build_context_holds_every_package():
    """.dockerignore lets in only what the images use: a package missing there would be missing from them."""
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = [pattern.rstrip("*") for pattern in patterns["include"]]
    allowed = {line[1:] for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert (REPO / ".dockerignore").read_text().splitlines()[2] == "*", "an allowlist: everything else stays out"
    for name in [*packages, "pyproject.toml", "README.md", "weights", "deploy/image"]:
        assert name in allowed and (REPO / name).exists(), name


def compose_env() -> dict[str, str]:
    return {**os.environ, "VGS_URL_SIGNING_KEY": "test-signing-key", "VGS_WEBHOOK_SECRET": "test-webhook-secret"}


def compose_config(*files: str) -> dict:
    """The merged configuration docker-compose 1.29 (a Compose users have) gives; no -f: with the override."""
    done = run(tool(COMPOSE), *[arg for f in files for arg in ("-f", f)], "config", env=compose_env())
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_compose_file_validates_and_has_the_parts():
    services = compose_config()["services"]  # docker-compose.yml + docker-compose.override.yml
    assert set(services) >= {"redis", "gateway", "worker", "prometheus", "grafana", "seaweedfs"}
    assert "--appendonly" in services["redis"]["command"] and services["redis"]["volumes"]
    assert any(str(p.get("published", p) if isinstance(p, dict) else p).startswith("8000")
               for p in services["gateway"]["ports"])
    assert services["gateway"]["environment"]["VGS_AUTH"] == "true"
    # Started as root only for the secret: the image's entrypoint copies it and drops to the app user.
    assert services["gateway"]["user"] == "0:0" and services["gateway"]["secrets"]
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "ports" not in services["worker"], "a fixed host port would stop --scale worker=N"
    assert services["seaweedfs"]["profiles"] == ["s3"]
    for name in ("redis", "gateway", "worker"):
        assert services[name]["healthcheck"] and services[name]["restart"] == "unless-stopped"
    for name in ("gateway", "worker"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "vgs-healthcheck", name]
    grafana_mounts = " ".join(str(v) for v in services["grafana"]["volumes"])
    assert "deploy/grafana/provisioning" in grafana_mounts and "deploy/grafana/dashboards" in grafana_mounts


def test_cpu_command_leaves_out_the_gpu_reservation():
    """Naming the files leaves out docker-compose.override.yml: no !reset, which older Compose cannot read."""
    worker = compose_config("docker-compose.yml", "docker-compose.cpu.yml")["services"]["worker"]
    assert "deploy" not in worker
    assert worker["build"]["args"]["TORCH_INDEX"].endswith("/cpu") and worker["environment"]["VGS_DEVICE"] == "cpu"
    for path in REPO.glob("docker-compose*.yml"):
        yaml.safe_load(path.read_text())  # no !reset or !override tags (Compose >= 2.24): a plain YAML loader reads it


def exported_metric_names() -> set[str]:
    from prometheus_client import REGISTRY

    import service.metrics
    import worker.metrics  # noqa: F401

    names = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    names |= set(service.metrics.REDIS_GAUGES)
    return names


def test_every_dashboard_query_uses_exported_metrics():
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "videogpt-serve.json").read_text())
    exported = exported_metric_names()
    used = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"
        for target in panel["targets"]:
            used |= set(re.findall(r"\bvgs_[a-z0-9_]+", target["expr"]))
    assert used, "the dashboard queries something"
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("request rate", "latency", "queue depth", "outcomes", "stage times", "tokens per second",
                  "batch size", "gpu memory"):
        assert topic in titles, topic
    datasource = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"


def test_kubernetes_manifests():
    docs = {}
    for path in sorted((REPO / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    worker = docs[("Deployment", "worker")]["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert ("Deployment", "gateway") in docs and ("Service", "gateway") in docs
    triggers = docs[("ScaledObject", "worker")]["spec"]["triggers"]
    import redis

    from jobs.settings import ServiceSettings
    from jobs.store import JobStore

    store = JobStore(redis.Redis(), "vgs", 60)  # no connection is made
    shipped = [path.name for path in ServiceSettings().bundles]  # the bundle folders are named as the models
    assert [t["type"] for t in triggers] == ["redis"] * len(shipped)
    assert [t["metadata"]["listName"] for t in triggers] == [store.queue.list_key(name) for name in shipped]
