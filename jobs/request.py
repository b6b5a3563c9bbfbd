"""The job's request as it crosses Redis: built by the gateway's validation, read by the worker.

Every setting is explicit here (defaults resolved, a seed drawn when none was given), so a worker never
guesses; `from_dict` reads records of older versions, whose missing settings meant their defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

MODES = ("unconditional", "class", "frames")


@dataclass(frozen=True)
class JobRequest:
    model: str
    mode: str
    num_samples: int
    seed: int
    fps: float
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance: float = 1.0
    # Frames of each video (the gateway always sets it; None, in older records: the model's own length);
    # longer than the model's own length, a window slides over time.
    num_frames: int | None = None
    class_label: int | None = None
    class_name: str | None = None
    # What was uploaded (content_type, bytes, frames_used); the frames themselves travel beside the record.
    cond_frames: dict[str, Any] | None = None
    webhook: str | None = None
    webhook_events: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The request as the job record (and the API) show it; webhook fields only when there is one."""
        data = dataclasses.asdict(self)
        data["webhook_events"] = list(self.webhook_events)
        if self.webhook is None:
            del data["webhook"], data["webhook_events"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRequest:
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        known["webhook_events"] = tuple(known.get("webhook_events") or ())
        return cls(**known)

    @property
    def has_frames(self) -> bool:
        return self.cond_frames is not None
