"""A worker's presence in Redis: its heartbeat (the models it serves, busy or idle), the leases of the jobs
it runs, the reaper of other workers' lost jobs, and webhook deliveries, on background threads."""

from __future__ import annotations

import os
import socket
import threading
import uuid

import redis

from jobs.backend import Backend
from jobs.background import run_every
from jobs.reaper import Reaper
from jobs.webhooks import Deliverer, start_deliverer

from . import metrics


class Presence:
    def __init__(self, backend: Backend, models: list[str]):
        self.backend, self.models = backend, models
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.state = "starting"
        self.running: set[str] = set()  # ids of the jobs this worker runs now (their leases are renewed)
        self._stop = threading.Event()

    def beat(self) -> None:
        metrics.beat()
        settings = self.backend.settings
        self.backend.catalog.heartbeat(self.worker_id, self.models, ttl_s=3 * settings.heartbeat_s, state=self.state)

    def _renew(self) -> None:
        self.beat()
        self.backend.jobs.extend_leases(list(self.running), self.backend.settings.lease_s)
        self.reaper.maybe_reap()

    def start(self) -> None:
        """Beat now, then every heartbeat_s seconds on a thread; deliver webhooks on another."""
        settings = self.backend.settings
        self.reaper = Reaper(self.backend.jobs, settings, self.backend.storage)
        self.beat()
        run_every("heartbeat", settings.heartbeat_s, self._renew, self._stop)
        start_deliverer(Deliverer(self.backend.jobs, settings, self.backend.view), self._stop)

    def stop(self) -> None:
        self._stop.set()
        try:
            self.backend.catalog.retire(self.worker_id)
        except redis.exceptions.RedisError:
            pass
