"""Batching in the worker: continuous (jobs join and leave a running engine) and static (one batch at a time).

A job's videos depend on its seed only: joining a busy engine, or sharing it with a job that is canceled,
changes nothing in them.
"""

from __future__ import annotations

import time

import httpx
import pytest
from service_stack import serving, write_bundle
from test_service_api import eight_concurrent_jobs, submit, wait

# Videos 4x the bundle's 16 frames for the jobs others join or share with: long enough to be still running
# when the next job comes, however fast the steps.
LONG = 64


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batching")
    bundles = [write_bundle(tmp / "bundles", "slow", latent=(8, 16, 16), layers=2, seed=1)]
    with serving(tmp, bundles) as s:
        yield s


def video(api, job) -> bytes:
    return api.get(job["outputs"][0]["url"]).content


def started_steps(api, job_id, at_least: float, timeout_s: float = 60) -> None:
    """Wait until the job has drawn at least this fraction of its codes."""
    deadline = time.monotonic() + timeout_s
    while api.get(f"/v1/jobs/{job_id}").json()["progress"] < at_least:
        assert time.monotonic() < deadline, "the job did not get going"
        time.sleep(0.02)


def test_a_job_joining_a_running_one_has_the_video_it_has_alone(stack):
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        alone = wait(api, submit(api, mode="class", class_label=2, seed=42).json()["id"])
        busy = submit(api, mode="unconditional", seed=7, num_samples=3, num_frames=LONG).json()["id"]
        started_steps(api, busy, 0.2)
        joined = wait(api, submit(api, mode="class", class_label=2, seed=42).json()["id"])
        assert wait(api, busy)["status"] == "succeeded"
        assert joined["status"] == alone["status"] == "succeeded"
        assert joined["metrics"]["batch_samples"] > 1, "it shared the engine"
        assert video(api, joined) == video(api, alone)


def test_canceling_one_job_leaves_the_others_videos_unchanged(stack):
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        alone = wait(api, submit(api, mode="class", class_label=4, seed=9).json()["id"])
        doomed = submit(api, mode="unconditional", seed=3, num_samples=2, num_frames=LONG).json()["id"]
        kept = submit(api, mode="class", class_label=4, seed=9).json()["id"]
        started_steps(api, doomed, 0.1)
        assert api.post(f"/v1/jobs/{doomed}/cancel").status_code == 200
        assert wait(api, doomed)["status"] == "canceled"
        kept = wait(api, kept)
        assert kept["status"] == "succeeded" and video(api, kept) == video(api, alone)


def test_static_batching_decodes_eight_concurrent_jobs_in_one_batch(tmp_path):
    bundle = write_bundle(tmp_path / "bundles", "tiny")
    with serving(tmp_path, [bundle], VGS_BATCHING="static") as s:
        jobs = eight_concurrent_jobs(s)
    assert [j["metrics"]["batch_jobs"] for j in jobs] == [8] * 8, [j["metrics"] for j in jobs]
    assert {j["metrics"]["batch_samples"] for j in jobs} == {8}


def test_static_and_continuous_batching_give_one_video_per_seed(stack, tmp_path):
    body = {"mode": "class", "class_label": 1, "seed": 123}
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        continuous = video(api, wait(api, submit(api, **body).json()["id"]))
    bundle = write_bundle(tmp_path / "bundles", "slow", latent=(8, 16, 16), layers=2, seed=1)
    with serving(tmp_path, [bundle], VGS_BATCHING="static") as s, httpx.Client(base_url=s.url, timeout=30) as api:
        static = video(api, wait(api, submit(api, **body).json()["id"]))
    assert static == continuous
