"""Models: what the workers serve."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..deps import GatewayDep, Who
from ..schemas import ModelInfo, ModelList

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList)
def list_models(who: Who, gw: GatewayDep) -> dict[str, Any]:
    """Every model a worker has announced, and whether a worker serving it is up now."""
    models = []
    for info in gw.catalog.models().values():
        # Fields a worker of an older version did not announce keep their defaults.
        shown = {k: info[k] for k in ModelInfo.model_fields if k in info and k not in ("worker_up", "workers")}
        models.append({**shown, "worker_up": info["workers_up"] > 0, "workers": info["workers_up"]})
    return {"models": models, "default_model": gw.settings.default_model}
