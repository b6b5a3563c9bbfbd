"""Redis connections and replies: one way to open a client and one way to read its replies as text."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis


def open_redis(url: str, socket_timeout: float | None = None) -> redis.Redis:
    """A client of the shared Redis: short connect timeout, connections checked when idle a while."""
    return redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=5,
                                health_check_interval=15)


def as_text(value: bytes | str | None) -> str | None:
    """A Redis reply (bytes unless the client decodes) as str; None stays None."""
    return value.decode() if isinstance(value, bytes) else value


def shown_url(url: str) -> str:
    """A Redis URL fit for a log line: its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***" if parts.username else ":***"
    host = parts.hostname or ""
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
