"""CLI: `inkloop feedback import|export`, `inkloop rm train|score`.

- ``feedback import FILE [--format auto|preference|ratings|unpaired]``: validate the whole file,
  then write it into the store in short transactions of whole prompts (source "import"; live
  ratings interleave; run again after an interruption, it writes only what is missing); a
  malformed file is rejected with its line numbers and nothing is written.
- ``feedback export --format preference|unpaired|ratings --out FILE``: the store's feedback as
  TRL-style JSONL (loads with ``datasets.load_dataset("json", data_files=FILE)``).
- ``rm train [--from FILE ...] [--eval FILE] [--eval-frac 0.2] [--seed 0] [--json]
  [--rm-backbone embedder|lm]``: train on the profile's feedback plus the files, evaluate on
  ``--eval`` (or a held-out split by request/prompt), print the metrics, record the version.
- ``rm score --context TEXT --text TEXT [--json]``: the live reward model's reward.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from assistant.app.cli.common import (
    data_dir,
    fail,
    model_settings,
    open_store,
    say,
)
from assistant.app.cli.flags import add_flags, from_args, validated
from reward.config import RewardTrainConfig


def _load_embedder(args: argparse.Namespace):
    from assistant.lm.models import load_embedder

    return load_embedder(model_settings(args))


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(int(args.threads))


# ----------------------------------------------------------------------------- feedback import / export
def cmd_feedback_import(args: argparse.Namespace) -> int:
    from storage.jsonl import DatasetError, import_into_store, parse_file

    try:
        parsed = parse_file(args.file, args.format)  # the whole file, before the store is touched
    except (DatasetError, FileNotFoundError) as e:
        return fail(str(e))
    store = open_store(args)
    try:
        summary = import_into_store(store, parsed, args.profile)
    except DatasetError as e:
        return fail(str(e))
    finally:
        store.close()
    out = {"file": str(args.file), "format": parsed.format, **summary}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"imported {summary['records']} {parsed.format} records from {args.file}: "
              f"{summary['requests']} requests, {summary['feedback']} feedback rows (source=import)")
    return 0


def cmd_feedback_export(args: argparse.Namespace) -> int:
    from reward.datasets import export_feedback
    from storage.artifacts import overwrite_refusal

    store = open_store(args)
    try:
        if (refusal := overwrite_refusal(store, args.out)) is not None:  # e.g. --out <data-dir>/inkloop.db
            return fail(refusal)
        if args.out.is_dir():
            return fail(f"{args.out} is a directory; give the path of the file to write")
        try:
            n = export_feedback(store, args.format, args.out, args.profile)
        except OSError as e:
            return fail(f"cannot write {args.out}: {e.strerror or e}")
    finally:
        store.close()
    if args.json:
        print(json.dumps({"out": str(args.out), "format": args.format, "rows": n}))
    else:
        print(f"wrote {n} {args.format} rows to {args.out}")
    return 0


# ----------------------------------------------------------------------------- rm train / score
def _lm_pair(args: argparse.Namespace):
    from assistant.lm.models import load_lm

    lm = load_lm(model_settings(args), progress=say)
    return lm.model, lm.tokenizer


def cmd_rm_train(args: argparse.Namespace) -> int:
    from reward.datasets import PairStats, load_reward_data
    from reward.train import save_reward_version, train_from_store
    from storage.jsonl import DatasetError

    _set_threads(args)
    try:
        stats = PairStats()
        extra = load_reward_data(args.from_files, stats=stats) if args.from_files else None
        held = load_reward_data(args.eval) if args.eval else None
    except (DatasetError, FileNotFoundError) as e:
        print(f"inkloop: error: {e}", file=sys.stderr)
        return 2
    if args.from_files:
        say(f"--from: {stats.describe()}")
    cfg = validated(from_args(RewardTrainConfig, args))
    store = open_store(args)
    try:
        embedder = _load_embedder(args) if cfg.backbone == "embedder" else None
        lm = _lm_pair(args) if cfg.backbone == "lm" else None
        factory = (lambda: _lm_pair(args)) if cfg.backbone == "lm" else None
        try:
            model, metrics = train_from_store(store, args.profile, embedder, cfg, extra=extra, eval=held, lm=lm,
                                              lm_factory=factory)
        except ValueError as e:
            print(f"inkloop: error: {e}", file=sys.stderr)
            return 2
        version = save_reward_version(store, data_dir(args), args.profile, model, metrics, cfg,
                                      publish=not args.candidate)
    finally:
        store.close()
    clean = {k: (round(v, 4) if v == v else None) for k, v in metrics.items()}
    out = {"version": version.id, "status": version.status, "path": version.path, "metrics": clean}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(json.dumps(clean, indent=2))
        print(f"reward model version {version.id} ({version.status}) at {version.path}")
    return 0


def cmd_rm_score(args: argparse.Namespace) -> int:
    from reward.train import load_live_reward_model

    _set_threads(args)
    store = open_store(args)
    try:
        v = store.live_version(args.profile, "reward")
        if v is None:
            print("inkloop: error: no reward model yet for this profile; run `inkloop rm train` first",
                  file=sys.stderr)
            return 2
        backbone = json.loads((Path(v.path) / "reward_config.json").read_text()).get("backbone", "embedder")
        embedder = _load_embedder(args) if backbone != "lm" else None  # embedder heads and their ensembles
        lm = _lm_pair(args) if backbone == "lm" else None
        rm = load_live_reward_model(store, args.profile, embedder, lm)
        if rm is None:
            print(f"inkloop: error: reward version {v.id} has no files at {v.path}", file=sys.stderr)
            return 2
        raw = float(rm.score([args.context], [args.text])[0])
        norm = float(rm.score([args.context], [args.text], normalize=True)[0])
    finally:
        store.close()
    if args.json:
        print(json.dumps({"version": v.id, "reward": raw, "normalized": norm}))
    else:
        print(f"reward {raw:.4f} (normalized {norm:+.3f}) from reward model version {v.id}")
    return 0


# ----------------------------------------------------------------------------- registration
def register(sub, parent) -> None:
    fb = sub.add_parser("feedback", help="import / export feedback as TRL-style JSONL")
    fsub = fb.add_subparsers(dest="feedback_command", metavar="ACTION")
    fsub.required = True

    p = fsub.add_parser("import", parents=[parent], help="import a JSONL file of preferences, ratings or labels")
    p.add_argument("file", type=Path)
    p.add_argument("--format", default="auto", choices=["auto", "preference", "ratings", "unpaired"])
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_feedback_import)

    p = fsub.add_parser("export", parents=[parent], help="export the store's feedback as JSONL")
    p.add_argument("--format", required=True, choices=["preference", "unpaired", "ratings"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_feedback_export)

    rm = sub.add_parser("rm", help="train or query the reward model")
    rsub = rm.add_subparsers(dest="rm_command", metavar="ACTION")
    rsub.required = True

    p = rsub.add_parser("train", parents=[parent], help="train the reward model on feedback (and files)")
    p.add_argument("--from", dest="from_files", action="append", default=[], metavar="FILE",
                   help="JSONL file(s) to train on besides the store's feedback (repeatable)")
    p.add_argument("--eval", action="append", default=[], metavar="FILE",
                   help="held-out JSONL file(s) to evaluate on (default: a held-out split by request/prompt)")
    add_flags(p, RewardTrainConfig, choices={"backbone": ("embedder", "lm")})
    p.add_argument("--candidate", action="store_true", help="record the version as a candidate, not live")
    p.add_argument("--json", action="store_true", help="print {version, metrics} as JSON")
    p.set_defaults(func=cmd_rm_train)

    p = rsub.add_parser("score", parents=[parent], help="score a text with the live reward model")
    p.add_argument("--context", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rm_score)
