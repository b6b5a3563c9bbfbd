"""Models a worker serves: loaded once from their bundles, and described for the gateway."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from models import VideoGPT, load_gpt

from . import metrics

log = logging.getLogger(__name__)


def load_models(bundles: list[Path], device: str) -> dict[str, VideoGPT]:
    """The priors of these bundles by model name, on device; refuses what no API mode can serve."""
    models: dict[str, VideoGPT] = {}
    for bundle in bundles:
        started = time.time()
        gpt = load_gpt(bundle, device=device)
        c = gpt.config
        if c.class_conditional and c.frame_conditional and not c.conditions_optional:
            raise ValueError(f"{bundle}: this prior needs a class and frames together, which no API mode "
                             "asks for; serve priors that need one condition, or trained with condition dropout")
        name = gpt.info.name
        if name in models:
            raise ValueError(f"two bundles are named {name!r}: {bundle} and another; model names must differ")
        models[name] = gpt
        metrics.MODEL_LOAD.labels(name).set(time.time() - started)
        log.info("loaded %s from %s in %.2f s on %s", name, bundle, time.time() - started, device)
    return models


def model_info(gpt: VideoGPT) -> dict[str, Any]:
    """What the gateway validates requests against, published in Redis."""
    info, c, vq = gpt.info, gpt.config, gpt.vqvae.config
    class_names = info.class_names or ([str(i) for i in range(c.class_cond_dim)] if c.class_conditional else None)
    return {"name": info.name, "modes": c.modes, "class_names": class_names,
            "n_classes": c.class_cond_dim or 0, "n_cond_frames": c.n_cond_frames, "frames": vq.sequence_length,
            "resolution": vq.resolution, "fps": info.fps, "latent_shape": list(vq.latent_shape),
            "guidance": info.guidance, "guidance_supported": c.conditions_optional,
            "class_guidance": gpt.class_guide.scale if gpt.class_guide else None,
            "unconditional": info.unconditional}
