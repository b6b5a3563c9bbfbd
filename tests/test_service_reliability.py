"""No accepted job is lost: leases and the reaper, killed and stopped workers, the job time limit."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from service_stack import RedisServer, serving, write_bundle
from test_service_api import submit, wait

from jobs.catalog import Catalog
from jobs.queue import Entry
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
    Catalog(store.redis, "vgs").publish_model({"name": "tiny", "modes": ["unconditional"]})
    store.create("j3", request())
    store.create("j4", request())
    rq_id = store.get("j3")["rq_id"]
    assert store.queue.take("tiny").job_id == "j3"  # popped by a worker that died before claiming it
    reaper = Reaper(store, ServiceSettings())
    assert reaper.reap()["stranded"] == 0, "too recent to judge"
    assert reaper.reap(now=time.time() + STRANDED_AFTER_S + 1)["stranded"] == 1
    assert store.queue.depth("tiny") == 2 and store.get("j3")["status"] == "queued"
    assert store.get("j3")["rq_id"] != rq_id


def test_a_model_without_workers_expires_and_its_queued_jobs_fail(store):
    settings = ServiceSettings(model_ttl_s=1)
    catalog = Catalog(store.redis, "vgs", model_ttl_s=settings.model_ttl_s)
    catalog.publish_model({"name": "mine", "modes": ["unconditional"]})
    catalog.heartbeat("w1", ["mine"], ttl_s=30)
    assert catalog.served("mine")
    catalog.retire("w1")
    assert not catalog.served("mine") and "mine" in catalog.models(), "still known: a worker may come back"
    store.create("waits", request(model="mine"))
    time.sleep(1.2)  # no worker beat for model_ttl_s: the entry expires
    assert "mine" not in catalog.models()
    counts = Reaper(store, settings).reap(now=time.time() + STRANDED_AFTER_S + 1)
    assert counts["no_worker"] == 1
    record = store.get("waits")
    assert record["status"] == "failed" and record["error"]["code"] == "no_worker"
    assert "'mine'" in record["error"]["message"] and "VGS_MODEL_TTL_S" in record["error"]["message"]
    assert store.queue.depth("mine") == 0 and catalog.names() == []


def test_beats_keep_a_model_listed_and_entries_without_a_lifetime_get_one(store):
    catalog = Catalog(store.redis, "vgs", model_ttl_s=1)
    catalog.publish_model({"name": "kept", "modes": ["unconditional"]})
    for _ in range(3):
        time.sleep(0.5)
        catalog.heartbeat("w1", ["kept"], ttl_s=30)
    assert "kept" in catalog.models() and catalog.served("kept")
    store.redis.delete("vgs:model:kept")  # lost (say, Redis was away longer than the lifetime)
    catalog.heartbeat("w1", ["kept"], ttl_s=30)
    assert "kept" in catalog.models(), "a worker announces its model again"
    old = Catalog(store.redis, "vgs")  # entries written before models expired, as older workers did
    old.publish_model({"name": "old", "modes": ["unconditional"]})
    old.publish_model({"name": "old-but-served", "modes": ["unconditional"]})
    old.heartbeat("w2", ["old-but-served"], ttl_s=30)
    assert store.redis.pttl("vgs:model:old") == -1
    catalog.forget_expired()
    assert 0 < store.redis.pttl("vgs:model:old") <= 1000
    assert store.redis.pttl("vgs:model:old-but-served") == -1, "not while a worker serves it"


def test_queue_depth_counts_only_queued_jobs_and_the_reaper_purges_the_rest(store):
    Catalog(store.redis, "vgs").publish_model({"name": "tiny", "modes": ["unconditional"]})
    for job_id in ("a", "b", "c"):
        store.create(job_id, request())
    assert store.request_cancel("b") == "canceled"
    store.queue.put_back("tiny", Entry.parse(store.get("b")["rq_id"]))  # a canceled job's entry back in the list
    store.queue.put_back("tiny", Entry.parse("expired-0123456789ab"))  # an entry whose record is gone
    assert store.queue.depth("tiny") == 4 and store.queued_count("tiny") == 2
    assert Reaper(store, ServiceSettings()).reap()["purged"] == 2
    assert store.queue.depth("tiny") == 2 and [e.job_id for e in store.queue.entries("tiny")] == ["a", "c"]


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


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_a_job_claimed_as_redis_fails_is_left_to_its_lease_and_runs_later(tmp_path, monkeypatch, batching):
    """Redis fails right after a job moved to running, before the worker has read it back (the chaos test's
    Redis restart once landed there): the worker must stop renewing that job's lease, or the job stays
    running, run by nobody, for as long as the worker lives. The failure is injected at that moment; Redis
    is real."""
    import redis as redis_module

    from worker.runtime import WorkerRuntime

    server = RedisServer(tmp_path / "redis").start()
    try:
        bundle = write_bundle(tmp_path / "bundles", "tiny")
        settings = ServiceSettings(redis_url=server.url, storage_dir=tmp_path / "out", batching=batching,
                                   lease_s=0.5, max_attempts=3)
        runtime = WorkerRuntime(settings)
        runtime.load([bundle])
        runtime.jobs.create("j1", request())
        runtime.jobs.queue.take("tiny")  # RQ handed it to this worker
        real_get = runtime.jobs.get

        def get_failing_once_it_runs(job_id: str):
            record = real_get(job_id)
            if record is not None and record["status"] == "running":
                raise redis_module.exceptions.ConnectionError("Connection reset by peer (injected)")
            return record

        monkeypatch.setattr(runtime.jobs, "get", get_failing_once_it_runs)
        try:
            runtime.run("j1", "tiny")
        except redis_module.exceptions.ConnectionError:
            pass  # a leader's claim: RQ records the error; the job's own record is left to its lease
        assert real_get("j1")["status"] == "running", "the claim itself went through"
        assert "j1" not in runtime.presence.running, "the worker would renew the lease of a job it does not run"
        runtime.jobs.extend_leases(list(runtime.presence.running), settings.lease_s)  # a heartbeat
        monkeypatch.setattr(runtime.jobs, "get", real_get)  # Redis is back
        time.sleep(settings.lease_s + 0.1)
        assert Reaper(runtime.jobs, settings).reap()["requeued"] == 1
        assert real_get("j1")["status"] == "queued" and real_get("j1")["attempts"] == 1
        runtime.jobs.queue.take("tiny")
        runtime.run("j1", "tiny")
        deadline = time.monotonic() + 60  # continuous: the finisher encodes and stores it on its own thread
        while real_get("j1")["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        record = real_get("j1")
        assert record["status"] == "succeeded" and record["attempts"] == 2
        assert not runtime.presence.running
    finally:
        if runtime.server is not None:
            runtime.server.close()
        server.stop()
