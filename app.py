"""inkloop entry point: `inkloop <command>` (console script) or `python app.py` (= `inkloop serve`).

Each area registers its own sub-commands (see `COMMAND_MODULES`); every command gets the common
flags --data-dir, --model, --profile, --device, --dtype. Models load inside commands, never at
import time.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = [
    "assistant.app.cli.common",  # serve, suggest, status, styles, library
    "assistant.app.cli.reward",  # feedback import/export, rm train/score
    "assistant.app.cli.rl",  # rl train, simulate
    "assistant.app.cli.learn",  # learn, versions, export
    "assistant.app.cli.eval",  # eval, eval compare-rewards, eval sweep
]


def common_flags() -> argparse.ArgumentParser:
    from assistant.lm.config import default_data_dir

    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common")
    g.add_argument("--data-dir", default=str(default_data_dir()), help="database, versions, exports (default %(default)s)")
    g.add_argument("--model", default=None, metavar="PATH",
                   help="local Hugging Face causal-LM directory (default: bundled SmolLM2-135M-Instruct)")
    g.add_argument("--profile", default="default", help="profile whose data and policy to use (default %(default)s)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default %(default)s")
    g.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"], help="default %(default)s")
    g.add_argument("--threads", type=int, default=None, help="torch threads for this process")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inkloop", description="A writing assistant that learns from your ratings.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parent = common_flags()
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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
