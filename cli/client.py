"""`videogpt-serve generate`: the client side: submit a job to a running gateway, wait, download the mp4s."""

from __future__ import annotations

import base64
import mimetypes
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "canceled")


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def generate(url: str, request: dict[str, Any], output: Path, timeout_s: float = 600,
             api_key: str | None = None) -> list[Path]:
    """Submit, wait for a terminal state, write outputs (OUT.mp4, or OUT_0.mp4... for several)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        answer = client.post("/v1/generate", json=request)
        if answer.status_code != 202:
            raise SystemExit(f"refused ({answer.status_code}): {_error_text(answer)}")
        job = answer.json()
        deadline = time.monotonic() + timeout_s
        while job["status"] not in TERMINAL:
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job['id']} is still {job['status']} after {timeout_s:.0f} s")
            print(f"\rjob {job['id']}: {job['status']} {job['progress'] * 100:5.1f}%", end="", file=sys.stderr)
            time.sleep(0.5)
            job = client.get(f"/v1/jobs/{job['id']}").json()
        print(f"\rjob {job['id']}: {job['status']}" + " " * 10, file=sys.stderr)
        if job["status"] != "succeeded":
            raise SystemExit(f"job {job['id']} {job['status']}: {(job.get('error') or {}).get('message')}")
        paths = []
        for i, out in enumerate(job["outputs"]):
            path = output if len(job["outputs"]) == 1 else output.with_name(f"{output.stem}_{i}{output.suffix}")
            got = client.get(out["url"])
            got.raise_for_status()
            path.write_bytes(got.content)
            paths.append(path)
        metrics = job.get("metrics") or {}
        print(f"wrote {', '.join(map(str, paths))} (sampling {metrics.get('sampling_seconds')} s, "
              f"{metrics.get('tokens_per_second')} tokens/s)")
        return paths


def _error_text(answer: httpx.Response) -> str:
    try:
        error = answer.json()["error"]
        return f"{error.get('field') + ': ' if error.get('field') else ''}{error['message']}"
    except (ValueError, KeyError, TypeError):
        return answer.text[:300]
