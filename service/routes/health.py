"""Health, metrics, and the root: the web page for browsers, a discovery document for API clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from ..deps import GatewayDep
from ..errors import ApiError
from ..gateway import api_version
from ..metrics import render as render_metrics
from ..schemas import ErrorResponse

router = APIRouter(tags=["health"])
STATIC = Path(__file__).resolve().parent.parent / "static"
# The page runs only its own script and style; videos may come from S3 (presigned URLs elsewhere).
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "media-src 'self' blob: https: http:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")


@router.get("/metrics", include_in_schema=False)
def metrics(gw: GatewayDep) -> Response:
    """Prometheus metrics of every gateway process, and queue depths read from Redis."""
    body, content_type = render_metrics(gw)
    return Response(body, media_type=content_type)


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> FileResponse:
    """The icon browsers ask for (the web page and the API docs)."""
    return FileResponse(STATIC / "favicon.png", media_type="image/png", headers={"Cache-Control": "max-age=86400"})


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
def readyz(gw: GatewayDep) -> dict[str, Any]:
    """Redis answers and at least one worker is up."""
    gw.redis.ping()
    workers = gw.catalog.workers()
    if not workers:
        raise ApiError(503, "unavailable", "no worker is up", headers={"Retry-After": "5"})
    return {"status": "ready", "workers": len(workers)}


@router.get("/", responses={200: {"content": {"text/html": {}, "application/json": {}}}})
def discovery(request: Request) -> Any:
    """The web page for browsers; for API clients, what this server is and where to go next."""
    if "text/html" in request.headers.get("accept", ""):
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})
    return {"name": "videogpt-serve", "version": api_version(), "docs": "/docs", "openapi": "/openapi.json",
            "endpoints": {"generate": "POST /v1/generate", "job": "GET /v1/jobs/{id}",
                          "events": "GET /v1/jobs/{id}/events", "cancel": "POST /v1/jobs/{id}/cancel",
                          "models": "GET /v1/models", "health": "GET /healthz", "ready": "GET /readyz"}}
