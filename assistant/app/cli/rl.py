"""CLI: `inkloop rl train` (RL updates against the current reward model) and `inkloop simulate`
(the whole human-in-the-loop cycle with a simulated rater; `--compare` runs reinforce, a2c and ppo).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def _rl_config(args):
    from reward.rl.config import RLConfig

    return RLConfig(
        algo=args.algo, k=args.k, prompts_per_step=args.prompts, max_new_tokens=args.max_new_tokens,
        lr=args.lr, kl_coef=args.kl_coef, adaptive_kl=args.adaptive_kl, target_kl=args.target_kl,
        seed=args.seed,
    )


def cmd_rl_train(args: argparse.Namespace) -> int:
    from assistant.app.cli.common import command, fail, open_store

    cfg = _rl_config(args)
    try:
        cfg.validate()
    except ValueError as e:
        return fail(str(e))
    store = open_store(args)
    try:
        return command(lambda a: _rl_train(a, store, cfg))(args)
    finally:
        store.close()


def _rl_train(args: argparse.Namespace, store, cfg) -> int:
    from assistant.app.cli.common import data_dir, fail, load_models, say
    from assistant.lm.config import LoraSettings
    from reward.functions import RewardConfig, RewardFunction, embed_with
    from reward.rl.train import train_policy
    from reward.train import load_live_reward_model

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
        publish=args.publish, lora_cfg=LoraSettings(), on_step=on_step,
    )
    out = {"version": version.id, "status": version.status, "path": version.path, "metrics": metrics}
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(f"policy version {version.id} ({version.status}) at {version.path}")
        for k in sorted(metrics):
            print(f"  {k:28s} {metrics[k]:.4f}")
    return 0


def run_simulation(args, algo: str, lm, embedder, base_state, ddir: Path, last: bool = False):
    """One simulate run on its own data dir, with a fresh copy of the base model for the generator
    and another for the learner (the last run takes the base itself, saving a copy's memory)."""
    from assistant.app.cli.common import policy_source, say
    from assistant.app.services import Services
    from assistant.lm.config import GenerationSettings, LoraSettings
    from assistant.lm.generate import Generator
    from assistant.lm.library import Library
    from assistant.lm.models import embedder_name
    from reward.loop.simulate import SimConfig, fresh_copy, make_rater, simulate
    from reward.rl.policy import Policy
    from storage.store import Store

    store = Store(ddir / "inkloop.db")
    profile = args.profile
    gen_model = fresh_copy(base_state)
    gen = Generator(gen_model, lm.tokenizer, version_source=policy_source(store, profile), device=lm.device)
    services = Services(store, gen, Library(store, embedder, embedder_name(embedder)), model_name=lm.name,
                        generation=GenerationSettings(), default_profile=profile)
    policy = Policy.from_base(base_state if last else fresh_copy(base_state), lm.tokenizer, LoraSettings())
    cfg = SimConfig(
        budget=args.budget, algo=algo, k=args.k, max_new_tokens=args.max_new_tokens, rm_every=args.rm_every,
        rl_steps=args.rl_steps, prompts_per_step=args.prompts, lr=args.lr, kl_coef=args.kl_coef,
        target_kl=args.target_kl,
        heldout_samples=args.heldout_samples, prompts_path=args.prompts_file, seed=args.seed,
        ppo_epochs=args.ppo_epochs, minibatch_size=args.minibatch, rm_features=tuple(args.rm_features),
        kl_horizon=args.kl_horizon, rl_after=args.rl_after, rm_ensemble=args.rm_ensemble,
        rm_uncertainty=args.rm_uncertainty, oracle_reward=args.oracle_reward, variety=args.variety,
    )
    rater = make_rater(args.rater, seed=args.seed, noise=args.noise)
    try:
        return simulate(services, policy, embedder, rater, cfg, ddir, profile=profile, progress=say)
    finally:
        store.close()


def cmd_simulate(args: argparse.Namespace) -> int:
    from assistant.app.cli.common import command

    return command(_simulate)(args)


def _simulate(args: argparse.Namespace) -> int:
    from assistant.app.cli.common import data_dir, load_models, say

    lm, embedder = load_models(args, with_embedder=True)
    base_state = lm.model  # kept clean: every run works on deep copies
    algos = ["reinforce", "a2c", "ppo"] if args.compare else [args.algo]
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="inkloop-sim-", dir=data_dir(args)
                                                                   if data_dir(args).exists() else None))
    results = []
    for algo in algos:
        ddir = root / f"{args.rater}-{algo}"
        ddir.mkdir(parents=True, exist_ok=True)
        say(f"simulate: rater={args.rater} algo={algo} budget={args.budget} data in {ddir}")
        results.append(run_simulation(args, algo, lm, embedder, base_state, ddir, last=algo == algos[-1]))
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, default=float))
    else:
        print(f"{'rater':9s} {'algo':9s} {'ratings':>7s} {'win-rate':>8s} {'95% CI':>15s} {'pairs':>5s} "
              f"{'KL/seq':>7s} {'KL/tok':>7s} {'secs':>6s}")
        for r in results:
            print(f"{r.rater:9s} {r.algo:9s} {r.ratings:7d} {r.win_rate:8.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] "
                  f"{r.n_pairs:5d} {r.kl:7.3f} {r.kl_per_token:7.4f} {r.seconds:6.0f}")
        for r in results:
            rw = r.curves.get("rl/reward", [])
            if rw:
                print(f"{r.algo} reward curve: " + " ".join(f"{v:.2f}" for _, v in rw))
    if args.save_json:
        Path(args.save_json).write_text(json.dumps([r.to_dict() for r in results], indent=2, default=float))
    return 0


def _common_rl_flags(p: argparse.ArgumentParser, steps_default: int | None) -> None:
    p.add_argument("--algo", choices=["reinforce", "a2c", "ppo"], default="ppo")
    p.add_argument("--k", type=int, default=4, help="samples per prompt (default %(default)s)")
    p.add_argument("--prompts", type=int, default=4, help="prompts per RL update (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="response length (default %(default)s)")
    p.add_argument("--lr", type=float, default=5e-4, help="LoRA learning rate (default %(default)s)")
    p.add_argument("--kl-coef", type=float, default=0.05, help="KL penalty beta (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (--rm-ensemble / --ensemble)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def feature_blocks(spec: str) -> tuple[str, ...]:
    """argparse type for --rm-features / --features."""
    from reward.model import parse_feature_blocks

    try:
        return parse_feature_blocks(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub, parent) -> None:
    from assistant.app.cli.common import command

    rl = sub.add_parser("rl", help="reinforcement learning on the LoRA policy")
    rl_sub = rl.add_subparsers(dest="rl_command", metavar="SUBCOMMAND")
    tr = rl_sub.add_parser("train", parents=[parent], help="RL updates against the current reward model")
    _common_rl_flags(tr, 8)
    tr.add_argument("--steps", type=int, default=8, help="RL updates (default %(default)s)")
    tr.add_argument("--adaptive-kl", action="store_true", help="adapt beta towards --target-kl")
    tr.add_argument("--target-kl", type=float, default=2.0, help="target KL per sequence (default %(default)s)")
    tr.add_argument("--publish", action="store_true", help="make the new version the live policy")
    tr.set_defaults(func=command(cmd_rl_train))
    rl.set_defaults(func=lambda a: (rl.print_help(), 2)[1])

    from reward.loop.simulate import RATERS, SimConfig

    sim = sub.add_parser("simulate", parents=[parent],
                         help="the human-in-the-loop cycle with a simulated rater (win-rate vs base)")
    _common_rl_flags(sim, None)
    sim.add_argument("--rater", choices=RATERS, default="concise")
    sim.add_argument("--budget", type=int, default=150, help="star ratings in total (default %(default)s)")
    sim.add_argument("--rm-every", type=int, default=24, help="retrain RM + RL every N ratings (default %(default)s)")
    sim.add_argument("--rl-steps", type=int, default=4, help="RL updates per round (default %(default)s)")
    sim.add_argument("--heldout-samples", type=int, default=2, help="pairs per held-out prompt (default %(default)s)")
    sim.add_argument("--noise", type=float, default=0.5, help="rater's star noise, in stars (default %(default)s)")
    sim.add_argument("--prompts-file", default=None, help="prompt file (default assets/prompts.json)")
    sim.add_argument("--ppo-epochs", type=int, default=2, help="PPO epochs per batch (default %(default)s)")
    sim.add_argument("--minibatch", type=int, default=16, help="episodes per minibatch (default %(default)s)")
    sim.add_argument("--target-kl", type=float, default=None,
                     help="adapt the KL coefficient towards this KL per sequence (default: fixed --kl-coef)")
    sim.add_argument("--kl-horizon", type=float, default=SimConfig.kl_horizon,
                     help="episodes over which the adaptive controller moves beta (default %(default)s)")
    sim.add_argument("--rl-after", type=int, default=0,
                     help="no RL before this many ratings; the reward model still retrains (default %(default)s)")
    sim.add_argument("--rm-features", type=feature_blocks, default=SimConfig.rm_features,
                     help="reward-model feature blocks, comma-separated from s, c, sc, absdiff, sch, words "
                          "(default: s,sc; words adds the hashed vocabulary block)")
    sim.add_argument("--rm-ensemble", type=positive_int, default=SimConfig.rm_ensemble, metavar="M",
                     help="train the reward model as a bootstrap ensemble of M heads (default %(default)s: one)")
    sim.add_argument("--rm-uncertainty", type=float, default=SimConfig.rm_uncertainty, metavar="A",
                     help="with an ensemble, the RL reward is the heads' mean minus A times their std "
                          "(default %(default)s)")
    sim.add_argument("--oracle-reward", action="store_true",
                     help="diagnostic: RL on the rater's hidden utility instead of the learned reward model "
                          "(the ceiling with a perfect reward model; not a result of the loop)")
    sim.add_argument("--variety", action="store_true",
                     help="show the rater candidates written from different angles (as in the UI's 'Varied "
                          "angles'); RL rollouts and the held-out comparison use the prompt as asked")
    sim.add_argument("--compare", action="store_true", help="run reinforce, a2c and ppo and print a table")
    sim.add_argument("--out", default=None, help="directory for the runs' stores and versions (default: a temp dir)")
    sim.add_argument("--save-json", default=None, help="also write the results as JSON to this file")
    sim.set_defaults(func=command(cmd_simulate))
