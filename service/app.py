"""The HTTP gateway: validates requests, queues jobs on Redis, reports their state, serves local outputs.

It never imports torch: models are known from what workers publish in Redis (service.catalog).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .auth import KeyRing, Principal, can_see
from .catalog import Catalog
from .jobs import TERMINAL, JobStore, new_job_id
from .limits import Limits
from .metrics import EVENT_STREAMS, JOBS_REJECTED, JOBS_SUBMITTED, RequestMetricsMiddleware
from .metrics import render as render_metrics
from .middleware import BodyLimitMiddleware, SecurityHeadersMiddleware
from .reaper import Reaper
from .requests import ApiError, body_fingerprint, validate_request
from .schemas import ErrorResponse, GenerateRequest, Job, ModelInfo, ModelList
from .settings import ServiceSettings, get_settings
from .storage import LocalStorage, open_storage
from .views import job_view
from .webhooks import Deliverer, start_deliverer

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
# The page runs only its own script and style; videos may come from S3 (presigned URLs elsewhere).
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "media-src 'self' blob: https: http:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")
EVENT_POLL_S = 0.25
EVENT_KEEPALIVE_S = 15.0
ERRORS = {status: {"model": ErrorResponse} for status in (401, 404, 409, 413, 422, 429, 503)}


def _version() -> str:
    try:
        return version("videogpt-serve")
    except PackageNotFoundError:
        return "0"


class Gateway:
    """The gateway's connections and the operations its routes share."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=2,
                                          health_check_interval=15)
        self.jobs = JobStore(self.redis, settings.namespace, settings.job_ttl_s)
        self.catalog = Catalog(self.redis, settings.namespace)
        self.storage = open_storage(settings)
        self.keys = KeyRing(settings)
        self.limits = Limits(self.redis, self.jobs, settings)

    def job_view(self, record: dict[str, Any]) -> dict[str, Any]:
        return job_view(record, self.storage, self.settings.url_ttl_s)

    def get_job(self, job_id: str, who: Principal) -> dict[str, Any]:
        record = self.jobs.get(job_id) if len(job_id) <= 64 else None
        if record is None or not can_see(who, record):  # another key's job is as unknown as a missing one
            raise ApiError(404, "not_found", f"no job {job_id!r} (unknown, or expired)")
        return record

    def submit(self, req: GenerateRequest, idempotency_key: str | None,
               who: Principal) -> tuple[dict[str, Any], bool]:
        """(job record, created): a new queued job, or the one an earlier request with this key made."""
        fingerprint = body_fingerprint(req)
        job_id = new_job_id()
        idem_key = None
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 200:
                raise ApiError(422, "invalid_request", "Idempotency-Key must be 1-200 characters",
                               "Idempotency-Key")
            idem_key = f"{self.settings.namespace}:idem:{who.name}:{idempotency_key}"
            claim = json.dumps({"job": job_id, "fingerprint": fingerprint})
            if not self.redis.set(idem_key, claim, nx=True, ex=self.settings.job_ttl_s):
                return self._replay(idem_key, fingerprint), False
        try:
            self.limits.check_rate(who.name)
            self.limits.check_concurrency(who.name)
            self.limits.check_queue_depth()
            record, frames = validate_request(req, self.catalog.models(), self.settings)
            hooks = {"webhook": record["webhook"], "webhook_events": ",".join(record["webhook_events"])} \
                if record.get("webhook") else {}
            created = self.jobs.create(job_id, record["model"], record, frames, owner=who.name, **hooks)
            self.limits.admitted(who.name, job_id)
        except BaseException:
            if idem_key is not None:
                self.redis.delete(idem_key)  # a request that made no job may be retried with its key
            raise
        return created, True

    def _replay(self, idem_key: str, fingerprint: str) -> dict[str, Any]:
        deadline = time.monotonic() + 2.0
        while True:
            claim = self.redis.get(idem_key)
            if claim is None:
                raise ApiError(409, "conflict", "a request with this Idempotency-Key failed just now; retry it")
            claim = json.loads(claim)
            if claim["fingerprint"] != fingerprint:
                raise ApiError(409, "conflict", "this Idempotency-Key was used with a different request body")
            record = self.jobs.get(claim["job"])
            if record is not None:
                return record
            if time.monotonic() > deadline:  # the first request is still being validated
                raise ApiError(409, "conflict", "the request with this Idempotency-Key is still being accepted")
            time.sleep(0.05)


BEARER = HTTPBearer(auto_error=False, description="an API key (when the server requires them)")


def principal(request: Request,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> Principal:
    """Who is asking: the owner of the API key sent (or, with auth off, the anonymous admin)."""
    keys = request.app.state.gateway.keys
    return keys.authenticate(f"Bearer {credentials.credentials}" if credentials else None)


Who = Annotated[Principal, Depends(principal)]


def _error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _validation_field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _reaper_thread(gw: Gateway, stop: threading.Event) -> threading.Thread:
    """The gateway reaps too, so abandoned jobs are found even when every worker is gone."""
    reaper = Reaper(gw.jobs, gw.settings, gw.storage)

    def loop() -> None:
        while not stop.wait(gw.settings.reap_interval_s):
            try:
                reaper.maybe_reap()
            except redis.exceptions.RedisError as exc:
                log.warning("reaper: %s", exc)

    thread = threading.Thread(target=loop, name="reaper", daemon=True)
    thread.start()
    return thread


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    gw = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = threading.Event()
        _reaper_thread(gw, stop)
        start_deliverer(Deliverer(gw.jobs, settings, gw.job_view), stop)
        yield
        stop.set()

    app = FastAPI(title="videogpt-serve", version=_version(), responses=ERRORS, lifespan=lifespan,
                  description="Generate short videos with VideoGPT models: POST /v1/generate, poll the job or "
                              "stream its events, download the mp4 by URL.")
    app.state.gateway = gw
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
                           expose_headers=["Location", "Retry-After"])
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(RequestMetricsMiddleware)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = _validation_field(tuple(first.get("loc", ())))
        message = f"{field}: {first.get('msg', 'invalid')}"
        return _error_response(ApiError(422, "invalid_request", message, field))

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(ApiError(503, "unavailable", "the job store (Redis) is unreachable; retry shortly",
                                        headers={"Retry-After": "5"}))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return _error_response(ApiError(exc.status_code, code, str(exc.detail)))

    @app.post("/v1/generate", status_code=202, response_model=Job, tags=["jobs"])
    def generate(req: GenerateRequest, response: Response, who: Who,
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

    @app.get("/v1/jobs/{job_id}", response_model=Job, tags=["jobs"])
    def get_job(job_id: str, who: Who) -> dict[str, Any]:
        """A job's status, progress, outputs (signed URLs), error and timings."""
        return gw.job_view(gw.get_job(job_id, who))

    @app.post("/v1/jobs/{job_id}/cancel", response_model=Job, tags=["jobs"])
    def cancel_job(job_id: str, who: Who) -> dict[str, Any]:
        """Cancel: a queued job never runs, a running one stops within about a second."""
        gw.get_job(job_id, who)
        gw.jobs.request_cancel(job_id)
        return gw.job_view(gw.get_job(job_id, who))

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"],
             responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}})
    async def job_events(job_id: str, who: Who) -> StreamingResponse:
        """Server-sent events: `status` events (the job) on every change, until a terminal state."""
        await asyncio.to_thread(gw.get_job, job_id, who)

        async def stream():
            EVENT_STREAMS.inc()
            try:
                async for chunk in events():
                    yield chunk
            finally:
                EVENT_STREAMS.dec()

        async def events():
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

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/models", response_model=ModelList, tags=["models"])
    def list_models(who: Who) -> dict[str, Any]:
        """Every model a worker has announced, and whether a worker serving it is up now."""
        models = []
        for info in gw.catalog.models().values():
            # Fields a worker of an older version did not announce keep their defaults.
            shown = {k: info[k] for k in ModelInfo.model_fields if k in info and k not in ("worker_up", "workers")}
            models.append({**shown, "worker_up": info["workers_up"] > 0, "workers": info["workers_up"]})
        return {"models": models, "default_model": settings.default_model}

    @app.get("/v1/files/{key:path}", tags=["files"], response_class=FileResponse,
             responses={200: {"content": {"video/mp4": {}}}, 403: {"model": ErrorResponse}})
    def get_file(key: str, expires: Annotated[int, Query()], sig: Annotated[str, Query(max_length=128)]):
        """An output file, for a signed URL that has not expired (local storage)."""
        storage = gw.storage
        if not isinstance(storage, LocalStorage):
            raise ApiError(404, "not_found", "outputs are not served by the gateway with this storage")
        try:
            path = storage.path(key)
        except ValueError as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        refused = storage.verify(key, expires, sig)
        if refused:
            raise ApiError(403, "forbidden", refused)
        if not path.is_file():
            raise ApiError(404, "not_found", "this output no longer exists (expired)")
        return FileResponse(path, media_type="video/mp4")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus metrics of every gateway process, and queue depths read from Redis."""
        body, content_type = render_metrics(gw)
        return Response(body, media_type=content_type)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorResponse}})
    def readyz() -> dict[str, Any]:
        """Redis answers and at least one worker is up."""
        gw.redis.ping()
        workers = gw.catalog.workers()
        if not workers:
            raise ApiError(503, "unavailable", "no worker is up", headers={"Retry-After": "5"})
        return {"status": "ready", "workers": len(workers)}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", tags=["health"], responses={200: {"content": {"text/html": {}, "application/json": {}}}})
    def discovery(request: Request) -> Any:
        """The web page for browsers; for API clients, what this server is and where to go next."""
        if "text/html" in request.headers.get("accept", ""):
            return FileResponse(STATIC / "index.html", media_type="text/html",
                                headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})
        return {"name": "videogpt-serve", "version": _version(), "docs": "/docs", "openapi": "/openapi.json",
                "endpoints": {"generate": "POST /v1/generate", "job": "GET /v1/jobs/{id}",
                              "events": "GET /v1/jobs/{id}/events", "cancel": "POST /v1/jobs/{id}/cancel",
                              "models": "GET /v1/models", "health": "GET /healthz", "ready": "GET /readyz"}}

    return app
