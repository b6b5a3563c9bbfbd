"""Which models exist and which workers serve them, as the workers announce it in Redis.

A worker publishes each model it loaded (`{ns}:model:{name}`, kept after the worker goes: the gateway
still knows the model and queues for it) and beats a heartbeat key with a TTL listing its models. The
gateway needs no weights and no torch: what it validates against comes from here.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from .connection import as_text


class Catalog:
    def __init__(self, client: redis.Redis, namespace: str):
        self.redis, self.namespace = client, namespace

    def _model_key(self, name: str) -> str:
        return f"{self.namespace}:model:{name}"

    def _worker_key(self, worker_id: str) -> str:
        return f"{self.namespace}:worker:{worker_id}"

    def publish_model(self, info: dict[str, Any]) -> None:
        pipe = self.redis.pipeline()
        pipe.set(self._model_key(info["name"]), json.dumps(info))
        pipe.sadd(f"{self.namespace}:models", info["name"])
        pipe.execute()

    def heartbeat(self, worker_id: str, models: list[str], ttl_s: float, state: str = "idle") -> None:
        beat = {"id": worker_id, "models": models, "state": state, "at": time.time()}
        self.redis.set(self._worker_key(worker_id), json.dumps(beat), px=int(ttl_s * 1000))

    def retire(self, worker_id: str) -> None:
        self.redis.delete(self._worker_key(worker_id))

    def workers(self) -> list[dict[str, Any]]:
        keys = list(self.redis.scan_iter(match=self._worker_key("*"), count=500))
        values = self.redis.mget(keys) if keys else []
        return [json.loads(v) for v in values if v]

    def models(self) -> dict[str, dict[str, Any]]:
        """Every published model by name, with `workers_up`: how many live workers serve it."""
        names = sorted(as_text(n) for n in self.redis.smembers(f"{self.namespace}:models"))
        values = self.redis.mget([self._model_key(n) for n in names]) if names else []
        serving: dict[str, int] = {}
        for worker in self.workers():
            for name in worker["models"]:
                serving[name] = serving.get(name, 0) + 1
        found = {}
        for name, value in zip(names, values):
            if value:
                found[name] = {**json.loads(value), "workers_up": serving.get(name, 0)}
        return found

    def model(self, name: str) -> dict[str, Any] | None:
        value = self.redis.get(self._model_key(name))
        return json.loads(value) if value else None
