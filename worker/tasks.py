"""The function RQ runs for a queued job id (the gateway enqueues it by name, without importing it)."""

from __future__ import annotations

from rq import get_current_job

from .runtime import get_runtime


def run_job(job_id: str) -> None:
    """Run the batch this job leads (see WorkerRuntime.gather)."""
    runtime = get_runtime()
    current = get_current_job()
    if current is None:
        raise RuntimeError("run_job runs inside an RQ worker")
    runtime.run(job_id, runtime.backend.queue.model_of(current.origin))
