"""Service benchmarks on loopback; each prints one JSON object.

    python bench/service.py gateway   [--requests 1500] [--concurrency 1 4 16 32]
    python bench/service.py batching  [--bundle weights/moving-digits] [--repeats 3]
    python bench/service.py load      [--bundle weights/moving-digits] [--jobs 200] [--loads 0.3 0.6 0.9]
                                      [--modes continuous --reference-capacity 4.1] [--engine-slots 32]

gateway: submit latency (p50/p99) and submit rate at each concurrency with a private Redis and the real
gateway process (no worker: jobs only queue), and the highest rate seen with zero errors.
batching: end-to-end time of 1 job vs 8 concurrent jobs of one model with one worker, and the overhead
of a job beyond sampling (queue + decode + encode + store) as a fraction of its end-to-end time.
load: static and continuous batching side by side, one worker each in turn: a job alone, the capacity
(jobs/s when 48 are submitted at once, the median of 3 such runs), then open-loop Poisson arrivals at
fractions of the static capacity (today's), each level `--jobs` jobs: p50/p95/p99 latency (submitted ->
succeeded), throughput, the mean engine slots in use (sampled from the worker's metrics), and where the
time went (each stage's mean seconds from the job records, over all jobs and over the slowest 5%).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cli.processes import free_port, start_redis, stop_processes  # noqa: E402
from jobs.catalog import Catalog  # noqa: E402


def start_stack(tmp: Path, bundles: list[str], worker: bool, **extra: str):
    redis_port, port = free_port(), free_port()
    procs = [start_redis(redis_port, tmp / "redis")]
    env = {**os.environ, "VGS_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "VGS_STORAGE_DIR": str(tmp / "out"),
           "VGS_PUBLIC_URL": f"http://127.0.0.1:{port}", "VGS_BUNDLES": json.dumps(bundles), **extra}
    log = open(tmp / "stack.log", "ab")
    exe = [sys.executable, "-m", "cli"]
    procs.append(subprocess.Popen([*exe, "gateway", "--port", str(port)], env=env, cwd=REPO, stdout=log,
                                  stderr=subprocess.STDOUT))
    if worker:
        procs.append(subprocess.Popen([*exe, "worker"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    path = "/readyz" if worker else "/healthz"
    while True:
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit(f"the stack did not start; see {tmp / 'stack.log'}")
        time.sleep(0.2)
    return url, redis_port, procs


def stop(procs) -> None:
    stop_processes(procs, timeout_s=20)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_gateway(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        # Limits off: the bench measures the submit path, not the per-key rate limit (every client is anonymous).
        url, redis_port, procs = start_stack(Path(tmp), [], worker=False, VGS_RATE_LIMIT_PER_MINUTE="0",
                                             VGS_MAX_CONCURRENT_JOBS="0", VGS_MAX_QUEUE_DEPTH="10000000")
        try:
            Catalog(redis.Redis(port=redis_port), "vgs").publish_model(
                {"name": "bench", "modes": ["unconditional", "class"], "class_names": [str(i) for i in range(10)],
                 "n_classes": 10, "n_cond_frames": 0, "frames": 16, "resolution": 32, "fps": 8.0,
                 "latent_shape": [8, 8, 8]})
            levels = []
            for concurrency in args.concurrency:
                per_client = max(1, args.requests // concurrency)

                def client_run(i: int, per_client: int = per_client) -> tuple[list[float], int]:
                    latencies, errors = [], 0
                    with httpx.Client(base_url=url, timeout=30) as client:
                        for j in range(per_client):
                            t0 = time.perf_counter()
                            answer = client.post("/v1/generate",
                                                 json={"model": "bench", "mode": "class", "class_label": j % 10})
                            latencies.append(time.perf_counter() - t0)
                            errors += answer.status_code != 202
                    return latencies, errors

                started = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                    results = list(pool.map(client_run, range(concurrency)))
                elapsed = time.perf_counter() - started
                latencies = [x for lat, _ in results for x in lat]
                errors = sum(e for _, e in results)
                levels.append({"concurrency": concurrency, "requests": len(latencies), "errors": errors,
                               "submits_per_s": round(len(latencies) / elapsed, 1),
                               "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
                               "p99_ms": round(percentile(latencies, 0.99) * 1000, 2)})
            clean = [lv for lv in levels if lv["errors"] == 0]
            return {"bench": "gateway", "levels": levels,
                    "max_rate_zero_errors": max((lv["submits_per_s"] for lv in clean), default=0.0),
                    "cpu_count": os.cpu_count()}
        finally:
            stop(procs)


# One client (its connections kept) submits every job of a run: a client each cost ~28 ms of CPU a job (its
# TLS context, built even for http), which on a 2-core host took a core from the worker's engine at every
# arrival (each stalled a step by ~23 ms: measured in the worker's loop).
SUBMIT_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=64)


def run_jobs(url: str, count: int, body: dict) -> tuple[float, list[dict]]:
    """Submit `count` jobs at once; seconds until all are terminal, and the jobs."""
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=30, limits=SUBMIT_LIMITS) as client, \
            concurrent.futures.ThreadPoolExecutor(count) as pool:
        ids = list(pool.map(lambda i: client.post("/v1/generate", json={**body, "seed": i}).json()["id"], range(count)))
    jobs = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for job_id in ids:
            while True:
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "canceled"):
                    break
                time.sleep(0.02)
            jobs.append(job)
    elapsed = time.perf_counter() - started
    bad = [j for j in jobs if j["status"] != "succeeded"]
    if bad:
        raise SystemExit(f"{len(bad)} jobs did not succeed: {bad[0]}")
    return elapsed, jobs


def bench_batching(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        url, _, procs = start_stack(Path(tmp), [args.bundle], worker=True, VGS_BATCH_SIZE="8",
                                    VGS_BATCH_WAIT_S=str(args.wait), VGS_BATCHING=args.batching)
        try:
            body = {"mode": "class", "class_label": 3}
            run_jobs(url, 1, body)  # warm-up
            singles, eights, overheads, batch_jobs, stages = [], [], [], [], []
            for _ in range(args.repeats):
                t1, (job,) = run_jobs(url, 1, body)
                singles.append(t1)
                overheads.append((t1 - job["metrics"]["sampling_seconds"]) / t1)
                t8, jobs = run_jobs(url, 8, body)
                eights.append(t8)
                batch_jobs.append(max(j["metrics"].get("batch_jobs") or 0 for j in jobs))
                # Where the time of a batch of 8 goes: sampling and decode are shared, encode and store per job.
                stages.append({"sampling_s": jobs[0]["metrics"]["sampling_seconds"],
                               "decode_s": round(sum(j["metrics"]["decode_seconds"] for j in jobs), 3),
                               "encode_s": round(sum(j["metrics"]["encode_seconds"] for j in jobs), 3),
                               "store_s": round(sum(j["metrics"]["store_seconds"] for j in jobs), 3)})
            one, eight = statistics.median(singles), statistics.median(eights)
            return {"bench": "batching", "bundle": args.bundle, "one_job_s": round(one, 3),
                    "eight_jobs_s": round(eight, 3), "ratio_8_vs_1": round(eight / one, 3),
                    "largest_batch_jobs": batch_jobs, "eight_jobs_stages": stages,
                    "overhead_fraction_of_one_job": round(statistics.median(overheads), 3),
                    "batch_wait_s": args.wait, "repeats": args.repeats}
        finally:
            stop(procs)


LOAD_BODY = {"mode": "class"}  # the shipped model's default guidance (class jobs take two slots a sample)


def _job_seconds(job: dict) -> float:
    """Submitted -> finished, from the job's own timestamps."""
    def epoch(stamp: str) -> float:
        from datetime import datetime
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return epoch(job["finished_at"]) - epoch(job["created_at"])


class SlotSampler:
    """Samples the worker's vgs_worker_slots_in_use every 250 ms while running (more often, rendering the
    metrics would take the worker's time from its steps: Prometheus itself scrapes every 15 s)."""

    def __init__(self, metrics_url: str):
        import threading

        self.url, self.values, self._stop = metrics_url, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self._stop.wait(0.25):
                try:
                    text = client.get(self.url).text
                except httpx.HTTPError:
                    continue
                self.values.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                       if line.startswith("vgs_worker_slots_in_use{")))

    def __enter__(self) -> SlotSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return round(statistics.fmean(self.values), 2) if self.values else 0.0


def poisson_level(url: str, metrics_url: str, rate: float, count: int, seed: int) -> dict:
    """Submit `count` jobs at Poisson times of `rate` per second (open loop), wait for all; the figures."""
    import random
    import threading

    rng = random.Random(seed)
    times, t = [], 0.0
    for _ in range(count):
        t += rng.expovariate(rate)
        times.append(t)
    ids: list[str] = [""] * count
    started = time.perf_counter()

    def submit(i: int) -> None:
        time.sleep(max(0.0, started + times[i] - time.perf_counter()))
        ids[i] = submitter.post("/v1/generate", json={**LOAD_BODY, "class_label": i % 10, "seed": i}).json()["id"]

    with SlotSampler(metrics_url) as slots, \
            httpx.Client(base_url=url, timeout=30, limits=SUBMIT_LIMITS) as submitter:
        threads = [threading.Thread(target=submit, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        jobs = []
        with httpx.Client(base_url=url, timeout=30) as client:
            for job_id in ids:
                while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in (
                        "succeeded", "failed", "canceled"):
                    time.sleep(0.05)
                jobs.append(job)
    bad = [j for j in jobs if j["status"] != "succeeded"]
    if bad:
        raise SystemExit(f"{len(bad)} jobs did not succeed: {bad[0]}")
    latencies = [_job_seconds(j) for j in jobs]
    span = max(time.perf_counter() - started, 1e-9)
    slowest = sorted(range(count), key=latencies.__getitem__)[-max(1, count // 20):]
    return {"offered_jobs_per_s": round(rate, 3), "jobs": count,
            "p50_s": round(percentile(latencies, 0.5), 3), "p95_s": round(percentile(latencies, 0.95), 3),
            "p99_s": round(percentile(latencies, 0.99), 3), "throughput_jobs_per_s": round(count / span, 3),
            "mean_slots_in_use": slots.mean, "stages_mean_s": stage_means(jobs, latencies, range(count)),
            "stages_slowest_5pct_s": stage_means(jobs, latencies, slowest)}


STAGES = ("queue_seconds", "slot_wait_seconds", "sampling_seconds", "decode_seconds", "encode_seconds",
          "store_seconds")


def stage_means(jobs: list[dict], latencies: list[float], which) -> dict:
    """Where the chosen jobs' time went, on average: each stage the worker records, and what is left of the
    latency besides them (waits between stages: for the finisher, an encoding process, the poll)."""
    which = list(which)
    means = {stage.removesuffix("_seconds"): round(statistics.fmean(
        jobs[i]["metrics"].get(stage) or 0.0 for i in which), 3) for stage in STAGES}
    means["other"] = round(statistics.fmean(latencies[i] for i in which) - sum(means.values()), 3)
    return means


def bench_load(args: argparse.Namespace) -> dict:
    modes, capacity = {}, {}
    if "static" not in args.modes:
        if not args.reference_capacity:
            raise SystemExit("without the static stack, --reference-capacity must give its capacity (jobs/s)")
        capacity["static"] = args.reference_capacity
    slots = {"VGS_ENGINE_SLOTS": str(args.engine_slots)} if args.engine_slots else {}
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as tmp:
            metrics_port = free_port()
            url, _, procs = start_stack(Path(tmp), [args.bundle], worker=True, VGS_BATCHING=mode,
                                        VGS_RATE_LIMIT_PER_MINUTE="0", VGS_MAX_CONCURRENT_JOBS="0",
                                        VGS_MAX_QUEUE_DEPTH="100000", VGS_METRICS_PORT=str(metrics_port),
                                        VGS_PRECISION=args.precision, **slots)
            try:
                run_jobs(url, 8, {**LOAD_BODY, "class_label": 1})  # warm-up
                alone = [_job_seconds(run_jobs(url, 1, {**LOAD_BODY, "class_label": 3})[1][0]) for _ in range(5)]
                # 48 jobs at once, the median of --capacity-runs (one such run varied by ~10%)
                capacity[mode] = statistics.median(48 / run_jobs(url, 48, {**LOAD_BODY, "class_label": 5})[0]
                                                   for _ in range(args.capacity_runs))
                modes[mode] = {"alone_job_s": round(statistics.median(alone), 3),
                               "capacity_jobs_per_s": round(capacity[mode], 3), "levels": [],
                               "_url": url, "_metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
                reference = capacity["static"]
                for load in args.loads:  # the arrivals' seed is the load's: runs of other --loads compare
                    level = poisson_level(url, modes[mode]["_metrics"], load * reference, args.jobs,
                                          seed=round(load * 1000))
                    modes[mode]["levels"].append({"load": load, **level})
                    print(json.dumps({"mode": mode, "load": load, **level}), file=sys.stderr, flush=True)
            finally:
                stop(procs)
            del modes[mode]["_url"], modes[mode]["_metrics"]
    result = {"bench": "load", "bundle": args.bundle, "body": LOAD_BODY, "reference_capacity": "static",
              "static_capacity_jobs_per_s": round(capacity["static"], 3), "precision": args.precision,
              "engine_slots": args.engine_slots or "default", "modes": modes, "cpu_count": os.cpu_count(),
              "load_average_at_end": os.getloadavg()}
    if len(modes) == 2:
        result["ratios"] = [
            {"load": s["load"], "p99_continuous_over_static": round(c["p99_s"] / s["p99_s"], 3),
             "throughput_continuous_over_static": round(c["throughput_jobs_per_s"] / s["throughput_jobs_per_s"], 3)}
            for s, c in zip(modes["static"]["levels"], modes["continuous"]["levels"])]
        result["alone_continuous_over_static"] = round(
            modes["continuous"]["alone_job_s"] / modes["static"]["alone_job_s"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    g = sub.add_parser("gateway")
    g.add_argument("--requests", type=int, default=1500)
    g.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    b = sub.add_parser("batching")
    b.add_argument("--bundle", default=str(REPO / "weights" / "moving-digits"))
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--wait", type=float, default=0.2, help="VGS_BATCH_WAIT_S of the worker")
    b.add_argument("--batching", choices=["static", "continuous"], default="static")
    ld = sub.add_parser("load")
    ld.add_argument("--bundle", default=str(REPO / "weights" / "moving-digits"))
    ld.add_argument("--jobs", type=int, default=200, help="jobs per load level (at least 200 for the report)")
    ld.add_argument("--precision", default="float32",
                    help="VGS_PRECISION of both workers (fixed: auto may time differently in the two stacks)")
    ld.add_argument("--loads", type=float, nargs="+", default=[0.3, 0.6, 0.9],
                    help="offered load as fractions of the static capacity")
    ld.add_argument("--modes", nargs="+", choices=["static", "continuous"], default=["static", "continuous"])
    ld.add_argument("--reference-capacity", type=float,
                    help="the static capacity (jobs/s) the loads are fractions of, when static does not run")
    ld.add_argument("--engine-slots", type=int, help="VGS_ENGINE_SLOTS of the workers (default: theirs)")
    ld.add_argument("--capacity-runs", type=int, default=3,
                    help="runs of 48 jobs at once whose median is the capacity")
    args = parser.parse_args()
    result = {"gateway": bench_gateway, "batching": bench_batching, "load": bench_load}[args.which](args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
