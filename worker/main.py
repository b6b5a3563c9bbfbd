"""`videogpt-serve worker`: load the bundles, announce them, serve their queues until stopped."""

from __future__ import annotations

import logging

from rq import SimpleWorker

from service.settings import ServiceSettings

from .runtime import WorkerRuntime, set_runtime

log = logging.getLogger(__name__)


def run_worker(settings: ServiceSettings, burst: bool = False) -> None:
    """Serve jobs until SIGINT/SIGTERM (RQ finishes the current batch first) or, with burst, until idle."""
    runtime = WorkerRuntime(settings)
    runtime.load(list(settings.bundles))
    set_runtime(runtime)
    runtime.announce()
    runtime.start_heartbeat()
    runtime.state = "idle"
    worker = SimpleWorker(runtime.queue_names(), connection=runtime.redis, name=runtime.worker_id)
    log.info("worker %s serving %s", runtime.worker_id, ", ".join(runtime.models))
    try:
        worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
    finally:
        runtime.stop()
        set_runtime(None)
