"""Videos of any length through the service: num_frames checked against what the workers announce, a long
mp4 of exactly that many frames in every mode and both batching modes, the CLI's --num-frames, and the
worker's length, stride and precision settings."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from service_stack import REPO, serving, write_bundle
from test_service_api import png_data_uri, probe, submit, wait

from jobs.settings import ServiceSettings
from models import load_gpt

LONG = {"unconditional": {}, "class": {"class_label": "two"}, "frames": {"cond_frames": png_data_uri()}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("long")
    # tiny: latent (2, 4, 4), 4 frames natively at 2 per latent step; short: one latent step (2 frames).
    bundles = [write_bundle(tmp / "bundles", "tiny"), write_bundle(tmp / "bundles", "short", latent=(1, 4, 4))]
    with serving(tmp, bundles, VGS_DEFAULT_MODEL="tiny", VGS_PRECISION="bfloat16") as s:
        yield s


@pytest.fixture
def api(stack):
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        yield client


def check_video(api, job: dict, frames: int, tmp_path) -> None:
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0 and job["request"]["num_frames"] == frames
    for out in job["outputs"]:
        assert out["frames"] == frames
        _, count, _ = probe(api.get(out["url"]).content, tmp_path)
        assert count == frames


@pytest.mark.parametrize("mode", sorted(LONG))
def test_a_video_four_times_the_native_length_in_each_mode(api, mode, tmp_path):
    job = wait(api, submit(api, mode=mode, num_frames=16, num_samples=2, seed=5, **LONG[mode]).json()["id"])
    check_video(api, job, 16, tmp_path)


def test_the_native_length_is_explicit_in_the_job(api, tmp_path):
    job = wait(api, submit(api, mode="unconditional").json()["id"])
    check_video(api, job, 4, tmp_path)
    assert wait(api, submit(api, mode="unconditional", model="short").json()["id"])["request"]["num_frames"] == 2


@pytest.mark.parametrize("body, text", [
    ({"num_frames": 0}, "num_frames must be a multiple of 2 from 2 to 32 for model 'tiny' (native length 4), not 0"),
    ({"num_frames": 3}, "a multiple of 2 from 2 to 32"),
    ({"num_frames": 34}, "a multiple of 2 from 2 to 32"),
    ({"num_frames": -4}, "not -4"),
    ({"num_frames": 10 ** 200}, "characters)"),  # a huge value is cut short in the message
    ({"num_frames": "8"}, "valid integer"),
    ({"num_frames": True}, "valid integer"),
    ({"num_frames": 5.0}, "valid integer"),
    ({"num_frames": 4, "model": "short"}, "num_frames must be 2 for model 'short'"),
], ids=["zero", "not-a-multiple", "over-the-max", "negative", "huge", "string", "bool", "float", "one-step"])
def test_bad_lengths_are_refused_naming_num_frames_and_nothing_is_queued(api, stack, body, text):
    client = stack.redis.client()
    jobs_before = len(list(client.scan_iter("vgs:job:*")))
    answer = api.post("/v1/generate", json={"mode": "unconditional", **body})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == "num_frames" and text in error["message"], error
    assert len(error["message"]) < 300
    assert len(list(client.scan_iter("vgs:job:*"))) == jobs_before


def test_models_show_native_and_longest_lengths_and_the_precision(api):
    models = {m["name"]: m for m in api.get("/v1/models").json()["models"]}
    tiny, short = models["tiny"], models["short"]
    assert (tiny["frames"], tiny["frames_per_step"], tiny["max_frames"], tiny["window_stride_frames"]) == (4, 2, 32, 2)
    assert (short["frames"], short["frames_per_step"], short["max_frames"], short["window_stride_frames"]) == \
        (2, 2, 2, None)  # one latent time step: no window to slide
    assert tiny["precision"] == short["precision"] == "bfloat16"  # VGS_PRECISION reached the worker


def test_generate_num_frames_writes_that_many_frames(stack, tmp_path):
    out = tmp_path / "long.mp4"
    done = subprocess.run([sys.executable, "-m", "cli", "generate", "--url", stack.url, "--mode", "class",
                           "--label", "1", "--num-frames", "8", "-o", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "8 frames each" in done.stdout
    _, count, _ = probe(out.read_bytes(), tmp_path)
    assert count == 8
    refused = subprocess.run([sys.executable, "-m", "cli", "generate", "--url", stack.url, "--num-frames", "7",
                              "-o", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "num_frames: num_frames must be a multiple of 2" in refused.stderr


def test_static_batching_makes_long_and_native_videos_side_by_side(tmp_path):
    bundle = write_bundle(tmp_path / "bundles", "tiny")
    with serving(tmp_path, [bundle], VGS_BATCHING="static", VGS_MAX_FRAMES="13", VGS_BATCH_WAIT_S="1") as s, \
            httpx.Client(base_url=s.url, timeout=30) as api:
        tiny = api.get("/v1/models").json()["models"][0]
        assert tiny["max_frames"] == 12  # VGS_MAX_FRAMES in whole latent steps
        refused = api.post("/v1/generate", json={"mode": "unconditional", "num_frames": 14})
        assert refused.status_code == 422 and "from 2 to 12" in refused.json()["error"]["message"]
        ids = [submit(api, mode="class", class_label=1, seed=3, num_frames=n).json()["id"] for n in (12, 4, 6)]
        for job_id, frames in zip(ids, (12, 4, 6)):
            check_video(api, wait(api, job_id), frames, tmp_path)


# The worker's settings, without a stack.

def test_length_and_stride_settings_per_model(tmp_path):
    from worker.lane import ModelLane
    from worker.loading import max_frames, model_info, window_stride

    wide = load_gpt(write_bundle(tmp_path, "wide", latent=(4, 4, 4)))  # 8 frames natively, 4 latent steps
    short = load_gpt(write_bundle(tmp_path, "short", latent=(1, 4, 4)))
    assert (max_frames(wide, None), max_frames(wide, 21), max_frames(wide, 3)) == (64, 20, 8)  # never below native
    assert max_frames(short, None) == max_frames(short, 100) == 2
    assert (window_stride(wide, None), window_stride(wide, 3)) == (2, 3)
    assert window_stride(short, 5) is None  # no windows to slide: the setting does not apply
    with pytest.raises(ValueError, match="VGS_WINDOW_STRIDE 4 is too large for model 'wide'.*1 to 3"):
        window_stride(wide, 4)
    info = model_info(wide, ServiceSettings(window_stride=3, max_frames=40, precision="float32"))
    assert (info["frames"], info["frames_per_step"], info["max_frames"], info["window_stride_frames"]) == (8, 2, 40, 6)
    lane = ModelLane("wide", wide, 2, stride=3)
    assert lane.engine.stride == 3
    lane.reset()
    assert lane.engine.stride == 3, "a fresh engine keeps the stride"


def test_a_worker_refuses_a_stride_its_model_cannot_take(tmp_path):
    bundle = write_bundle(tmp_path, "tiny")  # two latent steps: a window adds 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("VGS_")}
    env.update(VGS_BUNDLES=str(bundle), VGS_WINDOW_STRIDE="2", VGS_REDIS_URL="redis://127.0.0.1:1/0",
               VGS_STORAGE_DIR=str(tmp_path / "outputs"), VGS_PRECISION="float32", VGS_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "cli", "worker"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "VGS_WINDOW_STRIDE 2 is too large for model 'tiny'" in done.stderr
