"""Models a worker serves: loaded once from their bundles, and described for the gateway."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from jobs.settings import ServiceSettings
from models import VideoGPT, load_gpt

from . import metrics

log = logging.getLogger(__name__)
LONGEST_TIMES_NATIVE = 8  # the longest video by default: this many times a model's native length


def load_models(bundles: list[Path], device: str, precision: str = "float32") -> dict[str, VideoGPT]:
    """The priors of these bundles by model name, on device, decoding in `precision` (auto: the fastest
    meeting the fidelity goal, measured now); refuses what no API mode can serve."""
    models: dict[str, VideoGPT] = {}
    for bundle in bundles:
        started = time.time()
        gpt = load_gpt(bundle, device=device, precision=precision)
        c = gpt.config
        if c.class_conditional and c.frame_conditional and not c.conditions_optional:
            raise ValueError(f"{bundle}: this prior needs a class and frames together, which no API mode "
                             "asks for; serve priors that need one condition, or trained with condition dropout")
        name = gpt.info.name
        if name in models:
            raise ValueError(f"two bundles are named {name!r}: {bundle} and another; model names must differ")
        models[name] = gpt
        metrics.MODEL_LOAD.labels(name).set(time.time() - started)
        report = json.dumps(gpt.precision_report) if gpt.precision_report else "as asked"
        log.info("loaded %s from %s in %.2f s on %s; decoding in %s (VGS_PRECISION %s: %s)", name, bundle,
                 time.time() - started, device, gpt.decode_precision, precision, report, extra={"model": name})
    return models


def frames_per_step(gpt: VideoGPT) -> int:
    """Frames one latent time step decodes to: a video's length is a whole number of them."""
    return gpt.vqvae.config.downsample[0]


def max_frames(gpt: VideoGPT, setting: int | None) -> int:
    """The longest video a request may ask of this model: VGS_MAX_FRAMES (default 8x its native length) in
    whole latent time steps, never below the native length; a model of one latent time step makes only that."""
    native = gpt.vqvae.config.sequence_length
    if gpt.latent_shape[0] == 1:
        return native
    wanted = LONGEST_TIMES_NATIVE * native if setting is None else setting
    return max(native, wanted // frames_per_step(gpt) * frames_per_step(gpt))


def window_stride(gpt: VideoGPT, setting: int | None) -> int | None:
    """Latent time steps each later window of a long video adds (VGS_WINDOW_STRIDE, default half the model's
    t); None for a model of one latent time step, which makes no long videos. ValueError when too large."""
    t = gpt.latent_shape[0]
    if t == 1:
        return None
    stride = max(1, t // 2) if setting is None else setting
    if not 1 <= stride < t:
        raise ValueError(f"VGS_WINDOW_STRIDE {setting} is too large for model {gpt.info.name!r}: its windows are "
                         f"{t} latent time steps, so a window can add 1 to {t - 1} of them")
    return stride


def model_info(gpt: VideoGPT, settings: ServiceSettings) -> dict[str, Any]:
    """What the gateway validates requests against, published in Redis (lengths from the worker's settings)."""
    info, c, vq = gpt.info, gpt.config, gpt.vqvae.config
    class_names = info.class_names or ([str(i) for i in range(c.class_cond_dim)] if c.class_conditional else None)
    stride = window_stride(gpt, settings.window_stride)
    return {"name": info.name, "modes": c.modes, "class_names": class_names,
            "n_classes": c.class_cond_dim or 0, "n_cond_frames": c.n_cond_frames, "frames": vq.sequence_length,
            "frames_per_step": frames_per_step(gpt), "max_frames": max_frames(gpt, settings.max_frames),
            "window_stride_frames": None if stride is None else stride * frames_per_step(gpt),
            "resolution": vq.resolution, "fps": info.fps, "latent_shape": list(vq.latent_shape),
            "guidance": info.guidance, "guidance_supported": c.conditions_optional, "temperature": info.temperature,
            "class_guidance": gpt.class_guide.scale if gpt.class_guide else None,
            "unconditional": info.unconditional, "precision": getattr(gpt, "decode_precision", "float32")}
