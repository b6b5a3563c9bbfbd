"""Webhooks: signed, retried with backoff, refused towards private addresses unless allow-listed."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from service_stack import serving, write_bundle
from test_service_api import submit, wait

from jobs.webhooks import WebhookRefused, check_webhook_url, verify

SECRET = "webhook-test-secret"


class Receiver:
    """An HTTP server on 127.0.0.1 that records POSTs and fails the first `fail_first` of each event."""

    def __init__(self, fail_first: int = 1):
        self.received: list[dict] = []
        self.failed: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event = self.headers["X-VGS-Event"]
                if receiver.failed.get(event, 0) < fail_first:
                    receiver.failed[event] = receiver.failed.get(event, 0) + 1
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.received.append({"headers": dict(self.headers), "body": body, "at": time.time()})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hooks")
    with serving(tmp, [write_bundle(tmp / "bundles", "tiny")], VGS_WEBHOOK_SECRET=SECRET,
                 VGS_WEBHOOK_ALLOW='["127.0.0.1"]', VGS_WEBHOOK_BACKOFF_S="0.3") as s:
        yield s


def test_events_are_signed_and_retried_until_delivered(stack):
    receiver = Receiver(fail_first=1)
    try:
        with httpx.Client(base_url=stack.url, timeout=30) as api:
            job = submit(api, mode="class", class_label=2, webhook=receiver.url,
                         webhook_events=["start", "completed"]).json()
            assert wait(api, job["id"])["status"] == "succeeded"
            deadline = time.monotonic() + 20
            while len(receiver.received) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
        assert receiver.failed == {"start": 1, "completed": 1}, "each event failed once, then was retried"
        events = {}
        for hit in receiver.received:
            headers = {k.lower(): v for k, v in hit["headers"].items()}
            assert verify(SECRET, headers["x-vgs-timestamp"], headers["x-vgs-signature"], hit["body"])
            assert not verify("another-secret", headers["x-vgs-timestamp"], headers["x-vgs-signature"], hit["body"])
            assert not verify(SECRET, headers["x-vgs-timestamp"], headers["x-vgs-signature"], hit["body"] + b" ")
            payload = json.loads(hit["body"])
            events[payload["event"]] = payload["job"]
        assert set(events) == {"start", "completed"}
        assert events["start"]["id"] == job["id"] and events["start"]["status"] in ("running", "succeeded")
        assert events["completed"]["status"] == "succeeded" and events["completed"]["outputs"][0]["url"]
    finally:
        receiver.close()


def test_only_the_asked_events_are_sent(stack):
    receiver = Receiver(fail_first=0)
    try:
        with httpx.Client(base_url=stack.url, timeout=30) as api:
            job = submit(api, mode="unconditional", webhook=receiver.url).json()  # default: completed only
            wait(api, job["id"])
            deadline = time.monotonic() + 10
            while not receiver.received and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
        assert [json.loads(h["body"])["event"] for h in receiver.received] == ["completed"]
    finally:
        receiver.close()


@pytest.mark.parametrize("url, reason", [
    ("http://10.1.2.3/hook", "non-public"),
    ("http://169.254.169.254/latest/meta-data", "non-public"),
    ("http://[::1]:9000/hook", "non-public"),
    ("http://192.168.0.10/hook", "non-public"),
    ("http://localhost:9000/hook", "non-public"),
    ("ftp://example.com/hook", "http:// or https://"),
    ("http://user:pw@example.com/hook", "credentials"),
    ("http://no-such-host.invalid/hook", "does not resolve"),
])
def test_webhooks_to_private_addresses_are_refused(url, reason):
    with pytest.raises(WebhookRefused, match=reason):
        check_webhook_url(url, allow=[])


def test_the_gateway_refuses_a_private_webhook_with_422(stack):
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        answer = api.post("/v1/generate", json={"mode": "unconditional", "webhook": "http://10.0.0.1/x"})
        assert answer.status_code == 422 and answer.json()["error"]["field"] == "webhook"
    check_webhook_url("http://127.0.0.1:9/x", allow=["127.0.0.1"])  # allow-listed: accepted
    check_webhook_url("http://10.9.8.7/x", allow=["10.0.0.0/8"])
