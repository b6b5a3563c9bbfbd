"""Which models exist and which workers serve them, as the workers announce it in Redis.

A worker publishes each model it loaded (`{ns}:model:{name}`) and beats a heartbeat key with a TTL listing
its models; each beat also marks its models served (`{ns}:serving:{name}`, same TTL) and renews the model
entries' lifetime. A model outlives its last worker by model_ttl_s (the gateway still knows it and queues
for it, say while a worker restarts); then its entry expires and the model is gone. The gateway needs no
weights and no torch: what it validates against comes from here.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from .connection import as_text


class Catalog:
    """model_ttl_s: how long a model stays known after its last worker's last beat (None: for ever)."""

    def __init__(self, client: redis.Redis, namespace: str, model_ttl_s: float | None = None):
        self.redis, self.namespace, self.model_ttl_s = client, namespace, model_ttl_s
        self._published: dict[str, dict[str, Any]] = {}  # what this process announced, to announce again

    def _model_key(self, name: str) -> str:
        return f"{self.namespace}:model:{name}"

    def _serving_key(self, name: str) -> str:
        return f"{self.namespace}:serving:{name}"

    def _worker_key(self, worker_id: str) -> str:
        return f"{self.namespace}:worker:{worker_id}"

    @property
    def _ttl_ms(self) -> int | None:
        return None if self.model_ttl_s is None else max(1, int(self.model_ttl_s * 1000))

    def publish_model(self, info: dict[str, Any]) -> None:
        self._published[info["name"]] = info
        pipe = self.redis.pipeline()
        pipe.set(self._model_key(info["name"]), json.dumps(info), px=self._ttl_ms)
        pipe.sadd(f"{self.namespace}:models", info["name"])
        pipe.execute()

    def heartbeat(self, worker_id: str, models: list[str], ttl_s: float, state: str = "idle") -> None:
        beat = {"id": worker_id, "models": models, "state": state, "at": time.time()}
        pipe = self.redis.pipeline()
        pipe.set(self._worker_key(worker_id), json.dumps(beat), px=int(ttl_s * 1000))
        for name in models:
            pipe.set(self._serving_key(name), worker_id, px=int(ttl_s * 1000))
            if self._ttl_ms is not None:
                pipe.pexpire(self._model_key(name), self._ttl_ms)
            else:
                pipe.exists(self._model_key(name))
        renewed = pipe.execute()[2::2]  # after the beat, a (serving, renewal) pair of replies per model
        for name, found in zip(models, renewed):
            if not found and name in self._published:  # its entry expired (Redis was away long) or was lost
                self.publish_model(self._published[name])

    def retire(self, worker_id: str) -> None:
        """A worker leaves: its heartbeat goes, and its models are no longer served unless another serves them."""
        beat = self.redis.get(self._worker_key(worker_id))
        self.redis.delete(self._worker_key(worker_id))
        models = json.loads(beat)["models"] if beat else []
        still = {name for worker in self.workers() for name in worker["models"]}
        gone = [self._serving_key(name) for name in models if name not in still]
        if gone:
            self.redis.delete(*gone)

    def served(self, name: str) -> bool:
        """Whether a live worker serves model `name` (one key read: cheap enough for every job view)."""
        return bool(self.redis.exists(self._serving_key(name)))

    def names(self) -> list[str]:
        """Every model name announced, including those whose entry has expired since (see forget_expired)."""
        return sorted(as_text(n) for n in self.redis.smembers(f"{self.namespace}:models"))

    def forget_expired(self) -> list[str]:
        """Drop the names of expired models from the list of names, and give entries written before models
        expired a lifetime; returns the names dropped."""
        names = self.names()
        if not names:
            return []
        pipe = self.redis.pipeline()
        for name in names:
            pipe.pttl(self._model_key(name))
        live = {name for worker in self.workers() for name in worker["models"]}
        gone = []
        for name, ttl in zip(names, pipe.execute()):
            if ttl == -2:
                gone.append(name)
            elif ttl == -1 and self._ttl_ms is not None and name not in live:
                self.redis.pexpire(self._model_key(name), self._ttl_ms)
        if gone:
            self.redis.srem(f"{self.namespace}:models", *gone)
        return gone

    def workers(self) -> list[dict[str, Any]]:
        keys = list(self.redis.scan_iter(match=self._worker_key("*"), count=500))
        values = self.redis.mget(keys) if keys else []
        return [json.loads(v) for v in values if v]

    def models(self) -> dict[str, dict[str, Any]]:
        """Every published model by name, with `workers_up`: how many live workers serve it."""
        names = self.names()
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
