"""`videogpt-serve worker`: load the bundles, announce them, serve their queues until stopped."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.worker import WorkerStatus

from jobs.connection import shown_url
from jobs.settings import ServiceSettings

from . import metrics
from .runtime import WorkerRuntime, set_runtime

log = logging.getLogger(__name__)
RECONNECT_WAIT_S = 2.0


class ServingWorker(SimpleWorker):
    """RQ's in-process worker, remembering that a warm shutdown (SIGINT/SIGTERM) was asked for, and able to
    tell RQ that the job it runs is alive (a continuous batching loop runs as long as work keeps coming)."""

    stop_requested = False
    _running: tuple[Job, Any] | None = None
    runtime: WorkerRuntime | None = None

    def handle_warm_shutdown_request(self) -> None:
        self.stop_requested = True
        running = sorted(self.runtime.presence.running) if self.runtime else []
        held = f"finishing the {len(running)} jobs it runs first ({', '.join(running)})" if running else "no job runs"
        log.info("worker %s shutting down: %s; it takes no new jobs, and queued jobs wait for another worker or the "
                 "next start", self.name, held, extra={"job_ids": running})
        super().handle_warm_shutdown_request()

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        self._running = (job, execution)
        try:
            self.perform_job(job, queue, execution)
        finally:
            self._running = None
        self.set_state(WorkerStatus.IDLE)

    def keepalive(self) -> None:
        if self._running is not None:
            self.maintain_heartbeats(*self._running)


def run_worker(settings: ServiceSettings, burst: bool = False) -> None:
    """Serve jobs until SIGINT/SIGTERM (the jobs it holds finish first) or, with burst, until idle.

    RQ's loop gives up on some Redis errors; the worker then waits for Redis and starts a fresh loop,
    so a Redis restart does not take workers down with it.
    """
    runtime = WorkerRuntime(settings)
    runtime.load(list(settings.bundles))
    set_runtime(runtime)
    runtime.announce()
    metrics.serve(settings.metrics_port)
    log.info("worker %s joined Redis %s (namespace %s, %d workers up there), serving %s", runtime.worker_id,
             shown_url(settings.redis_url), settings.namespace, len(runtime.backend.catalog.workers()),
             ", ".join(runtime.models))
    try:
        for generation in range(1_000_000):
            name = runtime.worker_id if generation == 0 else f"{runtime.worker_id}.{generation}"
            worker = ServingWorker(runtime.queue_names(), connection=runtime.backend.redis, name=name)
            worker.runtime = runtime
            runtime.keepalive, runtime.stop_requested = worker.keepalive, lambda w=worker: w.stop_requested
            try:
                worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
            except redis.exceptions.RedisError as exc:
                log.warning("worker loop stopped on a Redis error: %s", exc)
            if burst or worker.stop_requested:
                return
            log.warning("the worker loop ended without a stop request; reconnecting to Redis")
            _wait_for_redis(runtime.backend.redis)
    finally:
        runtime.stop()  # what the engine finished is decoded and stored first
        set_runtime(None)
        left = sorted(runtime.presence.running)
        log.info("worker %s stopped%s", runtime.worker_id, f"; jobs {', '.join(left)} did not end: their leases "
                 "lapse and they are retried" if left else ": every job it took has ended")


def _wait_for_redis(client: redis.Redis) -> None:
    while True:
        try:
            client.ping()
            return
        except redis.exceptions.RedisError:
            time.sleep(RECONNECT_WAIT_S)
