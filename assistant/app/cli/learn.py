"""CLI for the live loop: `inkloop learn`, `inkloop learner`, `inkloop versions`, `inkloop export`.

- ``inkloop learn [--once] [--train-now]``  the background learner (what `inkloop serve` starts in its
  own process); ``--once`` checks once (a cycle if enough new feedback arrived) and exits.
- ``inkloop learner pause|resume|train_now|status``  control a running learner through the store.
- ``inkloop versions list`` / ``inkloop versions rollback V`` (V = a version id, 0 = base model,
  or ``previous``).
- ``inkloop export --what merged|adapter|reward|feedback [--version V] --out DIR``.

"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from assistant.app.cli.flags import add_learner_flags, learner_config

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- commands
def build_learner(args: argparse.Namespace, store, cfg):
    """Load the base LM once (copies are handed out per RL run / evaluation) and the embedder."""
    import copy

    from assistant.app.cli.common import data_dir, load_models
    from reward.loop.learner import Learner
    from storage.locks import Hold

    lm, emb = load_models(args, with_embedder=True, progress=lambda m: log.info(m))
    base = lm.model
    base.requires_grad_(False)

    def lm_factory():
        return copy.deepcopy(base), lm.tokenizer

    # it waits at its safe points while `inkloop serve` generates for a person
    hold = Hold(data_dir(args), args.profile)
    return Learner(store, data_dir(args), args.profile, lm_factory, emb, cfg, pause=hold.wait)


def cmd_learn(args: argparse.Namespace) -> int:
    from assistant.app.cli.common import fail, open_store
    from assistant.app.supervisor import watch_parent
    from assistant.lm.models import ModelLoadError
    from reward.loop.learner import apply_resource_limits
    from storage.artifacts import abandon_candidates, collect_garbage
    from storage.locks import LockHeld, learner_lock

    cfg = learner_config(args)
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
    from assistant.app.cli.common import open_store
    from reward.loop.learner import send_command

    store = open_store(args)
    try:
        st = store.learner_state(args.profile) if args.action == "status" else send_command(store, args.profile, args.action)
    finally:
        store.close()
    print(json.dumps(st, indent=2, default=str))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from pathlib import Path

    from assistant.app.cli.common import fail, open_store
    from storage import artifacts
    from storage.records import StoreError

    target = None
    if args.versions_cmd == "rollback" and args.version != "previous":
        try:
            target = int(args.version)
        except ValueError:
            return fail("V must be a version id, 0 (the base model) or 'previous'")
    store = open_store(args)
    try:
        if args.versions_cmd == "rollback":
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
    from assistant.app.cli.common import fail, model_settings, open_store
    from assistant.app.export import ExportError, export
    from assistant.lm.models import ModelLoadError, resolve_model_path
    from storage.records import StoreError

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
    add_learner_flags(p)
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
