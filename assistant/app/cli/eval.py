"""`inkloop eval --version V`: a policy version's suggestions on evaluation prompts, their metrics
and a judged win-rate against the base model.

It writes a report folder under <data-dir>/reports/ (reward.eval.report). The metrics are
reward.eval.versions'; comparing learner settings end to end is benchmarks/learning.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assistant.app.cli.common import say as _say
from reward.eval.prompts import EvalPrompt, load_prompts, spread

if TYPE_CHECKING:
    from reward.eval.versions import Judge


# ----------------------------------------------------------------------------- command plumbing
def _generation(args) -> Any:
    from assistant.lm.config import GenerationSettings

    return GenerationSettings(k=args.k, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              seed=args.seed)

def _version_arg(store, profile: str, v: int) -> tuple[int, str] | None:
    if v == 0:
        return None
    row = store.get_version(v)  # NotFound (a StoreError) for an unknown id
    if row.kind != "policy":
        raise ValueError(f"version {v} is a {row.kind} version, not a policy")
    if not Path(row.path, "adapter").is_dir():
        raise ValueError(f"version {v} has no adapter directory at {row.path}/adapter")
    return row.id, row.path

def cmd_eval(args: argparse.Namespace) -> int:
    from assistant.app.cli.common import fail, open_store

    if args.version is None:
        return fail("eval needs --version V (0 = the base model)")
    try:
        prompts = spread(load_prompts(args.prompts), args.limit)
        gen = _generation(args)
        gen.validate()
    except ValueError as e:
        return fail(str(e))
    store = open_store(args)
    try:
        return _eval_version_command(args, store, prompts, gen)
    finally:
        store.close()

def _eval_version_command(args, store, prompts: list[EvalPrompt], gen) -> int:
    # the model stack loads with the command, not when the parser is built
    from assistant.app.cli.common import data_dir, fail, load_models
    from assistant.lm.generate import Generator
    from reward.eval.report import write_report
    from reward.eval.versions import evaluate_version

    try:
        version = _version_arg(store, args.profile, args.version)
    except ValueError as e:
        return fail(str(e))
    lm, embedder = load_models(args, with_embedder=True)
    generator = Generator(lm.model, lm.tokenizer, device=lm.device)
    reward_fn, judge, notes = _scoring(args, store, lm, embedder, generator)
    if version is None:
        judge = None
        notes = [n for n in notes if not n.startswith("win-rate")] + ["version 0 is the base itself: no win-rate."]
    _say(f"eval: version {args.version} on {len(prompts)} prompts, K={gen.k}")
    res = evaluate_version(generator, prompts, gen, version, reward_fn=reward_fn, judge=judge, progress=_say)
    runs = [{"name": "base (v0)", "config": {}, "metrics": res["base_metrics"]}]
    if version is not None:
        runs.append({"name": f"v{res['version']}", "config": {}, "metrics": res["metrics"], "samples": res["samples"]})
    else:
        runs[0]["samples"] = res["samples"]
    folder = write_report(data_dir(args), f"eval-v{args.version}", runs, title=f"Evaluation of policy version {args.version}",
                          settings={"model": lm.name, "prompts": args.prompts or "assets (default)", "n_prompts": len(prompts),
                                    "k": gen.k, "max_new_tokens": gen.max_new_tokens, "seed": gen.seed},
                          notes=notes)
    out = {"version": res["version"], "metrics": res["metrics"], "base_metrics": res["base_metrics"], "report": str(folder)}
    if args.json:
        print(json.dumps(out, indent=2, default=float))
    else:
        print((folder / "summary.md").read_text())
        print(f"report: {folder}")
    return 0

def _scoring(args, store, lm, embedder, generator) -> tuple[Any, Judge | None, list[str]]:
    """The reward function (default RewardConfig; the profile's live reward model when there is
    one) and the judge for the win-rate: a simulated rater when --rater is given, else the
    composed reward."""
    from reward.eval.versions import fluency_fn, rater_judge, reward_judge
    from reward.functions import RewardConfig, RewardFunction, embed_with
    from reward.train import load_live_reward_model

    notes: list[str] = []
    rm = load_live_reward_model(store, args.profile, embedder, lm) if embedder is not None else None
    if rm is None:
        notes.append("no reward model published yet for this profile: the rm term is absent.")
    reward_fn = RewardFunction(RewardConfig(), rm=rm, embed=embed_with(embedder) if embedder is not None else None,
                               fluency=fluency_fn(generator))
    if getattr(args, "rater", None):
        judge = rater_judge(args.rater, embedder)
        notes.append(f"win-rate judged by the simulated rater {args.rater!r}.")
    else:
        judge = reward_judge(reward_fn)
        notes.append("win-rate judged by the composed reward (default weights); pass --rater NAME for a simulated rater.")
    return reward_fn, judge, notes

# ----------------------------------------------------------------------------- argparse
def _eval_flags(p: argparse.ArgumentParser) -> None:
    from assistant.lm.config import MAX_K, GenerationSettings

    g = GenerationSettings()
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="evaluation prompts, JSON or JSONL (default: held-out prompts in assets/prompts.json)")
    p.add_argument("--limit", type=int, default=None, help="use at most N prompts (round-robin over the modes)")
    p.add_argument("-k", type=int, default=g.k, choices=range(1, MAX_K + 1), metavar="K",
                   help="candidates per evaluation prompt (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=g.max_new_tokens, help="default %(default)s")
    p.add_argument("--temperature", type=float, default=g.temperature, help="default %(default)s")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

def register(sub, parent) -> None:
    """`inkloop eval --version V`."""
    p = sub.add_parser("eval", parents=[parent], help="evaluate a policy version against the base model",
                       description="inkloop eval --version V: metrics of one policy version against the base "
                                   "(0 = the base); writes a report folder under <data-dir>/reports/.")
    p.add_argument("--version", type=int, default=None, metavar="V", help="policy version id (0 = base model)")
    p.add_argument("--rater", default=None, help="judge the win-rate with this simulated rater")
    _eval_flags(p)
    p.set_defaults(func=cmd_eval)
