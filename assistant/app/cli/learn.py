"""CLI for the live loop: `inkloop learn`, `inkloop learner`, `inkloop versions`, `inkloop export`.

- ``inkloop learn [--once] [--train-now]``  the background learner of ``--profile``; with
  ``--all-profiles``, of every profile of the data dir in one process (what `inkloop serve` starts);
  ``--once`` checks once (a cycle if enough new feedback arrived; every profile once) and exits.
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
def learner_factory(args: argparse.Namespace, store, cfg):
    """make_learner(profile) -> Learner: the base LM and the embedder are loaded once and shared by
    every profile's Learner (each RL run and evaluation wraps its own copy of the base), as is the
    server's hold (storage.locks.Hold: they wait at their safe points while `inkloop serve`
    generates, for any profile)."""
    import copy

    from assistant.app.cli.common import data_dir, load_models
    from reward.loop.learner import Learner
    from storage.locks import Hold

    lm, emb = load_models(args, with_embedder=True, progress=lambda m: log.info(m))
    base = lm.model
    base.requires_grad_(False)

    def lm_factory():
        return copy.deepcopy(base), lm.tokenizer

    hold = Hold(data_dir(args))

    def make_learner(profile: str) -> Learner:
        return Learner(store, data_dir(args), profile, lm_factory, emb, cfg, pause=hold.wait)

    return make_learner


def _result(res) -> dict:
    return {"outcome": res.outcome, "reason": res.reason, "version": res.version_id,
            "guards": [g.__dict__ for g in res.guards], "metrics": dict(res.metrics)}


def _stop_on_signals(stop) -> None:
    """SIGTERM / SIGINT, or the server (the parent) gone, stop the learner after its running phase."""
    from assistant.app.supervisor import watch_parent

    def on_term(signum, frame):  # noqa: ARG001
        stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    def parent_gone() -> None:
        stop()  # finish the running phase if quick; never outlive the server by much
        threading.Timer(30.0, lambda: os._exit(0)).start()

    watch_parent(parent_gone)


def cmd_learn(args: argparse.Namespace) -> int:
    from assistant.app.cli.common import fail, open_store
    from assistant.lm.models import ModelLoadError
    from reward.loop.learner import apply_resource_limits
    from storage.artifacts import abandon_candidates, collect_garbage
    from storage.locks import LockHeld, learner_lock

    cfg = learner_config(args)
    apply_resource_limits(cfg)
    store = open_store(args)
    if args.all_profiles:
        try:
            return _learn_all_profiles(args, store, cfg)
        finally:
            store.close()
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
            learner = learner_factory(args, store, cfg)(args.profile)
        except ModelLoadError as e:
            return fail(str(e))
        if args.once:
            res = learner.run_once(force=args.train_now)
            print(json.dumps(_result(res), indent=2, default=float) if args.json else f"{res.outcome}: {res.reason}")
            return 1 if res.outcome == "error" else 0
        if args.train_now:
            learner.force = True
        _stop_on_signals(learner.stop)
        learner.run_forever()
        return 0
    finally:
        lock.release()
        store.close()


def _learn_all_profiles(args: argparse.Namespace, store, cfg) -> int:
    """`inkloop learn --all-profiles`: one process, every profile's cycles in turn (reward.loop.profiles)."""
    from assistant.app.cli.common import fail
    from assistant.lm.models import ModelLoadError
    from reward.loop.profiles import ProfileLearners
    from storage.artifacts import collect_garbage

    collect_garbage(store, store.data_dir)
    try:
        loop = ProfileLearners(store, store.data_dir, learner_factory(args, store, cfg), poll_s=cfg.poll_s)
    except ModelLoadError as e:
        return fail(str(e))
    loop.force = bool(args.train_now)
    if args.once:
        turns = loop.run_pass()
        if args.json:
            print(json.dumps({t.profile: _result(t.result) if t.result else {"outcome": t.outcome, "reason": t.reason}
                              for t in turns}, indent=2, default=float))
        else:
            for t in turns:
                print(f"{t.profile}: {t.outcome}: {t.reason}")
        return 1 if any(t.outcome == "error" for t in turns) else 0
    _stop_on_signals(loop.stop)
    loop.run_forever()
    return 0


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
    p.add_argument("--all-profiles", action="store_true",
                   help="one learner for every profile of the data dir, one cycle at a time, oldest pending "
                        "feedback first (what `inkloop serve` starts); --profile is then not used")
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
