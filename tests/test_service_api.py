"""The serving path end to end: real Redis, a real gateway process, real worker processes, real ffmpeg."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import struct
import subprocess
import time
from pathlib import Path

import httpx
import imageio_ffmpeg
import numpy as np
import pytest
from service_stack import make_stack, publish_ghost, serving, write_bundle

from jobs.storage import LocalStorage
from media import png_bytes, write_mp4

TERMINAL = ("succeeded", "failed", "canceled")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    bundles = [write_bundle(tmp / "bundles", "tiny", temperature=0.9),
               write_bundle(tmp / "bundles", "slow", latent=(8, 16, 16), layers=2, seed=1)]
    with serving(tmp, bundles, VGS_DEFAULT_MODEL="tiny", VGS_MAX_SAMPLES="8",
                 VGS_MAX_COND_FRAMES_BYTES=str(1024 * 1024)) as s:
        publish_ghost(s)  # a model that no worker serves: its jobs stay queued
        yield s


@pytest.fixture
def api(stack):
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        yield client


def wait(api, job_id, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while True:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def submit(api, **body):
    answer = api.post("/v1/generate", json=body)
    assert answer.status_code == 202, answer.text
    return answer


def probe(data: bytes, tmp_path) -> tuple[dict, int, str]:
    path = tmp_path / "probe.mp4"
    path.write_bytes(data)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    count = sum(1 for _ in reader)
    info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True).stderr
    return meta, count, info


def video_data_uri(tmp_dir, kind: str) -> str:
    frames = np.zeros((3, 20, 24, 3), dtype=np.uint8)
    for i in range(3):
        frames[i, 5:15, 5 + i: 15 + i] = (40, 220, 90)
    path = tmp_dir / f"clip.{kind}"
    if kind == "mp4":
        write_mp4(frames, path, fps=4)
    else:
        writer = imageio_ffmpeg.write_frames(str(path), (24, 20), fps=4, codec="gif", pix_fmt_out="rgb8",
                                             macro_block_size=1, quality=None)
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
    mime = "video/mp4" if kind == "mp4" else "image/gif"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def png_data_uri(height=40, width=56) -> str:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[10:30, 20:40] = (250, 200, 40)
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


@pytest.mark.parametrize("body", [
    {"mode": "unconditional", "num_samples": 2},
    {"mode": "class", "class_label": "three"},
    {"mode": "class", "class_label": 1, "model": "tiny", "top_k": 5, "temperature": 0.8, "seed": 7, "guidance": 1},
    {"mode": "frames", "cond_frames": png_data_uri(), "top_p": 0.9},
    {"mode": "frames", "cond_frames": "mp4"},
    {"mode": "frames", "cond_frames": "gif", "num_samples": 3},
], ids=["unconditional", "class-name", "class-index", "frames-png", "frames-mp4", "frames-gif"])
def test_each_mode_end_to_end(api, body, tmp_path):
    if body.get("cond_frames") in ("mp4", "gif"):
        body = {**body, "cond_frames": video_data_uri(tmp_path, body["cond_frames"])}
    answer = submit(api, **body)
    job = answer.json()
    assert answer.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] in ("queued", "running", "succeeded")
    job = wait(api, job["id"])
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0 and job["started_at"] and job["finished_at"]
    assert len(job["outputs"]) == body.get("num_samples", 1)
    for out in job["outputs"]:
        assert out["content_type"] == "video/mp4" and out["frames"] == 4 and out["fps"] == 4.0
        video = httpx.get(out["url"], timeout=30)
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        meta, count, info = probe(video.content, tmp_path)
        assert count == 4
        assert tuple(meta["size"]) == (out["width"], out["height"]) == (256, 256)  # 16 px upscaled to 256
        assert "h264" in info and "yuv420p" in info
    metrics = job["metrics"]
    for key in ("queue_seconds", "sampling_seconds", "decode_seconds", "encode_seconds", "tokens_per_second"):
        assert metrics[key] is not None and metrics[key] >= 0
    request = job["request"]
    assert request["model"] == "tiny" and isinstance(request["seed"], int)
    # The model's default guidance (2) for class and frames; none for unconditional.
    assert request["guidance"] == body.get("guidance", 1.0 if body["mode"] == "unconditional" else 2.0)
    assert request["temperature"] == body.get("temperature", 0.9), "the model's temperature unless asked"
    if body["mode"] == "class":
        assert request["class_label"] == 3 if body["class_label"] == "three" else 1
    if body["mode"] == "frames":
        assert request["cond_frames"]["content_type"] in ("image/png", "video/mp4", "image/gif")
        assert "base64" not in json.dumps(request), "the record keeps a summary, not the upload"


def test_same_seed_same_video_and_other_seed_differs(api):
    def video(seed):
        job = wait(api, submit(api, mode="class", class_label=2, seed=seed).json()["id"])
        return httpx.get(job["outputs"][0]["url"]).content

    assert video(11) == video(11)
    assert video(11) != video(12)


def test_models_health_and_discovery(api):
    models = {m["name"]: m for m in api.get("/v1/models").json()["models"]}
    tiny = models["tiny"]
    assert tiny["modes"] == ["unconditional", "class", "frames"] and tiny["worker_up"] and tiny["workers"] == 1
    assert tiny["class_names"][3] == "three" and tiny["n_cond_frames"] == 1
    assert (tiny["frames"], tiny["resolution"], tiny["fps"], tiny["latent_shape"]) == (4, 16, 4.0, [2, 4, 4])
    assert (tiny["guidance"], tiny["temperature"]) == (2.0, 0.9)
    assert models["ghost"]["worker_up"] is False
    defaults = api.get("/v1/models").json()
    assert defaults["default_model"] == "tiny"
    assert defaults["defaults"] == {"unconditional": "tiny", "class": "tiny", "frames": "tiny"}
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").status_code == 200
    assert api.get("/").json()["endpoints"]["generate"] == "POST /v1/generate"
    schema = api.get("/openapi.json").json()
    assert "/v1/generate" in schema["paths"] and "/v1/jobs/{job_id}/events" in schema["paths"]


@pytest.mark.parametrize("body, field, text", [
    ({"mode": "class", "class_label": 1, "model": "nope"}, "model", "unknown model 'nope'"),
    ({"mode": "class", "class_label": 9}, "class_label", "out of range"),
    ({"mode": "class", "class_label": "nine"}, "class_label", "unknown class name 'nine'"),
    ({"mode": "class"}, "class_label", "needs class_label"),
    ({"mode": "unconditional", "class_label": 1}, "class_label", "only for mode 'class'"),
    ({"mode": "frames", "model": "ghost", "cond_frames": "data:image/png;base64,AAAA"}, "mode",
     "does not do mode 'frames'"),
    ({"mode": "sideways"}, "mode", "Input should be"),
    ({"mode": "frames"}, "cond_frames", "needs cond_frames"),
    ({"mode": "frames", "cond_frames": "http://example.com/a.png"}, "cond_frames", "data URI"),
    ({"mode": "frames", "cond_frames": "data:image/png;base64,!!!!"}, "cond_frames", "not valid base64"),
    ({"mode": "frames", "cond_frames": "data:image/png;base64," + base64.b64encode(b"not a png").decode()},
     "cond_frames", "cannot be decoded"),
    ({"mode": "frames", "cond_frames": "data:text/plain;base64,aGVsbG8="}, "cond_frames", "not supported"),
    ({"mode": "unconditional", "num_samples": 9}, "num_samples", "over this server's limit of 8"),
    ({"mode": "unconditional", "num_samples": 0}, "num_samples", "greater than or equal to 1"),
    ({"mode": "unconditional", "temperature": 0}, "temperature", "greater than 0"),
    ({"mode": "unconditional", "top_k": 0}, "top_k", "greater than or equal to 1"),
    ({"mode": "unconditional", "top_p": 1.5}, "top_p", "less than or equal to 1"),
    ({"mode": "unconditional", "seed": -1}, "seed", "greater than or equal to 0"),
    ({"mode": "unconditional", "colour": "red"}, "colour", "Extra inputs are not permitted"),
    ({"mode": "unconditional", "guidance": 3}, "guidance", "leave it out in mode 'unconditional'"),
    ({"mode": "class", "class_label": 1, "guidance": 21}, "guidance", "less than or equal to 20"),
    # Strict types: a boolean is no class and no count, a string no number, 3.5 no class index.
    ({"mode": "class", "class_label": True}, "class_label", "a class index (an integer) or a class name"),
    ({"mode": "class", "class_label": 3.5}, "class_label", "not 3.5"),
    ({"mode": "unconditional", "num_samples": "2"}, "num_samples", "valid integer"),
    ({"mode": "unconditional", "num_samples": True}, "num_samples", "valid integer"),
    ({"mode": "unconditional", "seed": 1.5}, "seed", "valid integer"),
    ({"mode": "unconditional", "temperature": "0.9"}, "temperature", "valid number"),
    ({"mode": "class", "class_label": 1, "guidance": False}, "guidance", "valid number"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None)
def test_bad_requests_are_refused_with_the_field_and_nothing_is_queued(api, stack, body, field, text):
    client = stack.redis.client()
    jobs_before = len(list(client.scan_iter("vgs:job:*")))
    answer = api.post("/v1/generate", json=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == field and text in error["message"], error
    assert len(list(client.scan_iter("vgs:job:*"))) == jobs_before


def test_malformed_json_names_the_body_and_the_position(api):
    answer = api.post("/v1/generate", content=b'{"mode": "class", ', headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["field"] == "body" and "not valid JSON" in error["message"] and "at character 18" in error["message"]


def test_errors_do_not_echo_huge_inputs(api):
    name = "x" * 100_000
    error = api.post("/v1/generate", json={"mode": "class", "class_label": name}).json()["error"]
    assert error["field"] == "class_label" and "unknown class name" in error["message"]
    assert "(100002 characters)" in error["message"] and len(error["message"]) < 400
    error = api.post("/v1/generate", json={"mode": "unconditional", "y" * 10_000: 1}).json()["error"]
    assert len(error["field"]) < 120 and len(error["message"]) < 300
    error = api.post("/v1/generate", json={"mode": "class", "class_label": "7" * 5000}).json()["error"]
    assert error["field"] == "class_label" and len(error["message"]) < 400  # digits too long for an index: a name
    answer = api.get("/v1/jobs/" + "z" * 10_000)
    assert answer.status_code == 404 and len(answer.json()["error"]["message"]) < 200


def test_oversized_frames_and_bodies_are_refused_with_413(api):
    big_upload = "data:image/png;base64," + "A" * (2 * 1024 * 1024)  # 1.5 MB decoded; the limit here is 1 MB
    answer = api.post("/v1/generate", json={"mode": "frames", "cond_frames": big_upload})
    assert answer.status_code == 413
    error = answer.json()["error"]
    assert error["field"] == "cond_frames" and "limit is 1048576" in error["message"]
    huge_body = "data:image/png;base64," + "A" * (9 * 1024 * 1024)  # over the 8 MB body limit
    answer = api.post("/v1/generate", json={"mode": "frames", "cond_frames": huge_body})
    assert answer.status_code == 413 and "request body" in answer.json()["error"]["message"]


def gif_bytes(width: int, height: int, frames: int = 1) -> bytes:
    """A GIF whose screen is width x height, holding `frames` 1-pixel images: tiny files, big decodes."""
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + bytes([2, 2, 0x44, 0x01, 0])
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF0, 0, 0) + bytes([0, 0, 0, 255, 255, 255])
            + image * frames + b"\x3b")


def gif_uri(data: bytes) -> str:
    return "data:image/gif;base64," + base64.b64encode(data).decode()


def test_decompression_bombs_are_refused_and_long_gifs_cost_one_frame(api, stack):
    bomb = api.post("/v1/generate", json={"mode": "frames", "cond_frames": gif_uri(gif_bytes(5000, 5000))})
    assert bomb.status_code == 413, bomb.text
    assert bomb.json()["error"]["field"] == "cond_frames"
    assert "5000x5000 pixels are over the limit" in bomb.json()["error"]["message"]
    huge = api.post("/v1/generate", json={"mode": "frames", "cond_frames": gif_uri(gif_bytes(20000, 20000))})
    assert huge.status_code in (413, 422) and huge.json()["error"]["field"] == "cond_frames"
    long_gif = gif_bytes(24, 24, frames=5000)
    answer = api.post("/v1/generate", json={"mode": "frames", "cond_frames": gif_uri(long_gif)})
    assert answer.status_code == 202  # only the first frame is decoded
    assert wait(api, answer.json()["id"])["status"] == "succeeded"


def test_local_output_urls_are_signed_and_expire(api, stack):
    job = wait(api, submit(api, mode="unconditional").json()["id"])
    url = job["outputs"][0]["url"]
    assert httpx.get(url).status_code == 200
    tampered = httpx.get(url.replace("sig=", "sig=0"))
    assert tampered.status_code == 403 and "signature" in tampered.json()["error"]["message"]
    other_file = httpx.get(url.replace("/0.mp4", "/1.mp4"))
    assert other_file.status_code == 403
    storage = LocalStorage(Path(stack.env["VGS_STORAGE_DIR"]), stack.url, stack.env["VGS_URL_SIGNING_KEY"])
    expired = httpx.get(storage.url(f"{job['id']}/0.mp4", ttl_s=-5))
    assert expired.status_code == 403 and "expired" in expired.json()["error"]["message"]
    assert httpx.get(url.split("?")[0]).status_code == 422
    assert httpx.get(f"{stack.url}/v1/files/..%2F..%2Fetc%2Fpasswd?expires=9999999999&sig=x").status_code in (403, 404)
    # What schemathesis found: a signature that is not ASCII is a mismatch, not a 500.
    odd = httpx.get(f"{stack.url}/v1/files/0?expires=6121&sig=%C3%B7")
    assert odd.status_code == 403 and "signature" in odd.json()["error"]["message"]


def test_local_sweep_deletes_outputs_past_retention(tmp_path):
    storage = LocalStorage(tmp_path / "out", "http://x", "key-12345678")
    source = tmp_path / "v.mp4"
    source.write_bytes(b"video")
    for key in ("old/0.mp4", "old/1.mp4", "new/0.mp4"):
        storage.put(key, source, "video/mp4")
    long_ago = time.time() - 7200
    for name in ("0.mp4", "1.mp4"):
        os.utime(storage.path(f"old/{name}"), (long_ago, long_ago))
    assert storage.sweep(older_than_s=3600) == 2
    assert not (tmp_path / "out" / "old").exists() and storage.path("new/0.mp4").is_file()


def test_unknown_job_is_404_json(api):
    answer = api.get("/v1/jobs/doesnotexist")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    assert api.post("/v1/jobs/doesnotexist/cancel").status_code == 404


def ghost_depth(api) -> float:
    lines = api.get("/metrics").text.splitlines()
    line = next(line for line in lines if line.startswith('vgs_queue_depth{model="ghost"}'))
    return float(line.split()[-1])


def test_a_job_for_a_model_no_worker_serves_is_queued_with_a_warning(api, stack):
    before = ghost_depth(api)
    job = submit(api, mode="unconditional", model="ghost").json()
    assert ghost_depth(api) == before + 1
    assert job["status"] == "queued" and job["warnings"]
    assert "no worker serving model 'ghost' is up" in job["warnings"][0] and "VGS_MODEL_TTL_S" in job["warnings"][0]
    assert api.get(f"/v1/jobs/{job['id']}").json()["warnings"] == job["warnings"]
    served = submit(api, mode="unconditional", model="tiny").json()
    assert served["warnings"] == []
    api.post(f"/v1/jobs/{job['id']}/cancel")
    assert api.get(f"/v1/jobs/{job['id']}").json()["warnings"] == [], "only a queued job waits for a worker"
    assert ghost_depth(api) == before, "a canceled job is not counted as waiting"


def test_cancel_a_queued_job_it_never_runs(api, stack):
    job = submit(api, mode="unconditional", model="ghost").json()
    assert job["status"] == "queued"
    canceled = api.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert canceled["status"] == "canceled" and canceled["error"]["code"] == "canceled"
    assert canceled["cancel_requested"] is True
    time.sleep(0.5)
    assert api.get(f"/v1/jobs/{job['id']}").json()["started_at"] is None


def test_cancel_a_running_job_stops_within_a_second(api):
    job = submit(api, mode="unconditional", model="slow", num_samples=8).json()
    deadline = time.monotonic() + 30
    while api.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "running", "the slow model finished too soon"
    asked = time.monotonic()
    answer = api.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert answer["cancel_requested"] is True and answer["status"] in ("running", "canceled")
    while api.get(f"/v1/jobs/{job['id']}").json()["status"] == "running":
        assert time.monotonic() - asked < 1.0, "still running a second after cancel"
        time.sleep(0.02)
    final = api.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "canceled" and final["outputs"] == []
    # the worker is free again
    assert wait(api, submit(api, mode="unconditional").json()["id"])["status"] == "succeeded"


def test_idempotency_key(api):
    body = {"mode": "class", "class_label": 4, "seed": 3}
    first = api.post("/v1/generate", json=body, headers={"Idempotency-Key": "abc-1"})
    again = api.post("/v1/generate", json=body, headers={"Idempotency-Key": "abc-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    other = api.post("/v1/generate", json={**body, "seed": 4}, headers={"Idempotency-Key": "abc-1"})
    assert other.status_code == 409 and "different request body" in other.json()["error"]["message"]
    fresh = api.post("/v1/generate", json=body, headers={"Idempotency-Key": "abc-2"})
    assert fresh.json()["id"] != first.json()["id"]


def test_events_stream_until_terminal(stack, api):
    job = submit(api, mode="class", class_label=0).json()
    events = []
    with httpx.stream("GET", f"{stack.url}/v1/jobs/{job['id']}/events", timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events and events[-1]["status"] == "succeeded" and events[-1]["outputs"]
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)


def eight_concurrent_jobs(stack, model: str = "tiny") -> list[dict]:
    with httpx.Client(base_url=stack.url, timeout=30) as warm:
        wait(warm, submit(warm, mode="unconditional", model=model).json()["id"])  # the worker is idle and warm

    def post(i):
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            body = {"mode": "class", "class_label": i % 5, "seed": i, "model": model}
            return client.post("/v1/generate", json=body).json()["id"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(post, range(8)))
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        jobs = [wait(api, job_id) for job_id in ids]
    assert all(j["status"] == "succeeded" for j in jobs), jobs
    return jobs


def test_eight_concurrent_requests_share_the_engine(stack):
    jobs = eight_concurrent_jobs(stack, model="slow")
    assert max(j["metrics"]["batch_samples"] for j in jobs) > 2, [j["metrics"] for j in jobs]
    assert all(j["metrics"]["slot_wait_seconds"] >= 0 for j in jobs)


def test_redis_down_gives_503_and_the_gateway_stays_up(tmp_path):

    s = make_stack(tmp_path, [])
    s.start_gateway()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{s.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        publish_ghost(s)
        with httpx.Client(base_url=s.url, timeout=10) as api:
            job = submit(api, mode="unconditional").json()
            s.redis.stop()
            for call in (lambda: api.post("/v1/generate", json={"mode": "unconditional"}),
                         lambda: api.get(f"/v1/jobs/{job['id']}"), lambda: api.get("/v1/models"),
                         lambda: api.get("/readyz")):
                answer = call()
                assert answer.status_code == 503, answer.text
                assert answer.headers["Retry-After"] and answer.json()["error"]["code"] == "unavailable"
            assert api.get("/healthz").status_code == 200
            s.redis.start()  # same port and data directory: the append-only file brings the job back
            deadline = time.monotonic() + 10
            while api.get(f"/v1/jobs/{job['id']}").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    finally:
        s.stop()
        s.redis.stop()
