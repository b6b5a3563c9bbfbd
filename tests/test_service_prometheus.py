"""A real Prometheus (Debian's package, unpacked by `make tools`) scrapes a gateway and a worker on
loopback; a metric of a finished job is then read back through Prometheus' HTTP API."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest
from service_stack import free_port, serving, write_bundle
from test_deploy import TOOLS, tool
from test_service_api import submit, wait

PROMETHEUS = TOOLS / "prometheus" / "usr" / "bin" / "prometheus"


@pytest.fixture
def stack(tmp_path):
    with serving(tmp_path, [write_bundle(tmp_path / "bundles", "tiny")], metrics_port=free_port()) as s:
        yield s


def query(url: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_prometheus_scrapes_gateway_and_worker(stack, tmp_path):
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: gateway
    static_configs: [{{targets: ["127.0.0.1:{stack.port}"]}}]
  - job_name: worker
    static_configs: [{{targets: ["127.0.0.1:{stack.worker_metrics}"]}}]
""")
    prometheus = subprocess.Popen(
        [tool(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=stack.url, timeout=30) as api:
            job = wait(api, submit(api, mode="class", class_label=4).json()["id"])
        assert job["status"] == "succeeded"
        deadline = time.monotonic() + 60
        while True:
            try:
                done = query(url, 'sum(vgs_worker_jobs_total{outcome="succeeded"})')
                submitted = query(url, 'sum(vgs_jobs_submitted_total{model="tiny"})')
                up = query(url, "up")
                if done and float(done[0]["value"][1]) >= 1 and submitted and len(up) == 2:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
        assert {r["metric"]["job"]: r["value"][1] for r in up} == {"gateway": "1", "worker": "1"}
        assert float(submitted[0]["value"][1]) >= 1
        assert query(url, "vgs_worker_sampling_seconds_count")
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=20)
