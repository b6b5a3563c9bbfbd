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
