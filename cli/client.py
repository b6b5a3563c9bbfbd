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
HTTP_TIMEOUT_S = 30.0
POLL_S = 0.5
PROGRESS_EVERY_S = 5.0  # when stderr is not a terminal: a progress line this often at most, not one per poll


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


class ClientError(Exception):
    """What went wrong talking to the gateway, in one line: the CLI prints it and exits with code 2."""


def generate(url: str, request: dict[str, Any], output: Path, timeout_s: float = 600,
             api_key: str | None = None) -> list[Path]:
    """Submit, wait for a terminal state, write outputs (OUT.mp4, or OUT_0.mp4... for several)."""
    try:
        return _generate(url, request, output, timeout_s, api_key)
    except httpx.ConnectError as exc:
        raise ClientError(f"cannot reach the gateway at {url} ({_reason(exc)}): is it running (make run, or "
                          "videogpt-serve up)? Check --url") from None
    except httpx.TimeoutException:
        raise ClientError(f"the gateway at {url} did not answer within {HTTP_TIMEOUT_S:g} s: is it overloaded, "
                          "or is --url another server?") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ClientError(f"talking to the gateway at {url} failed: {_reason(exc)}") from None


def _generate(url: str, request: dict[str, Any], output: Path, timeout_s: float,
              api_key: str | None) -> list[Path]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=HTTP_TIMEOUT_S) as client:
        answer = client.post("/v1/generate", json=request)
        if answer.status_code != 202:
            raise ClientError(f"refused ({answer.status_code}): {_error_text(answer)}")
        job = _json(answer, url)
        job = _wait(client, job, url, timeout_s)
        if job["status"] != "succeeded":
            raise ClientError(f"job {job['id']} {job['status']}: {(job.get('error') or {}).get('message')}")
        paths = []
        for i, out in enumerate(job["outputs"]):
            path = output if len(job["outputs"]) == 1 else output.with_name(f"{output.stem}_{i}{output.suffix}")
            got = client.get(out["url"])
            if got.status_code != 200:
                raise ClientError(f"downloading {out['url']} failed ({got.status_code}): {_error_text(got)}")
            path.write_bytes(got.content)
            paths.append(path)
        metrics = job.get("metrics") or {}
        frames = job["outputs"][0].get("frames") if job["outputs"] else None
        print(f"wrote {', '.join(map(str, paths))} ({frames} frames each; sampling {metrics.get('sampling_seconds')} "
              f"s, {metrics.get('tokens_per_second')} tokens/s)")
        return paths


def _wait(client: httpx.Client, job: dict[str, Any], url: str, timeout_s: float) -> dict[str, Any]:
    """Poll the job until it is terminal, showing its progress on stderr: one line rewritten in place on a
    terminal, else a line when the status changes and every PROGRESS_EVERY_S seconds."""
    terminal = sys.stderr.isatty()
    deadline = time.monotonic() + timeout_s
    shown, shown_at = None, 0.0
    while job["status"] not in TERMINAL:
        if time.monotonic() > deadline:
            raise ClientError(f"job {job['id']} is still {job['status']} after {timeout_s:.0f} s")
        line = f"job {job['id']}: {job['status']} {job['progress'] * 100:5.1f}%"
        if terminal:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
        elif job["status"] != shown or time.monotonic() - shown_at >= PROGRESS_EVERY_S:
            print(line, file=sys.stderr, flush=True)
            shown, shown_at = job["status"], time.monotonic()
        time.sleep(POLL_S)
        answer = client.get(f"/v1/jobs/{job['id']}")
        if answer.status_code == 503:  # Redis away for a moment: keep waiting
            continue
        if answer.status_code != 200:
            raise ClientError(f"job {job['id']}: {answer.status_code}: {_error_text(answer)}")
        job = _json(answer, url)
    print(f"\rjob {job['id']}: {job['status']}" + " " * 10 if terminal else f"job {job['id']}: {job['status']}",
          file=sys.stderr)
    return job


def _json(answer: httpx.Response, url: str) -> dict[str, Any]:
    try:
        job = answer.json()
    except ValueError:
        job = None
    if not isinstance(job, dict) or "id" not in job or "status" not in job:
        raise ClientError(f"{url} answered {answer.status_code} with something other than a job: is --url a "
                          "videogpt-serve gateway?")
    return job


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _error_text(answer: httpx.Response) -> str:
    try:
        error = answer.json()["error"]
        return f"{error.get('field') + ': ' if error.get('field') else ''}{error['message']}"
    except (ValueError, KeyError, TypeError):
        return answer.text[:300]
