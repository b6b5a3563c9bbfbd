"""Turning a GenerateRequest into a job: checked against the model it names, frames decoded and bounded.

Everything that can be wrong with a request is found here, before anything is queued, and reported as an
ApiError naming the field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re

from jobs.payload import frames_to_bytes
from jobs.request import JobRequest
from jobs.settings import ServiceSettings
from jobs.webhooks import WebhookRefused, check_webhook_url
from media import DecodeError, DecodeLimits, pad_frames, read_frames
from models.limits import MAX_SEED, default_guidance, guided_unconditional

from .errors import ApiError, clip, invalid
from .schemas import GenerateRequest

DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                      re.ASCII)
FRAME_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/gif", "image/webp", "video/mp4", "video/webm",
               "video/quicktime", "application/octet-stream")


def default_models(setting: str | None) -> list[str]:
    """The names in VGS_DEFAULT_MODEL (comma-separated), in order."""
    return [name.strip() for name in (setting or "").split(",") if name.strip()]


def default_for(mode: str | None, models: dict[str, dict], default: str | None) -> str | None:
    """The model a request without one gets: the first of VGS_DEFAULT_MODEL's models that does `mode`, else
    the first by name that a live worker serves and does it, else the first by name that does it; with
    none doing it, the first of those lists (the request is then refused for its mode)."""
    served = sorted(n for n, m in models.items() if m.get("workers_up"))
    ranked = [n for n in default_models(default) if n in models] + served + sorted(models)
    doing = [n for n in ranked if mode in models[n].get("modes", [])]
    return (doing or ranked or [None])[0]


def resolve_model(name: str | None, models: dict[str, dict], default: str | None, mode: str | None = None) -> dict:
    """The model a request names, or the default for its mode (default_for)."""
    if name is None:
        name = default_for(mode, models, default)
        if name is None:
            raise ApiError(503, "no_models", "no model is available yet: no worker has announced one",
                           headers={"Retry-After": "5"})
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise invalid("model", f"unknown model {name!r}; available: {known}")
    return models[name]


def class_index(value: int | str, model: dict) -> int:
    names = model.get("class_names") or []
    count = len(names) or model.get("n_classes") or 0
    if isinstance(value, str) and not (value.lstrip("-").isdigit() and len(value) <= 20):
        if value not in names:
            shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise invalid("class_label", f"unknown class name {clip(repr(value))} for model {model['name']!r}; "
                                         f"its classes are: {shown}")
        return names.index(value)
    index = int(value)
    if not 0 <= index < count:
        raise invalid("class_label", f"class_label {clip(str(index))} is out of range: model {model['name']!r} "
                                     f"has classes 0-{count - 1}")
    return index


def parse_data_uri(value: str, max_bytes: int) -> tuple[str, bytes]:
    """(media type, payload) of a data URI; ApiError (413 when too large, 422 when malformed)."""
    match = DATA_URI.match(value[:512])
    if not match:
        raise invalid("cond_frames", "cond_frames must be a data URI: data:<type>;base64,<data>")
    mime = (match["mime"] or "application/octet-stream").lower()
    if mime not in FRAME_TYPES:
        raise invalid("cond_frames", f"cond_frames of type {mime} are not supported; send one of "
                                     f"{', '.join(t for t in FRAME_TYPES if t != 'application/octet-stream')}")
    payload = value[match.end():]
    if not match["b64"]:
        raise invalid("cond_frames", "cond_frames must be base64-encoded (data:<type>;base64,...)")
    if len(payload) * 3 // 4 > max_bytes:
        raise ApiError(413, "too_large", f"cond_frames holds about {len(payload) * 3 // 4} bytes; the limit is "
                                         f"{max_bytes}", "cond_frames")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("cond_frames", "cond_frames is not valid base64") from None
    if not data:
        raise invalid("cond_frames", "cond_frames is empty")
    return mime, data


def decode_cond_frames(value: str, model: dict, settings: ServiceSettings) -> tuple[dict, bytes]:
    """Summary of the upload and the model's n_cond_frames frames (npy bytes, R x R)."""
    mime, data = parse_data_uri(value, settings.max_cond_frames_bytes)
    count = max(1, int(model["n_cond_frames"]))
    limits = DecodeLimits(max_pixels=settings.max_decoded_pixels, timeout_s=settings.decode_timeout_s)
    try:
        frames = read_frames(data, min(count, settings.max_decoded_frames), model["resolution"], limits)
    except DecodeError as exc:
        status, code = (413, "too_large") if exc.too_large else (422, "invalid_request")
        raise ApiError(status, code, f"cond_frames: {exc}", "cond_frames") from None
    summary = {"content_type": mime, "bytes": len(data), "frames_used": count}
    return summary, frames_to_bytes(pad_frames(frames, count))


def validate_request(req: GenerateRequest, models: dict[str, dict],
                     settings: ServiceSettings) -> tuple[JobRequest, bytes | None]:
    """The job's request (every setting explicit, a seed drawn when none was given) and its frames."""
    model = resolve_model(req.model, models, settings.default_model, req.mode)
    if req.mode not in model["modes"]:
        raise invalid("mode", f"model {model['name']!r} does not do mode {req.mode!r}; its modes are "
                              f"{', '.join(model['modes'])}")
    if req.num_samples > settings.max_samples:
        raise invalid("num_samples", f"num_samples {req.num_samples} is over this server's limit of "
                                     f"{settings.max_samples}")
    label, name = request_class(req, model)
    num_frames = request_length(req, model)
    summary, frames = request_frames(req, model, settings)
    webhook = request_webhook(req, settings)
    request = JobRequest(
        model=model["name"], mode=req.mode, num_samples=req.num_samples,
        seed=req.seed if req.seed is not None else int.from_bytes(os.urandom(8), "little") & MAX_SEED,
        fps=req.fps or model["fps"], temperature=request_temperature(req, model), top_k=req.top_k, top_p=req.top_p,
        guidance=request_guidance(req, model), num_frames=num_frames, class_label=label, class_name=name,
        cond_frames=summary, webhook=webhook,
        webhook_events=tuple(sorted(set(req.webhook_events))) if webhook else ())
    return request, frames


def request_class(req: GenerateRequest, model: dict) -> tuple[int | None, str | None]:
    """(class index, class name) of a class request; (None, None) for the other modes."""
    if req.mode != "class":
        if req.class_label is not None:
            raise invalid("class_label", f"class_label is only for mode 'class', not {req.mode!r}")
        return None, None
    if req.class_label is None:
        raise invalid("class_label", "mode 'class' needs class_label (an index or a class name)")
    label = class_index(req.class_label, model)
    names = model.get("class_names")
    return label, names[label] if names else None


def video_lengths(model: dict) -> tuple[int, int, int]:
    """(native, frames per latent time step, longest) frames of a model's videos, as its workers announce
    them; a worker of a version without long videos announced the native length only."""
    native = int(model["frames"])
    per_step = int(model.get("frames_per_step") or native // max(1, int(model["latent_shape"][0])))
    return native, per_step, int(model.get("max_frames") or native)


def request_length(req: GenerateRequest, model: dict) -> int:
    """Frames of each of the job's videos: the request's num_frames, else the model's native length."""
    native, per_step, longest = video_lengths(model)
    if req.num_frames is None:
        return native
    if req.num_frames < per_step or req.num_frames > longest or req.num_frames % per_step:
        allowed = f"be {native}" if longest == per_step else \
            f"be a multiple of {per_step} from {per_step} to {longest}"
        raise invalid("num_frames", f"num_frames must {allowed} for model {model['name']!r} (native length "
                                    f"{native}), not {clip(str(req.num_frames))}")
    return req.num_frames


def request_frames(req: GenerateRequest, model: dict, settings: ServiceSettings) -> tuple[dict | None, bytes | None]:
    """(summary of the upload, frames as npy bytes) of a frames request; (None, None) for the other modes."""
    if req.mode != "frames":
        if req.cond_frames is not None:
            raise invalid("cond_frames", f"cond_frames is only for mode 'frames', not {req.mode!r}")
        return None, None
    if not req.cond_frames:
        raise invalid("cond_frames", "mode 'frames' needs cond_frames (a data URI of an image or video)")
    return decode_cond_frames(req.cond_frames, model, settings)


def request_webhook(req: GenerateRequest, settings: ServiceSettings) -> str | None:
    if req.webhook is None:
        return None
    try:
        check_webhook_url(req.webhook, settings.webhook_allow)
    except WebhookRefused as exc:
        raise invalid("webhook", str(exc)) from None
    return req.webhook


def request_temperature(req: GenerateRequest, model: dict) -> float:
    """The temperature the job samples with: the request's, else the model's default (workers announce it)."""
    return req.temperature if req.temperature is not None else float(model.get("temperature", 1.0))


def request_guidance(req: GenerateRequest, model: dict) -> float:
    """The guidance scale the job samples with: the request's, else the model's default (1 = none)."""
    unconditional = model.get("unconditional", "dropped")
    if req.guidance is None:
        return default_guidance(req.mode, model.get("guidance", 1.0), unconditional)
    if req.mode == "unconditional" and not guided_unconditional(unconditional):
        raise invalid("guidance", "guidance steers towards a class or frames, and this model samples unconditional "
                                  "requests without one: leave it out in mode 'unconditional'")
    if req.guidance != 1 and not model.get("guidance_supported"):
        raise invalid("guidance", f"model {model['name']!r} was not trained with condition dropout, so it cannot "
                                  "be guided: leave guidance out or set it to 1")
    return req.guidance


def body_fingerprint(req: GenerateRequest) -> str:
    """A hash of the request as sent (before defaults and the drawn seed): what Idempotency-Key compares."""
    canonical = json.dumps(req.model_dump(exclude_unset=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
