"""The gateway's state: its connections (jobs backend, API keys, admission limits) and the operations its
routes share: look up a caller's job, accept a request as a job."""

from __future__ import annotations

import json
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from jobs.backend import Backend
from jobs.background import run_every
from jobs.reaper import Reaper
from jobs.settings import ServiceSettings
from jobs.store import new_job_id
from jobs.webhooks import Deliverer, start_deliverer

from .auth import KeyRing, Principal, can_see
from .errors import ApiError, clip
from .limits import Limits
from .requests import body_fingerprint, validate_request
from .schemas import GenerateRequest


def api_version() -> str:
    try:
        return version("videogpt-serve")
    except PackageNotFoundError:
        return "0"


class Gateway:
    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.backend = Backend.open(settings, socket_timeout=3)
        self.redis, self.jobs, self.catalog = self.backend.redis, self.backend.jobs, self.backend.catalog
        self.storage = self.backend.storage
        self.keys = KeyRing(settings)
        self.limits = Limits(self.redis, self.jobs, settings)

    def start_background(self, stop: threading.Event) -> None:
        """The gateway reaps too, so abandoned jobs are found even when every worker is gone; and it
        delivers webhooks."""
        reaper = Reaper(self.jobs, self.settings, self.storage)
        run_every("reaper", self.settings.reap_interval_s, reaper.maybe_reap, stop)
        start_deliverer(Deliverer(self.jobs, self.settings, self.job_view), stop)

    def job_view(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.backend.view(record)

    def get_job(self, job_id: str, who: Principal) -> dict[str, Any]:
        record = self.jobs.get(job_id) if len(job_id) <= 64 else None
        if record is None or not can_see(who, record):  # another key's job is as unknown as a missing one
            raise ApiError(404, "not_found", f"no job {clip(repr(job_id))} (unknown, or expired)")
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
            request, frames = validate_request(req, self.catalog.models(), self.settings)
            created = self.jobs.create(job_id, request, frames, owner=who.name)
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
