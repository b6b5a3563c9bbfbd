"""Background loops of gateways and workers (heartbeat, reaper, webhook deliveries): every so often, until
stopped; a Redis error is logged and the loop goes on (Redis comes back; the next round retries)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

log = logging.getLogger(__name__)


def run_every(name: str, interval_s: float, work: Callable[[], object], stop: threading.Event) -> threading.Thread:
    """A daemon thread calling work() every interval_s seconds until stop is set."""
    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                work()
            except redis.exceptions.RedisError as exc:
                log.warning("%s: %s", name, exc)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread
