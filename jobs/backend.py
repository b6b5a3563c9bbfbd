"""What a gateway or a worker opens at start: the shared Redis with the job store, queue and catalog on it,
and the output storage, all from one ServiceSettings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from .catalog import Catalog
from .connection import open_redis
from .queue import JobQueue
from .settings import ServiceSettings
from .storage import LocalStorage, S3Storage, open_storage
from .store import JobStore
from .views import job_view


@dataclass
class Backend:
    settings: ServiceSettings
    redis: redis.Redis
    jobs: JobStore
    catalog: Catalog
    storage: LocalStorage | S3Storage

    @classmethod
    def open(cls, settings: ServiceSettings, client: redis.Redis | None = None,
             socket_timeout: float | None = None) -> Backend:
        client = client or open_redis(settings.redis_url, socket_timeout=socket_timeout)
        return cls(settings, client, JobStore(client, settings.namespace, settings.job_ttl_s),
                   Catalog(client, settings.namespace, settings.model_ttl_s), open_storage(settings))

    @property
    def queue(self) -> JobQueue:
        return self.jobs.queue

    def view(self, record: dict[str, Any]) -> dict[str, Any]:
        """A job as the API and webhooks show it, with fresh output URLs and what the client should know."""
        view = job_view(record, self.storage, self.settings.url_ttl_s)
        view["warnings"] = self.warnings(record)
        return view

    def warnings(self, record: dict[str, Any]) -> list[str]:
        """Why a job may not make progress: a queued job whose model no live worker serves."""
        model = record.get("model")
        if record.get("status") != "queued" or not model or self.catalog.served(model):
            return []
        return [f"no worker serving model {model!r} is up: the job waits in the queue until one starts; if none "
                f"serves the model for {self.settings.model_ttl_s:g} s (VGS_MODEL_TTL_S), the model is dropped "
                "and its queued jobs fail (code no_worker)"]
