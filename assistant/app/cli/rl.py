"""CLI: `inkloop rl train` (RL updates against the current reward model) and `inkloop simulate`
(the shipped learner cycle with a simulated rater in the person's place).

Each command is argparse -> config dataclass -> one call; the flags come from RLConfig,
LearnerConfig, RewardTrainConfig and SimConfig (assistant.app.cli.flags).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
from pathlib import Path

from assistant.app.cli.common import (
    build_services,
    data_dir,
    fail,
    load_models,
    open_store,
    say,
)
from assistant.app.cli.flags import (
    add_flags,
    add_learner_flags,
    from_args,
    learner_config,
    validated,
)
from reward.eval.raters import RATERS
from reward.loop.config import SimConfig
from reward.rl.config import ALGOS, RLConfig


# ----------------------------------------------------------------------------- rl train
def cmd_rl_train(args: argparse.Namespace) -> int:
    # the model stack (torch, transformers, peft) loads with the command, not when the parser is built
    from assistant.lm.config import LoraSettings
    from reward.functions import RewardConfig, RewardFunction, embed_with
    from reward.rl.train import pairs_from_store, train_policy
    from reward.train import load_live_reward_model

    cfg = validated(from_args(RLConfig, args))
    store = open_store(args)
    try:
        profile = args.profile
        if not store.recent_requests(profile, limit=1):
            return fail(f"profile {profile!r} has no requests yet: ask for some suggestions first")
        lm, embedder = load_models(args, with_embedder=True)
        rm = load_live_reward_model(store, profile, embedder)
        if rm is None:
            say("no published reward model for this profile: training on the rule-based terms only "
                "(run `inkloop rm train` first to learn from ratings)")
        reward_fn = RewardFunction(RewardConfig(), rm=rm, embed=embed_with(embedder))

        def on_step(i, m):
            say(f"step {i + 1}/{args.steps}: reward={m.get('rl/reward', float('nan')):.3f} "
                f"kl={m.get('rl/kl', float('nan')):.3f} entropy={m.get('rl/entropy', float('nan')):.3f} "
                f"{m.get('rl/episodes_per_s', 0):.2f} episodes/s" + (" SKIPPED" if m.get("rl/skipped") else ""))

        version, metrics = train_policy(
            store, data_dir(args), profile, lm.model, lm.tokenizer, reward_fn, cfg, args.steps,
            publish=args.publish, lora_cfg=LoraSettings(), on_step=on_step, pairs=pairs_from_store(store, profile),
        )
    finally:
        store.close()
    if args.json:
        print(json.dumps({"version": version.id, "status": version.status, "path": version.path, "metrics": metrics},
                         indent=2, sort_keys=True))
    else:
        print(f"policy version {version.id} ({version.status}) at {version.path}")
        for k in sorted(metrics):
            print(f"  {k:28s} {metrics[k]:.4f}")
    return 0


# ----------------------------------------------------------------------------- simulate
def sim_config(args: argparse.Namespace) -> SimConfig:
    """SimConfig from the flags: its own fields, and the learner's (one --seed for both)."""
    cfg = from_args(SimConfig, args, learner=learner_config(args))
    cfg.learner.seed = cfg.seed
    return cfg


def cmd_simulate(args: argparse.Namespace) -> int:
    # the model stack loads with the command, not when the parser is built
    from assistant.app.simulation import ServicesAssistant
    from reward.eval.prompts import load_prompts
    from reward.eval.raters import make_rater
    from reward.loop.learner import Learner
    from reward.loop.simulate import simulate
    from storage.store import Store

    cfg = sim_config(args)
    if cfg.budget < 1:
        return fail("--budget must be at least 1")
    try:  # simulate() reads them again; a bad file must fail before models load and folders appear
        for split in ("train", "heldout"):
            load_prompts(cfg.prompts_path, split=split)
    except ValueError as e:
        return fail(str(e))
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="inkloop-sim-"))
    ddir = root / f"{args.rater}-{cfg.learner.rl.algo}"
    try:
        ddir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file on the way, no permission
        return fail(f"cannot create {ddir}: {e.strerror or e}")
    say(f"simulate: rater={args.rater} algo={cfg.learner.rl.algo} budget={cfg.budget} data in {ddir}")
    lm, embedder = load_models(args, with_embedder=True)
    base = lm.model
    base.requires_grad_(False)
    store = Store(ddir / "inkloop.db")
    try:
        # the app serves from its own copy of the base; the learner gets a fresh copy per RL run
        services = build_services(args, store=store, lm=dataclasses.replace(lm, model=copy.deepcopy(base)),
                                  embedder=embedder)
        learner = Learner(store, ddir, args.profile, lambda: (copy.deepcopy(base), lm.tokenizer), embedder, cfg.learner)
        person = ServicesAssistant(services, args.profile, cfg.max_new_tokens, cfg.temperature)
        result = simulate(person, learner, make_rater(args.rater, seed=cfg.seed, noise=args.noise), cfg, progress=say)
    finally:
        store.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=float))
    else:
        print(result.summary())
        for c in result.cycles:
            print(f"  at {c['ratings']:4d} ratings: {c['outcome']:9s} {c['reason']}")
    if args.save_json:
        Path(args.save_json).write_text(json.dumps(result.to_dict(), indent=2, default=float))
    return 0


# ----------------------------------------------------------------------------- registration
def register(sub, parent) -> None:
    rl = sub.add_parser("rl", help="reinforcement learning on the LoRA policy")
    rl_sub = rl.add_subparsers(dest="rl_command", metavar="SUBCOMMAND")
    tr = rl_sub.add_parser("train", parents=[parent], help="RL updates against the current reward model")
    add_flags(tr, RLConfig, choices={"algo": ALGOS})
    tr.add_argument("--steps", type=int, default=8, help="RL updates (default %(default)s)")
    tr.add_argument("--publish", action="store_true", help="make the new version the live policy")
    tr.add_argument("--json", action="store_true", help="print JSON")
    tr.set_defaults(func=cmd_rl_train)
    rl.set_defaults(func=lambda a: (rl.print_help(), 2)[1])

    sim = sub.add_parser("simulate", parents=[parent],
                         help="the learner cycle with a simulated rater in the person's place (win-rate vs base)")
    add_flags(sim, SimConfig)
    add_learner_flags(sim, exclude={"seed"})
    sim.add_argument("--rater", choices=RATERS, default="concise", help="the simulated rater (default concise)")
    sim.add_argument("--noise", type=float, default=0.5, help="the rater's star noise, in stars (default 0.5)")
    sim.add_argument("--out", default=None, help="directory for the run's store and versions (default: a temp dir)")
    sim.add_argument("--save-json", default=None, help="also write the result as JSON to this file")
    sim.add_argument("--json", action="store_true", help="print the result as JSON")
    sim.set_defaults(func=cmd_simulate)
