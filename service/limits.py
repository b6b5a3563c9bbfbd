"""Admission limits, kept in Redis so every gateway process shares them: per-key request rate, per-key
jobs in flight, and the global queue depth."""

from __future__ import annotations

import math
import time

import redis

from jobs.connection import as_text
from jobs.settings import ServiceSettings
from jobs.store import TERMINAL, JobStore

from .errors import ApiError


class Limits:
    def __init__(self, client: redis.Redis, jobs: JobStore, settings: ServiceSettings):
        self.redis, self.jobs, self.settings = client, jobs, settings
        self.ns = settings.namespace

    def active_key(self, owner: str) -> str:
        return f"{self.ns}:active:{owner}"

    def check_rate(self, owner: str, now: float | None = None) -> None:
        """At most rate_limit_per_minute submissions per key in each clock minute; 429 past it."""
        limit = self.settings.rate_limit_per_minute
        if not limit:
            return
        now = time.time() if now is None else now
        window = int(now // 60)
        key = f"{self.ns}:rate:{owner}:{window}"
        pipe = self.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, 61)
        count = pipe.execute()[0]
        if count > limit:
            retry = max(1, math.ceil((window + 1) * 60 - now))
            raise ApiError(429, "rate_limited", f"more than {limit} requests a minute for this key; retry in "
                                                f"{retry} s", headers={"Retry-After": str(retry)})

    def check_concurrency(self, owner: str) -> None:
        """At most max_concurrent_jobs queued or running jobs per key; 429 past it."""
        limit = self.settings.max_concurrent_jobs
        if not limit:
            return
        key = self.active_key(owner)
        members = [as_text(m) for m in self.redis.smembers(key)]
        if len(members) < limit:
            return
        records = self.jobs.get_many(members)
        finished = [m for m, r in zip(members, records) if r is None or r["status"] in TERMINAL]
        if finished:
            self.redis.srem(key, *finished)
        if len(members) - len(finished) >= limit:
            raise ApiError(429, "too_many_jobs", f"this key has {limit} jobs queued or running, the most allowed; "
                                                 "wait for one to finish", headers={"Retry-After": "5"})

    def check_queue_depth(self) -> None:
        """At most max_queue_depth queued jobs in all; 503 past it rather than queueing without bound."""
        depth = self.redis.zcard(self.jobs.queued_index)
        if depth >= self.settings.max_queue_depth:
            raise ApiError(503, "queue_full", f"{depth} jobs are waiting, the most this server queues; retry later",
                           headers={"Retry-After": "10"})

    def admitted(self, owner: str, job_id: str) -> None:
        if self.settings.max_concurrent_jobs:
            pipe = self.redis.pipeline()
            pipe.sadd(self.active_key(owner), job_id)
            pipe.expire(self.active_key(owner), self.settings.job_ttl_s)
            pipe.execute()
