"""inkloop entry point: `inkloop <command>` (console script) or `python app.py` (= `inkloop serve`).

Each area registers its own sub-commands (see `COMMAND_MODULES`); every command takes the common
flags --data-dir, --model, --profile, --device, --dtype, --threads, before or after its name.
Models load inside commands, never at import time.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = [
    "assistant.app.cli.serve",  # serve, suggest, status, rate
    "assistant.app.cli.reward",  # feedback import/export, rm train/score
    "assistant.app.cli.rl",  # rl train, simulate
    "assistant.app.cli.learn",  # learn, versions, export
    "assistant.app.cli.eval",  # eval, eval compare-rewards, eval sweep
]


MAX_THREADS = 1024


def thread_count(text: str) -> int:
    """An argparse type: a whole number of threads, 1 to MAX_THREADS."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
    if not 1 <= v <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_THREADS}, got {str(v)[:40]}")
    return v


def add_common_flags(p: argparse.ArgumentParser, given_only: bool) -> None:
    """The flags every command takes, defined once. The top-level parser holds their defaults; a
    sub-command's copy (given_only) sets a value only when the flag is written after it, so
    `inkloop --data-dir D eval` and `inkloop eval --data-dir D` mean the same."""
    from assistant.lm.config import default_data_dir

    def d(value):
        return argparse.SUPPRESS if given_only else value

    g = p.add_argument_group("common")
    g.add_argument("--data-dir", default=d(str(default_data_dir())),
                   help=f"database, versions, exports (default {default_data_dir()})")
    g.add_argument("--model", default=d(None), metavar="PATH",
                   help="local Hugging Face causal-LM directory (default: bundled SmolLM2-135M-Instruct)")
    g.add_argument("--profile", default=d("default"), help="profile whose data and policy to use (default default)")
    g.add_argument("--device", default=d("auto"), choices=["auto", "cpu", "cuda"], help="default auto")
    g.add_argument("--dtype", default=d("auto"), choices=["auto", "bfloat16", "float16", "float32"], help="default auto")
    g.add_argument("--threads", type=thread_count, default=d(None), help="torch threads for this process")
    g.add_argument("-v", "--verbose", action="store_true", default=d(False), help="debug logging")


class Parser(argparse.ArgumentParser):
    """argparse without prefix matching: `--k 2` is an error, not `--keywords 2` (every
    sub-command's parser is of this class: add_subparsers uses the parent parser's class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="inkloop", description="A writing assistant that learns from your ratings.")
    add_common_flags(parser, given_only=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parent = Parser(add_help=False)
    add_common_flags(parent, given_only=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, parent)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["serve", *argv]  # `python app.py [flags]` is `inkloop serve [flags]`
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from assistant.app.cli.common import command

    return command(args.func)(args)  # bad input: one clear line and exit code 2, never a traceback


if __name__ == "__main__":
    sys.exit(main())
