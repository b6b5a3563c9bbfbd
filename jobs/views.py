"""A job record as the API (and webhooks) show it."""

from __future__ import annotations

from typing import Any

from .storage import Storage

SHOWN = ("id", "model", "status", "progress", "created_at", "started_at", "finished_at", "request", "error")


def job_view(record: dict[str, Any], storage: Storage, url_ttl_s: int) -> dict[str, Any]:
    """The public fields of a job; output keys become fresh signed URLs."""
    outputs = []
    for out in record.get("outputs") or []:
        shown = {k: v for k, v in out.items() if k != "key"}
        shown["url"] = storage.url(out["key"], url_ttl_s)
        outputs.append(shown)
    view = {k: record.get(k) or None for k in SHOWN}
    view["progress"] = record.get("progress", 0.0)
    view["outputs"] = outputs
    view["metrics"] = record.get("metrics") or {}
    view["attempts"] = record.get("attempts") or 0
    # A running job asked to cancel stays `running` until its worker stops it (within a second).
    view["cancel_requested"] = bool(record.get("cancel")) or record.get("status") == "canceled"
    return view
