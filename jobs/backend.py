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
                   Catalog(client, settings.namespace), open_storage(settings))

    @property
    def queue(self) -> JobQueue:
        return self.jobs.queue

    def view(self, record: dict[str, Any]) -> dict[str, Any]:
        """A job as the API and webhooks show it, with fresh output URLs."""
        return job_view(record, self.storage, self.settings.url_ttl_s)
