"""The HTTP gateway: validates requests, queues jobs on Redis, reports their state, serves local outputs.

It never imports torch: models are known from what workers publish in Redis (jobs.catalog).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from jobs.settings import ServiceSettings, get_settings

from .errors import add_error_handlers
from .gateway import Gateway, api_version
from .metrics import RequestMetricsMiddleware
from .middleware import BodyLimitMiddleware, SecurityHeadersMiddleware
from .routes import files, health, jobs, models
from .routes.health import STATIC
from .schemas import ErrorResponse

ERRORS = {status: {"model": ErrorResponse} for status in (401, 404, 409, 413, 422, 429, 503)}
DOCS_ASSETS = "/docs/assets"  # under /docs: the API's strict Content-Security-Policy does not apply there


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        gateway.start_background(stop)
        yield
        stop.set()

    # /docs and /redoc with Swagger UI's and ReDoc's files served from the fastapi-offline package, not a CDN:
    # the docs work on a host without internet access.
    app = FastAPIOffline(title="videogpt-serve", version=api_version(), responses=ERRORS, lifespan=lifespan,
                         static_url=DOCS_ASSETS, favicon_url="/favicon.ico",
                         description="Generate short videos with VideoGPT models: POST /v1/generate, poll the job "
                                     "or stream its events, download the mp4 by URL.")
    app.state.gateway = gateway
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
                           expose_headers=["Location", "Retry-After"])
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(RequestMetricsMiddleware)
    add_error_handlers(app)
    for router in (jobs.router, models.router, files.router, health.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
