"""A job this worker has claimed: its typed request, its conditioning frames, and its timings so far."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import torch

from jobs.payload import frames_from_bytes
from jobs.request import JobRequest
from jobs.store import JobStore
from models.data.frames import frames_to_tensor


@dataclass
class ClaimedJob:
    id: str
    request: JobRequest
    created_at: float
    claimed_at: float = field(default_factory=time.time)
    frames: torch.Tensor | None = None  # (3, n_cond_frames, R, R)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.request.num_samples


def _iso_to_epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def load_claimed(store: JobStore, record: dict[str, Any]) -> ClaimedJob:
    """The claimed job of a record, with its frames read from Redis (ValueError once they have expired)."""
    job = ClaimedJob(record["id"], JobRequest.from_dict(record["request"]), _iso_to_epoch(record["created_at"]))
    if job.request.has_frames:
        data = store.cond_frames(job.id)
        if data is None:
            raise ValueError(f"job {job.id}: its conditioning frames have expired")
        job.frames = frames_to_tensor(frames_from_bytes(data))
    return job
