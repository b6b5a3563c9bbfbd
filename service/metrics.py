"""Prometheus metrics of the gateway (multiprocess mode: several uvicorn processes write one view).

Counters and histograms live in PROMETHEUS_MULTIPROC_DIR, which `videogpt-serve gateway` sets up before
prometheus_client is imported. Queue depths and workers are read from Redis when /metrics is scraped.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter("vgs_http_requests_total", "HTTP requests by route, method and status",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram("vgs_http_request_duration_seconds", "HTTP request latency by route and method",
                         ["route", "method"], buckets=LATENCY_BUCKETS)
JOBS_SUBMITTED = Counter("vgs_jobs_submitted_total", "jobs accepted, by model and mode", ["model", "mode"])
JOBS_REJECTED = Counter("vgs_jobs_rejected_total", "generation requests refused, by reason", ["reason"])
EVENT_STREAMS = Gauge("vgs_event_streams_open", "open server-sent event streams", multiprocess_mode="livesum")


REDIS_GAUGES = ("vgs_queue_depth", "vgs_jobs_running", "vgs_workers_up")


class RedisStateCollector:
    """Per-model queue depth, jobs running and live workers, read from Redis at scrape time."""

    def __init__(self, gateway):
        self.gateway = gateway

    def collect(self):
        depth = GaugeMetricFamily("vgs_queue_depth", "jobs waiting in a model's queue", labels=["model"])
        running = GaugeMetricFamily("vgs_jobs_running", "jobs running now (all models)")
        workers = GaugeMetricFamily("vgs_workers_up", "workers with a live heartbeat, by model", labels=["model"])
        try:
            models = self.gateway.catalog.models()
            for name, info in models.items():
                depth.add_metric([name], self.gateway.jobs.queued_count(name))  # queued jobs only
                workers.add_metric([name], info["workers_up"])
            running.add_metric([], self.gateway.redis.zcard(self.gateway.jobs.running_index))
        except Exception:  # Redis away: the scrape still answers, without these series
            return
        yield depth
        yield running
        yield workers


def render(gateway) -> tuple[bytes, str]:
    """The /metrics page: every gateway process's series (multiprocess mode) and the Redis-derived ones."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:  # one process (the app built in-process, as some tests do)
        registry = CollectorRegistry()
        for collector in list(REGISTRY._collector_to_names):
            registry.register(collector)
    registry.register(RedisStateCollector(gateway))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class RequestMetricsMiddleware:
    """Counts and times every request by its route template (not the raw path: ids would explode labels)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def recording_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            HTTP_REQUESTS.labels(path, method, str(status[0])).inc()
            HTTP_LATENCY.labels(path, method).observe(time.perf_counter() - started)
