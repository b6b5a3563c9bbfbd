"""Jobs: submit, look up, cancel, and follow one as server-sent events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Header, Response
from fastapi.responses import StreamingResponse

from jobs.store import TERMINAL

from ..deps import GatewayDep, Who
from ..errors import ApiError
from ..gateway import Gateway
from ..metrics import EVENT_STREAMS, JOBS_REJECTED, JOBS_SUBMITTED
from ..schemas import GenerateRequest, Job

router = APIRouter(tags=["jobs"])
EVENT_POLL_S = 0.25
EVENT_KEEPALIVE_S = 15.0


@router.post("/v1/generate", status_code=202, response_model=Job)
def generate(req: GenerateRequest, response: Response, who: Who, gw: GatewayDep,
             idempotency_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    """Queue a generation job; 202 with the job and its Location."""
    try:
        record, created = gw.submit(req, idempotency_key, who)
    except ApiError as exc:
        JOBS_REJECTED.labels(exc.code).inc()
        raise
    except redis.exceptions.RedisError:
        JOBS_REJECTED.labels("unavailable").inc()
        raise
    if created:
        JOBS_SUBMITTED.labels(record["model"], record["request"]["mode"]).inc()
    response.headers["Location"] = f"/v1/jobs/{record['id']}"
    return gw.job_view(record)


@router.get("/v1/jobs/{job_id}", response_model=Job)
def get_job(job_id: str, who: Who, gw: GatewayDep) -> dict[str, Any]:
    """A job's status, progress, outputs (signed URLs), error and timings."""
    return gw.job_view(gw.get_job(job_id, who))


@router.post("/v1/jobs/{job_id}/cancel", response_model=Job)
def cancel_job(job_id: str, who: Who, gw: GatewayDep) -> dict[str, Any]:
    """Cancel: a queued job never runs, a running one stops within about a second."""
    gw.get_job(job_id, who)
    gw.jobs.request_cancel(job_id)
    return gw.job_view(gw.get_job(job_id, who))


@router.get("/v1/jobs/{job_id}/events",
            responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}})
async def job_events(job_id: str, who: Who, gw: GatewayDep) -> StreamingResponse:
    """Server-sent events: `status` events (the job) on every change, until a terminal state."""
    await asyncio.to_thread(gw.get_job, job_id, who)

    async def stream() -> AsyncIterator[str]:
        EVENT_STREAMS.inc()
        try:
            async for chunk in _status_events(gw, job_id):
                yield chunk
        finally:
            EVENT_STREAMS.dec()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _status_events(gw: Gateway, job_id: str) -> AsyncIterator[str]:
    """A `status` event whenever the job's status or progress changes, keep-alives between, until terminal."""
    last, last_sent = None, time.monotonic()
    while True:
        record = await asyncio.to_thread(gw.jobs.get, job_id)
        if record is None:
            yield "event: error\ndata: {\"code\": \"not_found\"}\n\n"
            return
        view = gw.job_view(record)
        state = (view["status"], view["progress"])
        if state != last:
            last, last_sent = state, time.monotonic()
            yield f"event: status\ndata: {json.dumps(view)}\n\n"
            if view["status"] in TERMINAL:
                return
        elif time.monotonic() - last_sent > EVENT_KEEPALIVE_S:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(EVENT_POLL_S)
