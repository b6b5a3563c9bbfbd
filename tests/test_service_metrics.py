"""Prometheus metrics of the gateway and a worker move during a real job."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_stack import free_port, serving, write_bundle
from test_service_api import submit, wait


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    with serving(tmp, [write_bundle(tmp / "bundles", "tiny")], metrics_port=free_port()) as s:
        yield s


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(url, timeout=10).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_gateway_and_worker_series_move_during_a_job(stack):
    gateway_url, worker_url = f"{stack.url}/metrics", f"http://127.0.0.1:{stack.worker_metrics}/metrics"
    before_g, before_w = scrape(gateway_url), scrape(worker_url)
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        job = wait(api, submit(api, mode="class", class_label=2, num_samples=2).json()["id"])
        assert job["status"] == "succeeded"
        assert api.post("/v1/generate", json={"mode": "class", "class_label": 99}).status_code == 422
    after_g, after_w = scrape(gateway_url), scrape(worker_url)

    posted = dict(route="/v1/generate", method="POST", status="202")
    assert value(after_g, "vgs_http_requests_total", **posted) == value(before_g, "vgs_http_requests_total",
                                                                        **posted) + 1
    assert value(after_g, "vgs_http_request_duration_seconds_count", route="/v1/generate", method="POST") >= 2
    assert value(after_g, "vgs_jobs_submitted_total", model="tiny", mode="class") == \
        value(before_g, "vgs_jobs_submitted_total", model="tiny", mode="class") + 1
    assert value(after_g, "vgs_jobs_rejected_total", reason="invalid_request") >= 1
    assert ("vgs_queue_depth", (("model", "tiny"),)) in after_g
    assert value(after_g, "vgs_workers_up", model="tiny") == 1
    polled = [k for k in after_g if k[0] == "vgs_http_requests_total" and ("route", "/v1/jobs/{job_id}") in k[1]]
    assert polled, "requests are labelled by route template, not by job id"

    assert value(after_w, "vgs_worker_jobs_total", model="tiny", outcome="succeeded") == \
        value(before_w, "vgs_worker_jobs_total", model="tiny", outcome="succeeded") + 1
    for name in ("vgs_worker_sampling_seconds_count", "vgs_worker_decode_seconds_count",
                 "vgs_worker_encode_seconds_count", "vgs_worker_upload_seconds_count",
                 "vgs_worker_queue_wait_seconds_count", "vgs_worker_batch_samples_count"):
        assert value(after_w, name, model="tiny") == value(before_w, name, model="tiny") + 1, name
    assert value(after_w, "vgs_worker_tokens_total", model="tiny") - value(before_w, "vgs_worker_tokens_total",
                                                                          model="tiny") == 2 * 32
    assert value(after_w, "vgs_worker_tokens_per_second", model="tiny") > 0
    assert value(after_w, "vgs_worker_model_load_seconds", model="tiny") > 0
    assert value(after_w, "vgs_worker_last_heartbeat_timestamp_seconds") > 1.7e9
    assert ("vgs_worker_busy", ()) in after_w


def test_logs_are_json_lines_that_name_the_job(stack):
    import json
    from pathlib import Path

    with httpx.Client(base_url=stack.url, timeout=30) as api:
        job = wait(api, submit(api, mode="unconditional").json()["id"])
    log_path = Path(stack.env["VGS_STORAGE_DIR"]).parent / "worker0.log"
    entries = []
    for line in log_path.read_text().splitlines():
        if line.strip():
            entries.append(json.loads(line))  # every line is one JSON object
    assert entries and all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    about_job = [e for e in entries if job["id"] == e.get("job_id") or job["id"] in e.get("job_ids", [])]
    assert about_job, "a log line names the job"
