"""Models: what the workers serve."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..deps import GatewayDep, Who
from ..requests import default_for, default_models, video_lengths
from ..schemas import MODES, ModelInfo, ModelList

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList)
def list_models(who: Who, gw: GatewayDep) -> dict[str, Any]:
    """Every model a worker has announced, and whether a worker serving it is up now."""
    models = []
    known = gw.catalog.models()
    for info in known.values():
        # Fields a worker of an older version did not announce keep their defaults.
        shown = {k: info[k] for k in ModelInfo.model_fields if k in info and k not in ("worker_up", "workers")}
        _, shown["frames_per_step"], shown["max_frames"] = video_lengths(info)  # what requests are checked against
        models.append({**shown, "worker_up": info["workers_up"] > 0, "workers": info["workers_up"]})
    defaults = {mode: default_for(mode, known, gw.settings.default_model) for mode in MODES}
    return {"models": models, "default_model": (default_models(gw.settings.default_model) or [None])[0],
            "defaults": {mode: name for mode, name in defaults.items()
                         if name is not None and mode in known[name].get("modes", [])}}
