"""Turning a GenerateRequest into a job: checked against the model it names, frames decoded and bounded.

Everything that can be wrong with a request is found here, before anything is queued, and reported as an
ApiError naming the field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import re
from typing import Any

import numpy as np

from media import DecodeError, DecodeLimits, pad_frames, read_frames

from .schemas import MAX_SEED, GenerateRequest
from .settings import ServiceSettings
from .webhooks import WebhookRefused, check_webhook_url

DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                      re.ASCII)
FRAME_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/gif", "image/webp", "video/mp4", "video/webm",
               "video/quicktime", "application/octet-stream")


class ApiError(Exception):
    """An error the client can act on: HTTP status, a stable code, a message, and the field concerned."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers

    def body(self) -> dict[str, Any]:
        error = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error}


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, field)


def resolve_model(name: str | None, models: dict[str, dict], default: str | None, mode: str | None = None) -> dict:
    """The model a request names; with none, the first of: the configured default, a model a live worker
    serves, any model, taking models that do `mode` before those that do not."""
    if name is None:
        served = sorted(n for n, m in models.items() if m.get("workers_up"))
        ranked = ([default] if default in models else []) + served + sorted(models)
        doing = [n for n in ranked if mode in models[n].get("modes", [])]
        name = (doing or ranked or [None])[0]
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
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        if value not in names:
            shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise invalid("class_label", f"unknown class name {value!r} for model {model['name']!r}; "
                                         f"its classes are: {shown}")
        return names.index(value)
    index = int(value)
    if not 0 <= index < count:
        raise invalid("class_label", f"class_label {index} is out of range: model {model['name']!r} has classes "
                                     f"0-{count - 1}")
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


def frames_to_bytes(frames: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(frames, dtype=np.uint8), allow_pickle=False)
    return buffer.getvalue()


def frames_from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


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
                     settings: ServiceSettings) -> tuple[dict[str, Any], bytes | None]:
    """The job's request record (every setting explicit, a seed drawn when none was given) and its frames."""
    model = resolve_model(req.model, models, settings.default_model, req.mode)
    if req.mode not in model["modes"]:
        raise invalid("mode", f"model {model['name']!r} does not do mode {req.mode!r}; its modes are "
                              f"{', '.join(model['modes'])}")
    if req.num_samples > settings.max_samples:
        raise invalid("num_samples", f"num_samples {req.num_samples} is over this server's limit of "
                                     f"{settings.max_samples}")
    record: dict[str, Any] = {
        "model": model["name"], "mode": req.mode, "num_samples": req.num_samples,
        "temperature": req.temperature, "top_k": req.top_k, "top_p": req.top_p,
        "seed": req.seed if req.seed is not None else int.from_bytes(os.urandom(8), "little") & MAX_SEED,
        "fps": req.fps or model["fps"], "class_label": None, "class_name": None, "cond_frames": None,
        "guidance": request_guidance(req, model),
    }
    if req.mode == "class":
        if req.class_label is None:
            raise invalid("class_label", "mode 'class' needs class_label (an index or a class name)")
        record["class_label"] = class_index(req.class_label, model)
        names = model.get("class_names")
        record["class_name"] = names[record["class_label"]] if names else None
    elif req.class_label is not None:
        raise invalid("class_label", f"class_label is only for mode 'class', not {req.mode!r}")
    if req.webhook is not None:
        try:
            check_webhook_url(req.webhook, settings.webhook_allow)
        except WebhookRefused as exc:
            raise invalid("webhook", str(exc)) from None
        record["webhook"] = req.webhook
        record["webhook_events"] = sorted(set(req.webhook_events))
    frames = None
    if req.mode == "frames":
        if not req.cond_frames:
            raise invalid("cond_frames", "mode 'frames' needs cond_frames (a data URI of an image or video)")
        record["cond_frames"], frames = decode_cond_frames(req.cond_frames, model, settings)
    elif req.cond_frames is not None:
        raise invalid("cond_frames", f"cond_frames is only for mode 'frames', not {req.mode!r}")
    return record, frames


def request_guidance(req: GenerateRequest, model: dict) -> float:
    """The guidance scale the job samples with: the request's, else the model's default (1 = none)."""
    if req.guidance is None:
        return 1.0 if req.mode == "unconditional" else float(model.get("guidance", 1.0))
    if req.mode == "unconditional":
        raise invalid("guidance", "guidance steers towards a class or frames: leave it out in mode 'unconditional'")
    if req.guidance != 1 and not model.get("guidance_supported"):
        raise invalid("guidance", f"model {model['name']!r} was not trained with condition dropout, so it cannot "
                                  "be guided: leave guidance out or set it to 1")
    return req.guidance


def body_fingerprint(req: GenerateRequest) -> str:
    """A hash of the request as sent (before defaults and the drawn seed): what Idempotency-Key compares."""
    canonical = json.dumps(req.model_dump(exclude_unset=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
