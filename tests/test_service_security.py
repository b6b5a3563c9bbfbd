"""API keys, job ownership, admission limits and response headers, against a real gateway with auth on."""

from __future__ import annotations

import time

import httpx
import pytest
from service_stack import publish_ghost, serving, write_bundle
from test_service_api import wait

from service.auth import hash_key, parse_entries

KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key", "root": "root-secret-key", "rate": "rate-key",
        "busy": "busy-key", "fill1": "fill-1-key", "fill2": "fill-2-key", "fill3": "fill-3-key"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure")
    entries = [f"{name}:{hash_key(key)}" + (":admin" if name == "root" else "") for name, key in KEYS.items()]
    keys_file = tmp / "keys.txt"
    keys_file.write_text("# the operators' keys\n" + "\n".join(entries[3:]) + "\n")
    with serving(tmp, [write_bundle(tmp / "bundles", "tiny")], VGS_AUTH="true", VGS_API_KEYS=",".join(entries[:3]),
                 VGS_API_KEYS_FILE=str(keys_file), VGS_RATE_LIMIT_PER_MINUTE="5", VGS_MAX_CONCURRENT_JOBS="3",
                 VGS_MAX_QUEUE_DEPTH="8") as s:
        publish_ghost(s)
        yield s


def client(stack, who: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {KEYS[who]}"} if who else {}
    return httpx.Client(base_url=stack.url, timeout=30, headers=headers)


def test_no_key_or_a_wrong_key_is_401(stack):
    with client(stack, None) as anonymous:
        for answer in (anonymous.post("/v1/generate", json={"mode": "unconditional"}), anonymous.get("/v1/models"),
                       anonymous.get("/v1/jobs/abc")):
            assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
            assert answer.json()["error"]["code"] == "unauthorized"
        wrong = anonymous.get("/v1/models", headers={"Authorization": "Bearer not-a-key"})
        assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]["message"]
        basic = anonymous.get("/v1/models", headers={"Authorization": "Basic YWxpY2U6eA=="})
        assert basic.status_code == 401
        assert anonymous.get("/healthz").status_code == 200  # health stays open for probes


def test_a_key_sees_and_cancels_only_its_own_jobs(stack):
    with client(stack, "alice") as alice, client(stack, "bob") as bob, client(stack, "root") as root:
        job = alice.post("/v1/generate", json={"mode": "class", "class_label": 1}).json()
        assert "id" in job, job
        done = wait(alice, job["id"])
        assert done["status"] == "succeeded"
        for answer in (bob.get(f"/v1/jobs/{job['id']}"), bob.post(f"/v1/jobs/{job['id']}/cancel"),
                       bob.get(f"/v1/jobs/{job['id']}/events")):
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
        assert root.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"  # admin sees all
        assert httpx.get(done["outputs"][0]["url"]).status_code == 200  # the signed URL is the capability
        # the same Idempotency-Key of two owners gives two jobs
        a = alice.post("/v1/generate", json={"mode": "unconditional"}, headers={"Idempotency-Key": "k"}).json()
        b = bob.post("/v1/generate", json={"mode": "unconditional"}, headers={"Idempotency-Key": "k"}).json()
        assert a["id"] != b["id"]


def test_rate_limit_answers_429_with_retry_after(stack):
    with client(stack, "rate") as api:
        codes = [api.post("/v1/generate", json={"mode": "unconditional", "model": "tiny"}).status_code
                 for _ in range(6)]
        assert codes[:5] == [202] * 5 or codes.count(429) >= 1
        refused = api.post("/v1/generate", json={"mode": "unconditional"})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "rate_limited"


def _wait_for_an_empty_queue(stack, timeout_s: float = 60) -> None:
    """Jobs of earlier tests count towards the depth and leave it as the worker finishes them: the depth
    test starts from an empty queue, so that only its own ghost jobs (which never run) count."""
    from jobs.store import JobStore

    redis, deadline = stack.redis.client(), time.monotonic() + timeout_s
    queued = JobStore(redis, "vgs", ttl_s=3600).queued_index
    while redis.zcard(queued) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not redis.zcard(queued), "the worker did not finish the earlier jobs"


def test_concurrent_jobs_per_key_and_the_global_queue_depth(stack):
    _wait_for_an_empty_queue(stack)
    with client(stack, "busy") as busy:
        for _ in range(3):
            assert busy.post("/v1/generate", json={"mode": "unconditional", "model": "ghost"}).status_code == 202
        refused = busy.post("/v1/generate", json={"mode": "unconditional", "model": "ghost"})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_jobs"
        assert refused.headers["Retry-After"]
    statuses = []
    for name in ("fill1", "fill2", "fill3"):
        with client(stack, name) as api:
            statuses += [api.post("/v1/generate", json={"mode": "unconditional", "model": "ghost"}).status_code
                         for _ in range(3)]
    assert 503 in statuses, statuses  # 3 + 9 ghost jobs cannot all queue under a depth of 8
    with client(stack, "fill3") as api:
        full = api.post("/v1/generate", json={"mode": "unconditional", "model": "ghost"})
    assert full.status_code in (429, 503)


def test_security_headers_and_no_cors_by_default(stack):
    with client(stack, "alice") as api:
        answer = api.get("/v1/models")
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        preflight = api.options("/v1/generate", headers={"Origin": "https://evil.example",
                                                         "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers


def test_key_entries_are_validated():
    with pytest.raises(ValueError, match="entry 2 is not name:sha256hex"):
        parse_entries(f"a:{hash_key('x')},b:nothex", "VGS_API_KEYS")
    with pytest.raises(ValueError, match="entry 1"):
        parse_entries(f"a:{hash_key('x')}:superuser", "keys.txt")
    assert [e.name for e in parse_entries(f"# c\na:{hash_key('x')}\n\nb:{hash_key('y')}:admin\n", "f")] == ["a", "b"]
