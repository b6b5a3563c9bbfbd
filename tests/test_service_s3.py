"""Outputs stored in a real S3-compatible server (SeaweedFS `weed mini`) and fetched by presigned URL."""

import time

import httpx
import pytest
from service_stack import SeaweedS3, serving, write_bundle
from test_service_api import probe, wait

from jobs.settings import ServiceSettings
from jobs.storage import S3Storage


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = SeaweedS3(tmp_path_factory.mktemp("weed")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory, s3):
    tmp = tmp_path_factory.mktemp("s3stack")
    with serving(tmp, [write_bundle(tmp / "bundles", "tiny")], **s3.settings(), VGS_URL_TTL_S="2") as stack:
        yield stack


def test_sweep_deletes_only_old_objects(s3, tmp_path):
    settings = ServiceSettings(**{k[4:].lower(): v for k, v in s3.settings("sweep-test").items()})
    storage = S3Storage(settings)
    storage.ensure_bucket()
    source = tmp_path / "a.mp4"
    source.write_bytes(b"video")
    for key in ("job1/0.mp4", "job1/1.mp4", "job2/0.mp4"):
        storage.put(key, source, "video/mp4")
    assert storage.sweep(older_than_s=3600) == 0
    assert storage.sweep(older_than_s=-5) == 3  # everything is older than 5 s in the future
    assert storage.sweep(older_than_s=-5) == 0


def test_outputs_go_to_s3_and_presigned_urls_expire(s3_stack, tmp_path):
    with httpx.Client(base_url=s3_stack.url, timeout=30) as api:
        job = api.post("/v1/generate", json={"mode": "class", "class_label": 2, "num_samples": 2}).json()
        job = wait(api, job["id"])
        assert job["status"] == "succeeded", job
        for out in job["outputs"]:
            assert out["url"].startswith(s3_stack.env["VGS_S3_ENDPOINT_URL"]) and "X-Amz-Signature=" in out["url"]
            video = httpx.get(out["url"], timeout=30)
            assert video.status_code == 200
            _meta, count, info = probe(video.content, tmp_path)
            assert count == 4 and "h264" in info
        url = job["outputs"][0]["url"]
        assert httpx.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0")).status_code == 403
        unsigned = url.split("?")[0]
        assert httpx.get(unsigned).status_code == 403
        time.sleep(3.5)  # URL lifetime is 2 s here
        assert httpx.get(url).status_code == 403
        fresh = api.get(f"/v1/jobs/{job['id']}").json()["outputs"][0]["url"]
        assert httpx.get(fresh).status_code == 200
