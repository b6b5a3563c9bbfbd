"""Serving commands: the worker, the gateway, `up` (everything on one machine), the client, key hashes."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_worker(args: argparse.Namespace) -> int:
    from jobs.settings import ServiceSettings
    from worker.main import run_worker

    _configure_logging()
    run_worker(ServiceSettings(), burst=args.burst)
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    _configure_logging()
    # Metrics of several uvicorn processes meet in one directory, named before prometheus_client loads.
    import tempfile

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="vgs-metrics-")
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):  # files of an earlier run would add to this one's counts
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    uvicorn.run("service.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level="warning", proxy_headers=True, log_config=None)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .up import up

    return up(args.host, args.port, args.redis_port, Path(args.data_dir), args.bundle or [])


def cmd_generate(args: argparse.Namespace) -> int:
    from .client import data_uri, generate

    request: dict = {"mode": args.mode, "num_samples": args.n}
    for key, value in (("model", args.model), ("temperature", args.temperature), ("top_k", args.top_k),
                       ("top_p", args.top_p), ("seed", args.seed), ("fps", args.fps), ("guidance", args.guidance),
                       ("num_frames", args.num_frames)):
        if value is not None:
            request[key] = value
    if args.label is not None:
        request["class_label"] = int(args.label) if args.label.lstrip("-").isdigit() else args.label
    if args.frames:
        request["cond_frames"] = data_uri(Path(args.frames))
    generate(args.url, request, Path(args.output), timeout_s=args.timeout, api_key=args.api_key)
    return 0


def cmd_hash_key(args: argparse.Namespace) -> int:
    from service.auth import hash_key

    print(hash_key(args.key))
    return 0


def _configure_logging() -> None:
    from jobs.logs import configure_logging

    configure_logging()


def _parser_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="serve generation jobs from Redis (settings: VGS_* environment variables)")
    p.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    p.set_defaults(func=cmd_worker)


def _parser_gateway(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="run the HTTP API (settings: VGS_* environment variables)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.set_defaults(func=cmd_gateway)


def _parser_up(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="Redis, one worker and the gateway together on this machine (Ctrl-C stops)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--redis-port", type=int, default=6380, help="port of the private redis-server (default 6380)")
    p.add_argument("--data-dir", default="data", help="Redis data and outputs (default ./data)")
    p.add_argument("--bundle", action="append",
                   help="bundle directory to serve (repeatable; requests that name no model get the first that "
                        "does their mode; default: VGS_BUNDLES, else the shipped weights/moving-digits and "
                        "weights/moving-digits-frames)")
    p.set_defaults(func=cmd_up)


def _parser_hash_key(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hash-key", help="print the sha256 of an API key, for VGS_API_KEYS")
    p.add_argument("key")
    p.set_defaults(func=cmd_hash_key)


def _parser_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="ask a running gateway for videos and download them",
                       description="Submit a job to a running gateway, wait for it and download its mp4s. Exit "
                                   "code 0 when they are written; 2, with one line saying why, when the gateway "
                                   "cannot be reached, refuses the request, or the job does not succeed.")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model")
    p.add_argument("--mode", choices=["unconditional", "class", "frames"], default="unconditional")
    p.add_argument("--label", help="class index or name (mode class)")
    p.add_argument("--frames", help="image, GIF or video file (mode frames)")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--num-frames", type=int, metavar="N",
                   help="frames of each video (default: the model's own length; up to its max_frames, see /v1/models)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the model's)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance scale for modes class and frames (default: the model's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--fps", type=float)
    p.add_argument("--api-key", help="API key, when the gateway requires one")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("-o", "--output", default="out.mp4")
    p.set_defaults(func=cmd_generate)


PARSERS = (_parser_worker, _parser_gateway, _parser_up, _parser_hash_key, _parser_generate)


def add_serving_commands(sub: argparse._SubParsersAction) -> None:
    for add_parser in PARSERS:
        add_parser(sub)
