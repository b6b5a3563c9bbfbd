"""`videogpt-serve`: one command line with a subcommand per job (model commands, serving commands)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .client import ClientError
from .model_commands import add_model_commands
from .serving_commands import add_serving_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videogpt-serve", description="Generate short videos with VideoGPT models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_model_commands(sub)
    add_serving_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ClientError as exc:  # the gateway is unreachable, refused the request, or the job failed
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"error: '{args.command}' needs the model dependencies ({exc.name} is missing): "
              "pip install 'videogpt-serve[worker]'", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:  # ModelError is a ValueError: a message for the user, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
