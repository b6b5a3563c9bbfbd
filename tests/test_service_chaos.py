"""Chaos: 100 jobs over 3 workers while workers are SIGKILLed three times and Redis restarts once.

Every job must end succeeded, with exactly its own outputs, each readable. The figures are printed
(run with -s to see them).
"""

from __future__ import annotations

import concurrent.futures
import random
import signal
import threading
import time
from pathlib import Path

import httpx
from service_stack import make_stack, write_bundle

JOBS, WORKERS, KILLS = 100, 3, 3


def test_chaos_no_job_lost_or_duplicated(tmp_path):
    rng = random.Random(20261125)
    s = make_stack(tmp_path, [write_bundle(tmp_path / "bundles", "medium", latent=(4, 8, 8), layers=2)],
                   VGS_LEASE_S="2", VGS_HEARTBEAT_S="0.5", VGS_REAP_INTERVAL_S="0.5", VGS_MAX_ATTEMPTS="8",
                   VGS_BATCH_SIZE="6", VGS_BATCH_WAIT_S="0.05", VGS_RATE_LIMIT_PER_MINUTE="0",
                   VGS_MAX_CONCURRENT_JOBS="0")
    s.start_gateway()
    for _ in range(WORKERS):
        s.start_worker()
    started = time.monotonic()
    try:
        s.wait_ready(workers=WORKERS)

        def submit(i: int) -> str:
            body = {"mode": "class", "class_label": i % 5, "seed": i, "num_samples": 1 + i % 2} if i % 3 \
                else {"mode": "unconditional", "seed": i}
            with httpx.Client(base_url=s.url, timeout=30) as api:
                answer = api.post("/v1/generate", json=body)
                assert answer.status_code == 202, answer.text
                return answer.json()["id"]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(submit, range(JOBS)))
        expected = {job_id: 1 + i % 2 if i % 3 else 1 for i, job_id in enumerate(ids)}

        events = []

        def chaos() -> None:
            moments = sorted(rng.uniform(0.5, 6.0) for _ in range(KILLS))
            redis_at = rng.uniform(1.0, 5.0)
            t0 = time.monotonic()
            plan = sorted([(m, "kill") for m in moments] + [(redis_at, "redis")])
            for moment, what in plan:
                time.sleep(max(0.0, moment - (time.monotonic() - t0)))
                if what == "kill":
                    live = [w for w in s.workers if w.poll() is None]
                    victim = rng.choice(live)
                    victim.send_signal(signal.SIGKILL)
                    victim.wait()
                    s.start_worker()
                else:
                    s.redis.stop()
                    time.sleep(1.0)
                    s.redis.start()
                events.append((round(time.monotonic() - t0, 2), what))

        chaos_thread = threading.Thread(target=chaos)
        chaos_thread.start()
        chaos_thread.join()
        jobs = {}
        deadline = time.monotonic() + 300
        with httpx.Client(base_url=s.url, timeout=30) as api:
            pending = set(ids)
            while pending and time.monotonic() < deadline:
                for job_id in list(pending):
                    answer = api.get(f"/v1/jobs/{job_id}")
                    if answer.status_code != 200:
                        continue
                    job = answer.json()
                    if job["status"] in ("succeeded", "failed", "canceled"):
                        jobs[job_id] = job
                        pending.discard(job_id)
                time.sleep(0.25)
        elapsed = time.monotonic() - started
        assert not pending, f"{len(pending)} jobs never finished"
        bad = {j["id"]: (j["status"], j["error"]) for j in jobs.values() if j["status"] != "succeeded"}
        assert not bad, bad
        outputs_dir = Path(s.env["VGS_STORAGE_DIR"])
        for job_id, job in jobs.items():
            assert len(job["outputs"]) == expected[job_id]
            files = sorted(p.name for p in (outputs_dir / job_id).iterdir())
            assert files == [f"{i}.mp4" for i in range(expected[job_id])], (job_id, files)  # no duplicates
        with httpx.Client(timeout=30) as plain:
            for job in rng.sample(list(jobs.values()), 20):
                for out in job["outputs"]:
                    video = plain.get(out["url"])
                    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
        retries = sum(j["attempts"] - 1 for j in jobs.values())
        batches = {j["metrics"]["batch_jobs"] for j in jobs.values()}
        print(f"\nchaos: {JOBS} jobs, {len(s.workers)} worker processes ({KILLS} SIGKILLed), 1 Redis restart, "
              f"events {events}; all succeeded; {retries} retries; batch sizes {sorted(batches)}; "
              f"{elapsed:.1f} s")
        assert events and sum(1 for _, what in events if what == "kill") == KILLS
    finally:
        s.stop()
        s.redis.stop()
