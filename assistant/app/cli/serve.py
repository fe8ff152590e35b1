"""CLI: `inkloop serve`, `inkloop suggest`, `inkloop status`, `inkloop rate`.

`serve` is the composition root of the running app: the store, the generator (held by the
learner supervisor while it generates), the Services facade, the REST API (the core and the
learning routes), the Gradio UI with the Learning and Export tabs, and the learner process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from assistant.app.cli.common import (
    build_services,
    data_dir,
    fail,
    open_store,
    process_age,
    say,
)
from reward.select import EXPLORE, ChoiceConfig

if TYPE_CHECKING:
    from assistant.app.services import Services
    from assistant.app.supervisor import LearnerSupervisor
from assistant.app.cli.flags import add_flags, from_args
from assistant.lm.config import (
    INSPIRE_KINDS,
    MAX_DRAW,
    MAX_K,
    MODES,
    GenerationSettings,
)


def build_app(services: Services, with_ui: bool = True, access=None):
    """What `inkloop serve` runs: the REST API (core and learning routes) and the Gradio UI at '/'
    with the Learning and Export tabs. `access` (AccessSettings) guards every route, the UI's
    included (assistant.app.api.security)."""
    # the web stack (fastapi, gradio) loads when an app is built, not when the parser is
    from assistant.app.api.learning import learning_router
    from assistant.app.api.routes import build_api
    from assistant.app.export import ExportError, base_model_path
    from assistant.app.ui.learning import TABS as LEARNING_TABS
    from assistant.app.ui.writer import mount_ui

    try:
        base = base_model_path(services.generator.base_model)
    except (ExportError, AttributeError):
        base = None
    app = build_api(services, extra_routers=[learning_router(services, services.store.path.parent, base)],
                    access=access)
    return mount_ui(app, services, path="/", tabs=LEARNING_TABS) if with_ui else app


def learner_supervisor(args: argparse.Namespace, store) -> LearnerSupervisor:
    """The learner's own process for every profile of this data dir, with the server's device flags."""
    from assistant.app.supervisor import LearnerSupervisor

    extra = ["--threads", str(args.learner_threads)]
    for flag in ("device", "dtype"):
        if getattr(args, flag, None):
            extra += [f"--{flag}", getattr(args, flag)]
    ddir = data_dir(args)
    return LearnerSupervisor(LearnerSupervisor.learn_argv(ddir, args.model, None, extra), ddir,
                             store=store, profile_id=args.profile, log_path=ddir / "learner.log")


def access_settings(args: argparse.Namespace):
    """Who may use the server: loopback binds check Host/Origin; any other bind needs a token."""
    from assistant.app.api.security import AccessSettings

    token = getattr(args, "token", None) or os.environ.get("INKLOOP_TOKEN") or None
    return AccessSettings(host=args.host, port=args.port, token=token)


def public_urls(host: str, port: int) -> list[str]:
    """The addresses a person can open for a server bound to `host` (all interfaces: this machine's)."""
    import socket

    if host in ("0.0.0.0", "::", ""):
        names = {socket.gethostname()}
        try:
            names |= {ai[4][0] for ai in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
        except OSError:
            pass
        names.discard("127.0.0.1")
        return [f"http://{n}:{port}/" for n in sorted(names)] + [f"http://127.0.0.1:{port}/"]
    h = f"[{host}]" if ":" in host else host
    return [f"http://{h}:{port}/"]


def cannot_listen(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port (a name that does not resolve, the port in use,
    no permission), or None. A check before start-up; uvicorn binds for real afterwards."""
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        return f"--host {host}: not an address this machine can listen on ({getattr(e, 'strerror', None) or e})"
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(addr)
        except OSError as e:
            return f"cannot listen on {f'[{host}]' if ':' in host else host}:{port}: {e.strerror or e}"
    return None


# ----------------------------------------------------------------------------- commands
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    access = access_settings(args)
    if not access.loopback and not access.token:
        return fail(f"--host {args.host} makes inkloop reachable from other machines: give it an access token "
                    "(--token TOKEN or INKLOOP_TOKEN=TOKEN; e.g. `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(24))'`), or bind 127.0.0.1")
    why = cannot_listen(args.host, args.port)
    if why:
        return fail(why)  # before the models load: a typo or a busy port costs a second, not a minute
    say("inkloop: loading models (the first start converts the bundled GGUF once, about 20 s)...")
    store = open_store(args)
    sup = None if args.no_learner else learner_supervisor(args, store)
    # the person waiting for suggestions comes first: the learner is held while the app generates
    services = build_services(args, store=store, busy=sup.busy if sup and not args.learner_no_yield else None)
    if not args.no_fast_path:
        # compiles in a background thread; requests are served by generate until it is ready
        services.generator.start_fast_path()
    if sup is not None:
        sup.start()
    try:
        app = build_app(services, with_ui=not args.api_only, access=access)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
        _run_server(uvicorn.Server(config), args)
    finally:
        if sup is not None:
            sup.stop()
        store.close()
    return 0


def _run_server(server, args: argparse.Namespace) -> None:
    """Run uvicorn; once it listens, print the URL and the startup time."""

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            urls = public_urls(args.host, args.port)
            where = "on all interfaces" if args.host in ("0.0.0.0", "::", "") else f"on {args.host}"
            say(f"inkloop is ready {where} at {' or '.join(urls)}  (API: /api/v1, OpenAPI: /openapi.json)")
            if access_settings(args).token:
                say("access token required: the UI asks for it once per browser; API clients send "
                    "'Authorization: Bearer <token>'")
            say(f"startup took {process_age():.1f} s (process start -> listening)")

    threading.Thread(target=announce, daemon=True, name="inkloop-announce").start()
    server.run()

def _suggest_request(args: argparse.Namespace):
    """The SuggestRequest of `inkloop suggest`: every field its flag gave (the text may be absent)."""
    from assistant.app.services import SuggestRequest

    return from_args(SuggestRequest, args, base=SuggestRequest(mode=args.mode),
                     text=args.text if args.text is not None else "")

def cmd_suggest(args: argparse.Namespace) -> int:
    from assistant.app.services import validate_request

    if args.text == "-":
        args.text = sys.stdin.read()
    store = open_store(args)
    try:
        req = _suggest_request(args)
        validate_request(req, store.styles(args.profile))  # fail fast, before loading any model
        # the embedder is only needed to find library material for inspire mode
        need_emb = args.mode == "inspire" and store.counts(args.profile)["library"] > 0
        # ... and by the reward-guided choice, once the profile has a reward model
        need_emb = need_emb or (req.choice is not False and store.live_version(args.profile, "reward") is not None)
        services = build_services(args, store=store, with_embedder=need_emb)
        res = services.suggest(req)
        if args.json:
            print(json.dumps(res.to_dict(), ensure_ascii=False, indent=2))
        else:
            print(f"request {res.request_id} (policy version {res.policy_version}, {res.seconds:.1f} s)")
            for m in res.material:
                print(f"  material: {m['text'][:70]}")
            if res.choice:
                print(f"  reward-guided choice: best {len(res.suggestions)} of {res.choice['drawn']} drawn by reward "
                      f"model v{res.choice['reward_version']}; the exploration slot is marked (explore)")
            for s in res.suggestions:
                tag = "" if "score" not in s else f" (score {s['score']:+.2f}{', explore' if s['exploration'] else ''})"
                print(f"\n[{s['id']}]{tag} {s['text']}")
            if not res.suggestions:
                print("(the model produced no usable suggestion; try again or raise the temperature)")
    finally:
        store.close()
    return 0

def cmd_status(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        out: dict[str, Any] = {
            "data_dir": str(data_dir(args)),
            "model": args.model or "SmolLM2-135M-Instruct (bundled)",
            **store.profile_status(args.profile),
            "migrations": store.schema_migrations(),
        }
    finally:
        store.close()
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2, default=str))
    else:
        print(f"data dir:       {out['data_dir']}")
        print(f"profile:        {out['profile']}")
        print(f"model:          {out['model']}")
        print(f"policy version: {out['policy_version']} ({'base model' if not out['policy_version'] else 'LoRA'})")
        print(f"reward model:   {out['reward_version'] or 'none yet'}")
        print("counts:         " + ", ".join(f"{k} {v}" for k, v in out["counts"].items()))
        print("feedback:       " + ", ".join(f"{k} {v}" for k, v in out["feedback_by_kind"].items()))
        ls = out["learner"]
        learner = "never ran" if not ls else f"{ls.get('phase')} - {ls.get('message') or ''}"
        print(f"learner:        {learner}")
    return 0

def cmd_rate(args: argparse.Namespace) -> int:
    from assistant.lm.config import MAX_TEXT_CHARS
    from storage.records import StoreError

    ranking = None
    if args.ranking:
        try:
            ranking = [int(x) for x in args.ranking.split(",") if x.strip()]
        except ValueError:
            return fail("--ranking must be comma-separated suggestion ids, e.g. 3,1,2")
    if args.edited_text is not None and len(args.edited_text) > MAX_TEXT_CHARS:
        return fail(f"--edited-text is limited to {MAX_TEXT_CHARS} characters")
    store = open_store(args)
    try:
        try:
            fid = store.add_feedback(args.suggestion_id, args.kind, args.value, args.edited_text, ranking, source="cli")
        except StoreError as e:
            return fail(str(e))
    finally:
        store.close()
    if args.json:
        print(json.dumps({"feedback_id": fid}))
    else:
        print(f"recorded feedback {fid}")
    return 0

# ----------------------------------------------------------------------------- registration
def _int_in(lo: int, hi: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {v}")
        return v

    return parse

def register(sub, parent) -> None:
    g = GenerationSettings()

    p = sub.add_parser("serve", parents=[parent], help="run the web UI and the REST API",
                       description="Load the models, then serve the Gradio UI at / and the REST API at /api/v1.")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=_int_in(1, 65535), default=7860, help="default %(default)s")
    p.add_argument("--api-only", action="store_true", help="serve the REST API without the web UI")
    p.add_argument("--no-fast-path", action="store_true",
                   help="do not compile the fast decode path (every request uses transformers' generate)")
    p.add_argument("--token", default=None,
                   help="access token (or INKLOOP_TOKEN); required with a --host other than loopback")
    add_flags(p, ChoiceConfig, prefix="choice_", choices={"explore": EXPLORE})
    p.add_argument("--no-learner", action="store_true", help="do not start the background learner process")
    p.add_argument("--learner-threads", type=int, default=1, help="torch threads of the learner process (default 1)")
    p.add_argument("--learner-no-yield", action="store_true",
                   help="let the learner run while suggestions are generated (by default it is held meanwhile)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("suggest", parents=[parent], help="get K suggestions for a text (recorded like the UI's)")
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--text", default=None, help="the draft (continue/restyle) or theme (inspire); '-' reads stdin")
    p.add_argument("--style", default=None, help="restyle: formal|casual|concise|vivid|poetic|sample|<your style>")
    p.add_argument("--sample", default=None, help="restyle: a text whose voice to imitate (with --style sample)")
    p.add_argument("--keywords", default=None, help="inspire: comma-separated keywords")
    p.add_argument("--inspire-kind", default="ideas", choices=INSPIRE_KINDS)
    p.add_argument("-k", type=_int_in(1, MAX_K), default=g.k, help=f"number of candidates 1..{MAX_K} (default %(default)s)")
    p.add_argument("--temperature", type=float, default=g.temperature, help="default %(default)s")
    p.add_argument("--top-p", type=float, default=g.top_p, help="default %(default)s")
    p.add_argument("--max-new-tokens", type=int, default=g.max_new_tokens, help="default %(default)s")
    p.add_argument("--seed", type=int, default=None, help="reproducible sampling")
    p.add_argument("--draw", type=_int_in(1, MAX_DRAW), default=None, metavar="N",
                   help="reward-guided choice: draw N candidates and show the reward model's best K "
                        f"(1..{MAX_DRAW}; default: ChoiceConfig.draw = {ChoiceConfig.draw})")
    p.add_argument("--choice", action=argparse.BooleanOptionalAction, default=None,
                   help="reward-guided choice on/off (default: on once the profile has a reward model)")
    p.add_argument("--variety", action="store_true",
                   help="continue/inspire: candidates from different angles (detail, brevity, tone, surprise)")
    p.add_argument("--json", action="store_true", help="print JSON with request_id, policy_version and ids")
    p.set_defaults(func=cmd_suggest)

    p = sub.add_parser("status", parents=[parent], help="counts, live policy version, learner state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("rate", parents=[parent], help="rate one suggestion (like the UI's buttons)")
    p.add_argument("suggestion_id", type=int, metavar="SUGGESTION_ID")
    p.add_argument("--kind", required=True, choices=["thumb", "stars", "best", "rank", "edit", "accept"])
    p.add_argument("--value", type=float, default=None, help="thumb: 1 or -1; stars: 1..5")
    p.add_argument("--edited-text", default=None, help="edit: your improved version")
    p.add_argument("--ranking", default=None, help="rank: suggestion ids of one request, best first, e.g. 3,1,2")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rate)
