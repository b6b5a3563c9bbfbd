"""Webhooks: a job's `start` and `completed` events POSTed to the URL its request gave, signed, retried.

Events are queued atomically with the status change that causes them (JobStore's transition script adds
them to the `{ns}:webhooks` outbox). Deliverer threads in workers and gateways take due deliveries with a
lease (a crash mid-delivery means the delivery is retried, not lost: at least once), POST the job as JSON,
and on failure reschedule with exponential backoff until max attempts.

Signature: headers `X-VGS-Timestamp` (unix seconds) and `X-VGS-Signature: v1=<hex>` where
hex = HMAC-SHA256(VGS_WEBHOOK_SECRET, f"{timestamp}.{body}"). Receivers recompute it over the raw body,
compare in constant time, and refuse timestamps older than a few minutes (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from .background import run_every
from .connection import as_text
from .settings import ServiceSettings
from .store import JobStore

log = logging.getLogger(__name__)
EVENTS = ("start", "completed")
LEASE_S = 30.0
TIMEOUT_S = 10.0

# Take the earliest due delivery (score <= now) and hold it for a lease; returns the member or nil.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #due == 0 then return nil end
redis.call('ZADD', KEYS[1], ARGV[2], due[1])
return due[1]
"""


class WebhookRefused(ValueError):
    pass


def check_webhook_url(url: str, allow: list[str], resolve: Callable[[str], list[str]] | None = None) -> None:
    """Refuse URLs that are not http(s) or that resolve to loopback, private, link-local or other
    non-public addresses (SSRF), unless the host or the address is allow-listed (a host name, an IP, or a
    network like 10.0.0.0/8)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("webhook must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise WebhookRefused("webhook must not carry credentials in the URL")
    host = parts.hostname
    if host in allow:
        return
    try:
        addresses = (resolve or _resolve)(host)
    except OSError:
        raise WebhookRefused(f"webhook host {host!r} does not resolve") from None
    networks = []
    for entry in allow:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if any(ip in net for net in networks):
            continue
        if not ip.is_global or ip.is_multicast:
            raise WebhookRefused(f"webhook host {host!r} resolves to {ip}, a loopback, private, link-local or "
                                 "otherwise non-public address; allow-list it with VGS_WEBHOOK_ALLOW to use it")


def _resolve(host: str) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify(secret: str, timestamp: str, signature: str, body: bytes, now: float | None = None,
           tolerance_s: float = 300) -> bool:
    """The receiver's check (the recipe in the README, as code)."""
    if not timestamp.isdigit() or abs((now or time.time()) - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


class Deliverer:
    """Takes due deliveries from the outbox and POSTs them; `view` turns a job record into the body."""

    def __init__(self, jobs: JobStore, settings: ServiceSettings, view: Callable[[dict], dict[str, Any]]):
        self.jobs, self.settings, self.view = jobs, settings, view
        self._claim = jobs.redis.register_script(_CLAIM)
        self.client = httpx.Client(timeout=TIMEOUT_S, follow_redirects=False)

    def deliver_due(self, limit: int = 20) -> int:
        """Deliver (or reschedule) up to `limit` due deliveries; returns how many were attempted."""
        done = 0
        while done < limit:
            now = time.time()
            member = self._claim(keys=[self.jobs.webhook_outbox], args=[now, now + LEASE_S])
            if member is None:
                return done
            self._deliver(as_text(member))
            done += 1
        return done

    def _deliver(self, member: str) -> None:
        job_id, event, attempt = member.split("|")
        outbox = self.jobs.webhook_outbox
        record = self.jobs.get(job_id)
        url = (record or {}).get("webhook")
        if not url:
            self.jobs.redis.zrem(outbox, member)
            return
        body = json.dumps({"event": event, "job": self.view(record)}).encode()
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", "User-Agent": "videogpt-serve-webhook",
                   "X-VGS-Event": event, "X-VGS-Delivery": f"{job_id}.{event}", "X-VGS-Timestamp": str(timestamp),
                   "X-VGS-Signature": sign(self.settings.webhook_secret, timestamp, body)}
        error = None
        try:
            check_webhook_url(url, self.settings.webhook_allow)  # again: DNS may have changed since
            answer = self.client.post(url, content=body, headers=headers)
            if answer.status_code >= 300:
                error = f"HTTP {answer.status_code}"
        except (httpx.HTTPError, WebhookRefused) as exc:
            error = f"{type(exc).__name__}: {exc}"
        pipe = self.jobs.redis.pipeline()
        pipe.zrem(outbox, member)
        if error is None:
            log.info("webhook %s of job %s delivered", event, job_id, extra={"job_id": job_id})
        elif int(attempt) + 1 < self.settings.webhook_max_attempts:
            delay = self.settings.webhook_backoff_s * 2 ** int(attempt)
            pipe.zadd(outbox, {f"{job_id}|{event}|{int(attempt) + 1}": time.time() + delay})
            log.warning("webhook %s of job %s failed (%s); retry in %.1f s", event, job_id, error, delay,
                        extra={"job_id": job_id})
        else:
            log.error("webhook %s of job %s failed %d times; giving up (%s)", event, job_id, int(attempt) + 1,
                      error, extra={"job_id": job_id})
        pipe.execute()


def start_deliverer(deliverer: Deliverer, stop: threading.Event, interval_s: float = 0.25) -> threading.Thread:
    return run_every(f"webhooks-{uuid.uuid4().hex[:4]}", interval_s, deliverer.deliver_due, stop)
