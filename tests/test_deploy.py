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
    assert "AS gateway" in text and "AS worker" in text
    worker = text[text.index("AS worker"):]
    assert "USER 10001" in worker and "HEALTHCHECK" in worker and "COPY weights" in worker
    gateway = text[text.index("AS gateway"):text.index("AS worker")]
    assert "torch" not in gateway.lower() and "USER 10001" in gateway


def compose_env() -> dict[str, str]:
    return {**os.environ, "VGS_URL_SIGNING_KEY": "test-signing-key", "VGS_WEBHOOK_SECRET": "test-webhook-secret"}


def test_compose_file_validates_and_has_the_parts():
    done = run(tool(COMPOSE), "-f", "docker-compose.yml", "config", env=compose_env())
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert set(services) >= {"redis", "gateway", "worker", "prometheus", "grafana", "seaweedfs"}
    assert "--appendonly" in services["redis"]["command"] and services["redis"]["volumes"]
    assert any(str(p.get("published", p) if isinstance(p, dict) else p).startswith("8000")
               for p in services["gateway"]["ports"])
    assert services["gateway"]["environment"]["VGS_AUTH"] == "true"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "ports" not in services["worker"], "a fixed host port would stop --scale worker=N"
    assert services["seaweedfs"]["profiles"] == ["s3"]
    for name in ("redis", "gateway", "worker"):
        assert services[name]["healthcheck"] and services[name]["restart"] == "unless-stopped"
    grafana_mounts = " ".join(str(v) for v in services["grafana"]["volumes"])
    assert "deploy/grafana/provisioning" in grafana_mounts and "deploy/grafana/dashboards" in grafana_mounts


def test_cpu_override_drops_the_gpu_reservation():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!reset", lambda loader, node: {"!reset": loader.construct_sequence(node)})
    override = yaml.load((REPO / "docker-compose.cpu.yml").read_text(), Loader=Loader)
    worker = override["services"]["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"] == {"!reset": []}
    assert worker["build"]["args"]["TORCH_INDEX"].endswith("/cpu") and worker["environment"]["VGS_DEVICE"] == "cpu"


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
