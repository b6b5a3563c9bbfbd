"""No accepted job is lost: leases and the reaper, killed and stopped workers, the job time limit."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from service_stack import RedisServer, serving, write_bundle
from test_service_api import submit, wait

from jobs.reaper import STRANDED_AFTER_S, Reaper
from jobs.request import JobRequest
from jobs.settings import ServiceSettings
from jobs.store import JobStore


def request(n: int = 1, model: str = "tiny") -> JobRequest:
    return JobRequest(model=model, mode="unconditional", num_samples=n, seed=1, fps=4.0)


@pytest.fixture
def store(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield JobStore(server.client(), "vgs", ttl_s=3600)
    server.stop()


def claim(store, job_id, lease_s, worker="dead-worker"):
    record = store.get(job_id)
    assert store.transition(job_id, ("queued",), lease_s=lease_s, status="running", worker=worker,
                            attempts=record["attempts"] + 1)


def test_a_job_whose_lease_ends_is_requeued_then_failed_after_max_attempts(store):
    reaper = Reaper(store, ServiceSettings(max_attempts=2))
    store.create("j1", request())
    queue = store.queue
    assert queue.depth("tiny") == 1
    queue.take("tiny")  # a worker took it ...
    claim(store, "j1", lease_s=60)
    assert reaper.reap()["requeued"] == 0, "the lease still holds"
    store.extend_leases(["j1"], -1)  # ... and died: its lease ran out
    assert reaper.reap()["requeued"] == 1
    record = store.get("j1")
    assert record["status"] == "queued" and record["attempts"] == 1 and queue.depth("tiny") == 1
    queue.take("tiny")
    claim(store, "j1", lease_s=-1)
    assert reaper.reap()["failed"] == 1
    record = store.get("j1")
    assert record["status"] == "failed" and record["error"]["code"] == "worker_lost"
    assert "2 attempts" in record["error"]["message"]
    assert store.redis.zcard(store.running_index) == 0 and store.redis.zcard(store.queued_index) == 0


def test_cancel_asked_of_a_lost_job_ends_it_canceled(store):
    store.create("j2", request())
    claim(store, "j2", lease_s=-1)
    assert store.request_cancel("j2") == "running"  # flagged; no worker will see it
    assert Reaper(store, ServiceSettings()).reap()["canceled"] == 1
    assert store.get("j2")["status"] == "canceled"


def test_a_queued_job_off_its_queue_is_requeued(store):
    store.create("j3", request())
    store.create("j4", request())
    rq_id = store.get("j3")["rq_id"]
    assert store.queue.take("tiny").job_id == "j3"  # popped by a worker that died before claiming it
    reaper = Reaper(store, ServiceSettings())
    assert reaper.reap()["stranded"] == 0, "too recent to judge"
    assert reaper.reap(now=time.time() + STRANDED_AFTER_S + 1)["stranded"] == 1
    assert store.queue.depth("tiny") == 2 and store.get("j3")["status"] == "queued"
    assert store.get("j3")["rq_id"] != rq_id


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    bundles = [write_bundle(tmp / "bundles", "slow", latent=(8, 16, 16), layers=2, seed=1)]
    with serving(tmp, bundles, VGS_LEASE_S="2", VGS_HEARTBEAT_S="0.5", VGS_REAP_INTERVAL_S="0.5") as s:
        yield s


def wait_running(api, job_id, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while api.get(f"/v1/jobs/{job_id}").json()["status"] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_killed_worker_s_job_is_finished_by_another(stack):
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        job = submit(api, mode="unconditional", num_samples=8).json()
        wait_running(api, job["id"])
        victim = next(w for w in stack.workers if w.poll() is None)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        stack.start_worker()
        done = wait(api, job["id"], timeout_s=120)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2 and len(done["outputs"]) == 8


def test_sigterm_finishes_the_running_batch_then_exits(stack):
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        stack.wait_ready()
        job = submit(api, mode="unconditional", num_samples=4).json()
        wait_running(api, job["id"])
        worker = next(w for w in stack.workers if w.poll() is None)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=120) == 0
        done = api.get(f"/v1/jobs/{job['id']}").json()
        assert done["status"] == "succeeded" and done["attempts"] == 1
        stack.start_worker()


def test_a_job_past_the_time_limit_fails_with_timeout(tmp_path):
    bundle = write_bundle(tmp_path / "bundles", "slow", latent=(8, 16, 16), layers=2)
    with serving(tmp_path, [bundle], VGS_JOB_TIMEOUT_S="0.3") as s, \
            httpx.Client(base_url=s.url, timeout=30) as api:
        done = wait(api, submit(api, mode="unconditional", num_samples=8).json()["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "timeout", done


def test_out_of_memory_splits_the_batch_and_fails_only_what_cannot_fit(tmp_path, monkeypatch):
    import torch

    import worker.runtime as runtime_module
    from worker.runtime import WorkerRuntime

    server = RedisServer(tmp_path / "redis").start()
    try:
        bundle = write_bundle(tmp_path / "bundles", "tiny")
        runtime = WorkerRuntime(ServiceSettings(redis_url=server.url, storage_dir=tmp_path / "out"))
        runtime.load([bundle])
        real_run_batch = runtime_module.run_batch
        sizes = []

        def run_batch_on_a_small_gpu(gpt, jobs, *args, **kwargs):
            sizes.append(sum(job.n for job in jobs))
            if sizes[-1] > 2:  # this "GPU" holds two samples at a time
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return real_run_batch(gpt, jobs, *args, **kwargs)

        monkeypatch.setattr(runtime_module, "run_batch", run_batch_on_a_small_gpu)
        for job_id, n in (("a", 1), ("b", 1), ("c", 3)):
            runtime.jobs.create(job_id, request(n))
            claim(runtime.jobs, job_id, lease_s=60, worker=runtime.worker_id)
        runtime.run_model("tiny", [runtime.jobs.get(j) for j in ("a", "b", "c")])
        assert sizes == [5, 1, 4, 1, 3]  # all, then [a], then [b, c], then [b], then [c] alone
        assert runtime.jobs.get("a")["status"] == runtime.jobs.get("b")["status"] == "succeeded"
        failed = runtime.jobs.get("c")
        assert failed["status"] == "failed" and failed["error"]["code"] == "out_of_memory"
        assert "3 samples" in failed["error"]["message"]
    finally:
        server.stop()
