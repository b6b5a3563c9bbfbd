"""The v1 API's request and response bodies (they are also the OpenAPI schema at /openapi.json)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from models.limits import MAX_GUIDANCE, MAX_SEED, MAX_TEMPERATURE

from .errors import clip

Mode = Literal["unconditional", "class", "frames"]
MODES: tuple[str, ...] = Mode.__args__
Status = Literal["queued", "running", "succeeded", "failed", "canceled"]


def _index_or_name(value: Any) -> Any:
    """A class label is an integer or a string, nothing else (true is not class 1, 3.5 is no class)."""
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    shown = clip(json.dumps(value) if isinstance(value, (bool, float, list, dict)) else repr(value))
    raise ValueError(f"must be a class index (an integer) or a class name (a string), not {shown}")


ClassLabel = Annotated[int | str | None, BeforeValidator(_index_or_name)]


class GenerateRequest(BaseModel):
    """What to generate. Fields a mode does not use must be left out. Types are strict: numbers are JSON
    numbers (not strings or booleans), counts and seeds integers."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, max_length=128, description="model name (default: the server's default)")
    mode: Mode = Field(description="unconditional, class (needs class_label) or frames (needs cond_frames)")
    class_label: ClassLabel = Field(None, description="class index or class name (mode class)")
    cond_frames: str | None = Field(
        None, description="mode frames: a data URI (data:image/png;base64,...) of a PNG/JPEG image, a GIF or an "
                          "mp4; its first frames condition the model, resized and cropped to its resolution")
    num_samples: int = Field(1, ge=1, description="videos to generate (at most the server's max_samples)")
    num_frames: int | None = Field(
        None, description="frames of each video (default: the model's native length, `frames` in /v1/models): a "
                          "multiple of the model's frames_per_step up to its max_frames; past the native length a "
                          "window slides over time")
    temperature: float | None = Field(None, gt=0, le=MAX_TEMPERATURE, allow_inf_nan=False,
                                      description="sampling temperature: < 1 draws likelier codes (default: the "
                                                  "model's, `temperature` in /v1/models)")
    top_k: int | None = Field(None, ge=1, le=1_000_000, description="keep the k most likely codes")
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False, description="nucleus sampling")
    guidance: float | None = Field(
        None, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False,
        description="classifier-free guidance scale, modes class and frames: > 1 follows the condition more "
                    "closely (1: off; default: the model's)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="same seed and settings: same videos")
    fps: float | None = Field(None, gt=0, le=120, allow_inf_nan=False, description="default: the model's")
    webhook: str | None = Field(None, max_length=2048, description="URL that receives the job's events (POST, "
                                                                   "signed; see the README)")
    webhook_events: list[Literal["start", "completed"]] = Field(
        default_factory=lambda: ["completed"], max_length=2, description="which events go to the webhook")


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Output(BaseModel):
    url: str
    content_type: str
    frames: int
    width: int
    height: int
    fps: float


class JobMetrics(BaseModel):
    queue_seconds: float | None = None
    sampling_seconds: float | None = None
    decode_seconds: float | None = None
    encode_seconds: float | None = None
    store_seconds: float | None = None
    tokens_per_second: float | None = None
    slot_wait_seconds: float | None = Field(None, description="continuous batching: time from claim to the "
                                                               "first sample entering the engine")
    batch_samples: float | None = Field(None, description="samples decoded together with this job's (static: in "
                                                          "its batch; continuous: on average while it ran)")
    batch_jobs: int | None = Field(None, description="static batching: jobs in this job's batch")


class Job(BaseModel):
    id: str
    model: str
    status: Status
    progress: float = Field(ge=0, le=1)
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    request: dict = Field(description="the validated request (cond_frames summarised)")
    outputs: list[Output] = Field(default_factory=list)
    error: ErrorBody | None = None
    metrics: JobMetrics = Field(default_factory=JobMetrics)
    attempts: int = 0
    cancel_requested: bool = Field(False, description="a cancel was asked for: a queued job is canceled at once, "
                                                      "a running one stays running until its worker stops it "
                                                      "(within about a second), then it is canceled")
    warnings: list[str] = Field(default_factory=list, description="why the job may not make progress, e.g. no "
                                                                  "worker serving its model is up")


class ModelInfo(BaseModel):
    name: str
    modes: list[Mode]
    class_names: list[str] | None = None
    n_cond_frames: int
    frames: int = Field(description="native length: the frames of the videos the model was trained on")
    frames_per_step: int | None = Field(None, description="frames per latent time step: num_frames is a multiple "
                                                          "of it")
    max_frames: int | None = Field(None, description="the longest num_frames a request may ask for (longer than "
                                                     "`frames`: a window slides over time)")
    window_stride_frames: int | None = Field(None, description="frames each window after the first adds to a "
                                                               "longer video (none: the model makes only its "
                                                               "native length)")
    resolution: int
    fps: float
    latent_shape: list[int]
    guidance: float = Field(1.0, description="guidance scale of requests that name none (unconditional ones "
                                             "too where unconditional is 'classes')")
    guidance_supported: bool = Field(False, description="whether requests may set guidance (condition dropout)")
    temperature: float = Field(1.0, description="sampling temperature of requests that name none")
    class_guidance: float | None = Field(None, description="frames requests also follow a class prior toward the "
                                                           "class recognised in the given frame, this strongly")
    unconditional: str = Field("dropped", description="how requests without a class are sampled: 'dropped' "
                                                      "(the prior's class-dropped path) or 'classes' (a class "
                                                      "drawn uniformly, then sampled)")
    precision: str | None = Field(None, description="what it is decoded in (float32, bfloat16 or int8), as the "
                                                    "worker that announced it last chose")
    worker_up: bool
    workers: int


class ModelList(BaseModel):
    models: list[ModelInfo]
    default_model: str | None = Field(None, description="the first model of the server's VGS_DEFAULT_MODEL")
    defaults: dict[Mode, str] = Field(default_factory=dict, description="the model a request that names none "
                                                                        "gets now, for each mode some model does")
