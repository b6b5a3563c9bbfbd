"""Configuration of the gateway and the workers, from VGS_* environment variables (pydantic-settings)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def list_setting(value: Any) -> Any:
    """A list from the environment: a JSON list, or plain values separated by commas (one value alone too)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)
    return [part.strip() for part in text.split(",") if part.strip()]


class ServiceSettings(BaseSettings):
    """Every setting has a default that works on one machine (`make run`); the README lists them."""

    model_config = SettingsConfigDict(env_prefix="VGS_", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="the Redis that gateway and workers share")
    namespace: str = Field("vgs", pattern=r"^[A-Za-z0-9_-]+$",
                           description="prefix of every Redis key and RQ queue (deployments can share a Redis)")

    # Gateway: access and limits
    auth: bool = Field(False, description="require API keys (on in the compose deployment, off for make run)")
    api_keys: str = Field("", description="API keys as name:sha256hex[:admin], comma-separated "
                                          "(videogpt-serve hash-key KEY prints the hash)")
    api_keys_file: Path | None = Field(None, description="a file of such entries, one per line")
    rate_limit_per_minute: int = Field(120, ge=0, description="submissions per key per minute (0: no limit)")
    max_concurrent_jobs: int = Field(16, ge=0, description="queued or running jobs per key (0: no limit)")
    max_queue_depth: int = Field(1000, ge=1, description="queued jobs in all; past it, 503 with Retry-After")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest request body")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                         description="origins allowed by CORS (none: CORS off)")
    webhook_secret: str = Field("change-me-too", min_length=8, description="HMAC key of webhook signatures")
    webhook_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="webhook hosts, IPs or networks allowed although loopback/private/"
                                          "link-local (comma-separated, e.g. 127.0.0.1,10.0.0.0/8)")
    webhook_max_attempts: int = Field(6, ge=1, description="deliveries of one event before giving up")
    webhook_backoff_s: float = Field(1.0, gt=0, description="first retry delay; doubled at each retry")

    # Gateway
    public_url: str = Field("http://127.0.0.1:8000", description="base of the URLs handed to clients")
    default_model: str | None = Field(None, description="models of requests that name none, comma-separated: the "
                                      "first that does the request's mode (else the first by name that a live "
                                      "worker serves; videogpt-serve up sets its bundles')")
    max_samples: int = Field(8, ge=1, description="most samples one request may ask for")
    max_cond_frames_bytes: int = Field(6 * 1024 * 1024, ge=1024, description="decoded size of a data URI")
    max_decoded_frames: int = Field(64, ge=1, description="frames a conditioning file may hold")
    max_decoded_pixels: int = Field(4096 * 4096, ge=1, description="width x height of a conditioning file")
    decode_timeout_s: float = Field(10.0, gt=0, description="longest a conditioning file may take to decode")
    job_ttl_s: int = Field(24 * 3600, ge=60, description="how long job records and output files are kept")
    model_ttl_s: float = Field(600.0, gt=0, description="how long a model stays listed (requests for it queued, "
                                                        "with a warning) after its last worker went; then it is "
                                                        "dropped and its queued jobs fail (no_worker)")

    # Storage of outputs: "local" (a directory the gateway serves) or "s3".
    storage: str = Field("local", pattern="^(local|s3)$", description="local (served by the gateway) or s3")
    storage_dir: Path = Field(Path("data/outputs"), description="local storage: where outputs are written")
    url_signing_key: str = Field("change-me", min_length=8, description="HMAC key of local output URLs")
    url_ttl_s: int = Field(3600, ge=1, description="lifetime of output URLs")
    s3_endpoint_url: str | None = Field(None, description="S3 API endpoint (empty: AWS)")
    s3_bucket: str = Field("videogpt-outputs", description="bucket of the outputs (workers create it if missing)")
    s3_region: str = Field("us-east-1", description="S3 region")
    s3_access_key: str | None = Field(None, description="S3 credentials (empty: boto3's own lookup)")
    s3_secret_key: str | None = Field(None, description="S3 credentials (empty: boto3's own lookup)")

    # Workers
    bundles: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path("weights/moving-digits"), Path("weights/moving-digits-frames")],
        description="bundle directories a worker loads at start (comma-separated, or a JSON list)")
    device: str | None = Field(None, description="cpu or cuda (default: cuda when available)")
    batching: str = Field("continuous", pattern="^(continuous|static)$",
                          description="continuous: jobs join and leave a running engine at every step; static: "
                                      "one batch at a time (the jobs that waited together)")
    batch_size: int = Field(8, ge=1, description="static: most samples decoded together")
    batch_wait_s: float = Field(0.2, ge=0, description="static: how long a batch waits for companions")
    engine_slots: int | None = Field(None, ge=1, description="continuous: KV-cache rows of each model's engine "
                                     "(default: room for VGS_BATCH_SIZE samples, a guided sample taking two; on a "
                                     "CPU no more than keep a step's cache reads within a third of its "
                                     "last-level cache)")
    upscale: int = Field(0, ge=0, description="integer upscaling of outputs; 0: up to about 256 pixels")
    heartbeat_s: float = Field(5.0, gt=0, description="worker heartbeat period; a worker is up for 3 periods")
    lease_s: float = Field(30.0, gt=0, description="a running job whose worker has not renewed its lease for "
                                                   "this long is abandoned and retried")
    max_attempts: int = Field(3, ge=1, description="runs of a job (first + retries after lost workers)")
    reap_interval_s: float = Field(5.0, gt=0, description="how often abandoned and stranded jobs are looked for")
    job_timeout_s: float = Field(600.0, gt=0, description="longest a job may run; past it, failed (timeout)")
    max_frames: int | None = Field(None, ge=1, description="longest video a request may ask for, in frames (default: "
                                   "8x each model's native length; never below it; a model with one latent time "
                                   "step makes its native length only)")
    window_stride: int | None = Field(None, ge=1, description="latent time steps each window after the first adds to "
                                      "a longer video (default: half the model's latent time steps)")
    precision: Literal["float32", "bfloat16", "int8", "auto"] = Field(
        "auto", description="decoding precision of the priors: float32, bfloat16, int8 or auto (the fastest on this "
                            "machine among those meeting the fidelity goal, measured at load; float32 when none is "
                            "faster)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")
    cpu_kernels: bool = Field(True, description="on CPU, attend and multiply with kernels compiled at load by the "
                                                "machine's C compiler (falls back to torch's operations where there "
                                                "is none)")
    metrics_port: int = Field(9100, ge=0, le=65535, description="worker: port of its /metrics (0: none)")

    _lists = field_validator("cors_origins", "webhook_allow", "bundles", mode="before")(list_setting)


@lru_cache(maxsize=1)
def get_settings() -> ServiceSettings:
    return ServiceSettings()
