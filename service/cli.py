"""`videogpt-serve`: one command line with a subcommand per job.

Subcommands that need torch import it when they run, so the gateway (which has no torch) can share the CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence


def _class_names(value: str | None) -> list[str] | None:
    """Class names from a comma-separated list, or from a file (one name per line) given as @path."""
    if value is None:
        return None
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    return [name.strip() for name in value.split(",") if name.strip()]


def cmd_convert(args: argparse.Namespace) -> int:
    from models import convert_official_checkpoint, read_bundle_config

    out = convert_official_checkpoint(args.checkpoint, args.out_dir, name=args.name, fps=args.fps,
                                      class_names=_class_names(args.class_names))
    info, vq, gpt = read_bundle_config(out)
    print(f"wrote {info.kind} bundle '{info.name}' to {out}: latent {'x'.join(map(str, vq.latent_shape))}, "
          f"{vq.n_codes} codes" + (f", {gpt.layers} layers, {gpt.attn_type} attention" if gpt else ""))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from models import read_bundle_config

    info, vq, gpt = read_bundle_config(args.bundle)
    summary = {"name": info.name, "kind": info.kind, "fps": info.fps, "class_names": info.class_names,
               "latent_shape": list(vq.latent_shape), "vqvae": vq.to_dict(), "gpt": gpt.to_dict() if gpt else None}
    print(json.dumps(summary, indent=2))
    return 0


def _class_label(value: str, class_names: list[str] | None) -> int:
    """A class given by index or by name."""
    if class_names and value in class_names:
        return class_names.index(value)
    try:
        return int(value)
    except ValueError:
        known = f" (known: {', '.join(class_names)})" if class_names else ""
        raise ValueError(f"--label {value!r} is neither a class index nor a class name{known}") from None


def cmd_sample(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from models import load_gpt, sample
    from worker.video import frames_to_model_input, read_frames, tile, to_uint8_frames, write_mp4

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpt = load_gpt(args.bundle, device=device)
    if args.dtype != "float32":
        gpt = gpt.to(getattr(torch, args.dtype))
    info, c = gpt.info, gpt.config
    labels = None
    if args.label is not None:
        labels = [_class_label(args.label, info.class_names)] * args.n
    frames = None
    if args.frames:
        clip = frames_to_model_input(read_frames(args.frames, c.n_cond_frames or 1), c.n_cond_frames,
                                     gpt.vqvae.config.resolution)
        frames = clip.unsqueeze(0).expand(args.n, -1, -1, -1, -1).to(device)
    start = time.perf_counter()
    shown = [0.0]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - shown[0] > 2 or done == total:
            shown[0] = time.perf_counter()
            print(f"\r{done}/{total} steps", end="\n" if done == total else "", file=sys.stderr, flush=True)

    codes = sample(gpt, args.n, class_labels=labels, cond_frames=frames, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed, progress=progress)
    sampled = time.perf_counter()
    with torch.no_grad():
        videos = gpt.vqvae.decode(codes).float()
    clips = np.stack([to_uint8_frames(v) for v in videos])
    fps = args.fps or info.fps
    out = Path(args.output)
    if args.per_sample:
        paths = [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(args.n)]
        for path, clip in zip(paths, clips):
            write_mp4(clip, path, fps, scale=args.scale)
    else:
        paths = [out]
        write_mp4(tile(clips), out, fps, scale=args.scale)
    steps = codes[0].numel()
    elapsed = sampled - start
    print(f"wrote {', '.join(map(str, paths))}: {args.n} x {steps} tokens in {elapsed:.1f} s "
          f"({args.n * steps / elapsed:.0f} tokens/s, {elapsed / steps * 1000:.2f} ms per step) on {device}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videogpt-serve", description="Generate short videos with VideoGPT models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="convert an official VideoGPT .ckpt (VQ-VAE or GPT) into a bundle",
                       description="Read an official VideoGPT Lightning checkpoint without running code from it "
                                   "and write a bundle directory (config.json + safetensors).")
    p.add_argument("checkpoint", help="the .ckpt file")
    p.add_argument("out_dir", help="bundle directory to write")
    p.add_argument("--name", help="model name (default: the checkpoint's file name)")
    p.add_argument("--fps", type=float, default=8.0, help="frames per second of the model's videos (default 8)")
    p.add_argument("--class-names", help="class names, comma-separated or @file with one per line")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("sample", help="generate videos from a GPT bundle into an mp4",
                       description="Sample codes with the KV-cached sampler and decode them into an mp4 "
                                   "(a grid of all samples, or one file per sample).")
    p.add_argument("bundle", help="GPT bundle directory")
    p.add_argument("--n", type=int, default=1, help="number of samples (default 1)")
    p.add_argument("--label", help="class index or name (class-conditional models)")
    p.add_argument("--frames", help="image, GIF or video whose first frames condition the model")
    p.add_argument("--seed", type=int, help="seed: the same seed and settings give the same videos")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("-o", "--output", default="sample.mp4", help="output mp4 (default sample.mp4)")
    p.add_argument("--per-sample", action="store_true", help="one file per sample: OUT_0.mp4, OUT_1.mp4, ...")
    p.add_argument("--fps", type=float, help="frames per second (default: the bundle's)")
    p.add_argument("--scale", type=int, default=4, help="integer nearest-neighbour upscaling (default 4)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("info", help="print a bundle's settings")
    p.add_argument("bundle", help="bundle directory")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ImportError as exc:
        print(f"error: '{args.command}' needs the model dependencies ({exc.name} is missing): "
              "pip install 'videogpt-serve[worker]'", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:  # ModelError is a ValueError: a message for the user, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
