"""The gateway stays torch-free, and its metrics add up across several uvicorn processes."""

from __future__ import annotations

import subprocess
import sys

import httpx
from service_stack import REPO, make_stack
from test_service_metrics import scrape


def test_gateway_modules_do_not_import_torch():
    code = ("import sys; import service.app, cli.main, cli.up, cli.client, jobs.store, jobs.reaper, jobs.storage, "
            "jobs.webhooks, jobs.backend, media, models.limits; "
            "loaded = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "assert not loaded, loaded[:3]")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_two_gateway_processes_report_one_count(tmp_path):
    stack = make_stack(tmp_path, [])
    stack.start_gateway("--workers", "2")
    try:
        stack.wait_ready(path="/healthz")
        for _ in range(40):  # a fresh connection each: the two processes share the listening socket
            assert httpx.get(f"{stack.url}/healthz", timeout=10).status_code == 200
        seen = []
        for _ in range(6):  # each scrape is answered by either process; each must see every request
            samples = scrape(f"{stack.url}/metrics")
            seen.append(sum(v for (name, labels), v in samples.items()
                            if name == "vgs_http_requests_total" and ("route", "/healthz") in labels))
        assert min(seen) >= 40, seen
    finally:
        stack.stop()
        stack.redis.stop()
