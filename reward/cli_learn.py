"""CLI for the live loop: `inkloop learn`, `inkloop learner`, `inkloop versions`, `inkloop export`.

- ``inkloop learn [--once] [--train-now]``  the background learner (what `inkloop serve` starts in its
  own process); ``--once`` checks once (a cycle if enough new feedback arrived) and exits.
- ``inkloop learner pause|resume|train_now|status``  control a running learner through the store.
- ``inkloop versions list`` / ``inkloop versions rollback V`` (V = a version id, 0 = base model,
  or ``previous``).
- ``inkloop export --what merged|adapter|reward|feedback [--version V] --out DIR``.

Also `api_routers(services)` (the REST routes of assistant.api_learning, picked up by `serve`) and
`attach_learning(services, args)` (the Learning/Export tabs and the learner process for `serve`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- serve integration
def api_routers(services) -> list:
    from assistant.api_learning import learning_router
    from assistant.export import ExportError, base_model_path

    try:
        base = base_model_path(services.generator.base_model)
    except (ExportError, AttributeError):
        base = None
    return [learning_router(services, services.store.path.parent, base)]


def attach_learning(services, args: argparse.Namespace):
    """For `inkloop serve`: add the Learning and Export tabs, and start the learner in its own
    process (unless --no-learner). Returns the LearnerSupervisor (or None); stop() it on exit."""
    from assistant.ui_learning import TABS

    services.extra_tabs = [*(getattr(services, "extra_tabs", None) or []), *TABS]
    if getattr(args, "no_learner", False):
        return None
    from assistant.cli import data_dir
    from reward.learner import LearnerSupervisor

    extra = ["--threads", str(getattr(args, "learner_threads", 1) or 1)]
    if getattr(args, "device", None):
        extra += ["--device", args.device]
    if getattr(args, "dtype", None):
        extra += ["--dtype", args.dtype]
    ddir = data_dir(args)
    sup = LearnerSupervisor(
        LearnerSupervisor.learn_argv(ddir, getattr(args, "model", None), args.profile, extra),
        store=services.store, profile_id=args.profile, log_path=ddir / "learner.log",
    )
    sup.start()
    if not getattr(args, "learner_no_yield", False):
        # the person waiting for suggestions comes first: freeze the learner while generating
        services.generator.suggest = sup.yielding(services.generator.suggest)
    return sup


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-learner", action="store_true", help="do not start the background learner process")
    p.add_argument("--learner-threads", type=int, default=1, help="torch threads of the learner process (default 1)")
    p.add_argument("--learner-no-yield", action="store_true",
                   help="let the learner run while suggestions are generated (by default it is paused meanwhile)")


# ----------------------------------------------------------------------------- commands
def _learner_config(args: argparse.Namespace):
    from reward.learner import LearnerConfig

    cfg = LearnerConfig()
    for name in ("min_new_feedback", "rl_steps", "algo", "max_kl", "keep_versions", "poll_s", "nice",
                 "eval_prompts", "eval_max_new_tokens", "min_win_rate", "rm_every", "agreement_drop",
                 "max_length_corr", "seed"):
        v = getattr(args, name, None)
        if v is not None:
            setattr(cfg, name, v)
    cfg.threads = args.threads or cfg.threads
    rl: dict[str, Any] = {}
    if args.rl_max_new_tokens is not None:
        rl["max_new_tokens"] = args.rl_max_new_tokens
    if args.rl_k is not None:
        rl["k"] = args.rl_k
    if args.prompts_per_step is not None:
        rl["prompts_per_step"] = args.prompts_per_step
    if args.lr is not None:
        rl["lr"] = args.lr
    cfg.rl_overrides = rl
    return cfg


def build_learner(args: argparse.Namespace, store, cfg):
    """Load the base LM once (copies are handed out per RL run / evaluation) and the embedder."""
    import copy

    from assistant.cli import data_dir, load_models
    from reward.learner import Learner

    lm, emb = load_models(args, with_embedder=True, progress=lambda m: log.info(m))
    base = lm.model
    base.requires_grad_(False)

    def lm_factory():
        return copy.deepcopy(base), lm.tokenizer

    return Learner(store, data_dir(args), args.profile, lm_factory, emb, cfg)


def cmd_learn(args: argparse.Namespace) -> int:
    from assistant.cli import fail, open_store
    from assistant.models import ModelLoadError
    from reward.learner import apply_resource_limits, watch_parent
    from storage.artifacts import abandon_candidates, collect_garbage
    from storage.locks import LockHeld, learner_lock

    cfg = _learner_config(args)
    apply_resource_limits(cfg)
    store = open_store(args)
    lock = learner_lock(store.data_dir, args.profile)
    try:
        try:
            lock.acquire()  # one learner per profile; the kernel frees it however this process ends
        except LockHeld as e:
            return fail(str(e))
        abandon_candidates(store, args.profile)  # what a killed learner left unevaluated
        store.trim_history(args.profile)  # bounded events and metrics
        collect_garbage(store, store.data_dir)
        try:
            learner = build_learner(args, store, cfg)
        except ModelLoadError as e:
            return fail(str(e))
        if args.once:
            res = learner.run_once(force=args.train_now)
            out = {"outcome": res.outcome, "reason": res.reason, "version": res.version_id,
                   "guards": [g.__dict__ for g in res.guards],
                   "metrics": {k: v for k, v in res.metrics.items()}}
            print(json.dumps(out, indent=2, default=float) if args.json else f"{res.outcome}: {res.reason}")
            return 1 if res.outcome == "error" else 0
        if args.train_now:
            learner.force = True

        def on_term(signum, frame):  # noqa: ARG001
            learner.stop()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        def parent_gone() -> None:
            learner.stop()  # finish the running phase if quick; never outlive the server by much
            threading.Timer(30.0, lambda: os._exit(0)).start()

        watch_parent(parent_gone)
        learner.run_forever()
        return 0
    finally:
        lock.release()
        store.close()


def cmd_learner(args: argparse.Namespace) -> int:
    from assistant.cli import open_store
    from reward.learner import send_command

    store = open_store(args)
    try:
        st = store.learner_state(args.profile) if args.action == "status" else send_command(store, args.profile, args.action)
    finally:
        store.close()
    print(json.dumps(st, indent=2, default=str))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from pathlib import Path

    from assistant.cli import fail, open_store
    from storage import artifacts
    from storage.store import StoreError

    store = open_store(args)
    try:
        if args.versions_cmd == "rollback":
            target = None if args.version == "previous" else args.version
            try:
                target = None if target is None else int(target)
            except ValueError:
                return fail("V must be a version id, 0 (the base model) or 'previous'")
            try:
                now = artifacts.rollback(store, args.profile, target, args.kind)
            except (artifacts.VersionError, StoreError) as e:  # StoreError: NotFound for an unknown id
                return fail(str(e))
            what = f"version {now.id}" if now else "the base model"
            store.add_event("rollback", f"rolled back to {what} (cli)", args.profile, now.id if now else None)
            print(f"{what} is live")
            return 0
        live = store.live_version(args.profile, args.kind)
        vs = store.versions(args.profile, args.kind)
        if args.json:
            print(json.dumps([{**v.__dict__, "live": bool(live and v.id == live.id)} for v in vs], indent=2, default=str))
            return 0
        if not vs:
            print(f"no {args.kind} versions yet (the base model is live)")
            return 0
        print(f"{'':2}{'id':>5}  {'status':<12} {'reward':>8} {'win':>6} {'kl':>7}  created")
        import time

        for v in vs:
            m = v.metrics

            def f(k: str, w: int) -> str:
                x = m.get(k)
                return f"{x:>{w}.3f}" if isinstance(x, (int, float)) else " " * (w - 1) + "-"

            mark = "* " if live and v.id == live.id else "  "
            gone = "" if Path(v.path).is_dir() else " (pruned)"
            print(f"{mark}{v.id:>5}  {v.status:<12} {f('eval/reward', 8)} {f('eval/win_rate', 6)} {f('eval/kl', 7)}  "
                  f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(v.created_at))}{gone}")
        return 0
    finally:
        store.close()


def cmd_export(args: argparse.Namespace) -> int:
    from assistant.cli import fail, model_settings, open_store
    from assistant.export import ExportError, export
    from assistant.models import ModelLoadError, resolve_model_path
    from storage.store import StoreError

    store = open_store(args)
    try:
        base = None
        if args.what == "merged":
            try:
                base, _ = resolve_model_path(model_settings(args))
            except ModelLoadError as e:
                return fail(str(e))
        try:
            out = export(store, what=args.what, out_dir=args.out, profile_id=args.profile, version_id=args.version,
                         base_path=base, overwrite=args.overwrite)
        except (ExportError, StoreError) as e:
            return fail(str(e))
        print(f"exported {args.what} to {out}")
        return 0
    finally:
        store.close()


# ----------------------------------------------------------------------------- registration
def register(sub, parent) -> None:
    p = sub.add_parser("learn", parents=[parent], help="run the background learner (serve starts it for you)",
                       description="Retrain the reward model and the policy when new feedback arrives, evaluate, "
                                   "guard and publish new versions.")
    p.add_argument("--once", action="store_true", help="check once (and run one cycle if due), then exit")
    p.add_argument("--train-now", action="store_true", help="run a cycle whatever the amount of new feedback")
    p.add_argument("--json", action="store_true", help="with --once: print the cycle's result as JSON")
    p.add_argument("--min-new-feedback", type=int, default=None, help="new feedback rows that trigger a cycle (default 8)")
    p.add_argument("--rm-every", type=int, default=None, help="retrain the reward model every N cycles (default 1)")
    p.add_argument("--rl-steps", type=int, default=None, help="RL updates per cycle (default 4)")
    p.add_argument("--algo", choices=["reinforce", "a2c", "ppo"], default=None, help="RL algorithm (default ppo)")
    p.add_argument("--lr", type=float, default=None, help="RL learning rate")
    p.add_argument("--rl-k", type=int, default=None, help="samples per prompt in RL")
    p.add_argument("--prompts-per-step", type=int, default=None, help="prompts per RL update")
    p.add_argument("--rl-max-new-tokens", type=int, default=None, help="tokens per RL rollout")
    p.add_argument("--max-kl", type=float, default=None, help="KL guard limit (default 4.0)")
    p.add_argument("--min-win-rate", type=float, default=None, help="publish only above this win-rate (default 0)")
    p.add_argument("--agreement-drop", type=float, default=None,
                   help="hacking guard: agreement with held-out feedback may fall by at most this (default 0.1)")
    p.add_argument("--max-length-corr", type=float, default=None,
                   help="hacking guard: |corr(learned reward, length)| limit (default 0.9)")
    p.add_argument("--seed", type=int, default=None, help="seed of the held-out split and evaluation samples")
    p.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts per evaluation (default 8)")
    p.add_argument("--eval-max-new-tokens", type=int, default=None, help="tokens per evaluation sample (default 24)")
    p.add_argument("--keep-versions", type=int, default=None, help="policy versions kept on disk (default 5)")
    p.add_argument("--poll-s", type=float, default=None, help="seconds between checks (default 5)")
    p.add_argument("--nice", type=int, default=None, help="niceness added to this process (default 10)")
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("learner", parents=[parent], help="pause, resume or trigger the running learner")
    p.add_argument("action", choices=["pause", "resume", "train_now", "status"])
    p.set_defaults(func=cmd_learner)

    p = sub.add_parser("versions", parents=[parent], help="list policy versions or roll back")
    vs = p.add_subparsers(dest="versions_cmd", metavar="list|rollback", required=True)
    q = vs.add_parser("list", parents=[parent], help="versions, newest first (* = live)")
    q.add_argument("--kind", choices=["policy", "reward"], default="policy")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_versions)
    q = vs.add_parser("rollback", parents=[parent], help="make version V live (0 = base model, 'previous')")
    q.add_argument("version", metavar="V")
    q.add_argument("--kind", choices=["policy", "reward"], default="policy")
    q.set_defaults(func=cmd_versions)

    p = sub.add_parser("export", parents=[parent], help="export a merged model, the adapter, the reward model or feedback")
    p.add_argument("--what", required=True, choices=["merged", "adapter", "reward", "feedback"])
    p.add_argument("--version", type=int, default=None, help="version id (default: the live one)")
    p.add_argument("--out", required=True, help="output directory (created; must be empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)


if __name__ == "__main__":  # pragma: no cover
    import app

    sys.exit(app.main(["learn", *sys.argv[1:]]))
