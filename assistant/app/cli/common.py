"""CLI: `inkloop serve`, `inkloop suggest`, `inkloop status`, `inkloop rate`.

The composition of the app lives here in small reusable functions that other areas' commands
import: `open_store(args)`, `model_settings(args)`, `load_models(args)`, `build_services(args)`,
and the `command` decorator (clear message on stderr and exit code 2 for bad input or a model that
cannot be loaded; no traceback).

`serve` is extended by other areas through optional functions in the modules of
`SERVE_HOOK_MODULES` (missing modules are skipped):

- ``add_serve_flags(parser)``: extra `serve` flags (e.g. --no-learner);
- ``api_routers(services) -> list[APIRouter]``: REST routes included beside /api/v1;
- ``attach_learning(services, args) -> obj | None``: called before the UI is built (may add
  ``services.extra_tabs``, start the learner process); ``obj.stop()`` is called on shutdown.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from assistant.app.cli.flags import add_flags, from_args
from assistant.lm.config import (
    INSPIRE_KINDS,
    MAX_DRAW,
    MAX_K,
    MODES,
    GenerationSettings,
    ModelSettings,
)
from reward.select import EXPLORE, ChoiceConfig

_IMPORT_T0 = time.time()

SERVE_HOOK_MODULES = [
    "assistant.app.cli.learn",
    "assistant.app.cli.reward",
    "assistant.app.cli.rl",
    "assistant.app.cli.eval",
]
"""Modules that may define `serve` hooks (see the module docstring)."""

EXIT_BAD_INPUT = 2


# ----------------------------------------------------------------------------- helpers
def say(msg: str) -> None:
    """Progress for a person watching the terminal (stderr, so --json output stays clean)."""
    print(msg, file=sys.stderr, flush=True)


def fail(msg: str) -> int:
    print(f"inkloop: error: {msg}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def command(fn: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: bad input, unknown ids and model-loading failures print one clear line on
    stderr and return exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args) or 0)
        except Exception as e:
            if isinstance(e, _user_error_types()):
                return fail(str(e))
            raise

    return run


def _user_error_types() -> tuple[type[BaseException], ...]:
    """StoreError (NotFound included), InputError, ModelLoadError: looked up lazily so a command
    that never touched torch (status, rate) does not import it just to name an exception."""
    from storage.store import StoreError

    types: list[type[BaseException]] = [StoreError]
    for mod, name in (("assistant.app.services", "InputError"), ("assistant.lm.models", "ModelLoadError")):
        if mod in sys.modules:
            types.append(getattr(sys.modules[mod], name))
    return tuple(types)


def process_age() -> float:
    """Seconds since this process started (Linux /proc), else since this module was imported."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start)
    except (OSError, ValueError, IndexError):
        return time.time() - _IMPORT_T0


# ----------------------------------------------------------------------------- composition
def model_settings(args: argparse.Namespace) -> ModelSettings:
    return ModelSettings(
        model_path=getattr(args, "model", None),
        device=getattr(args, "device", "auto") or "auto",
        dtype=getattr(args, "dtype", "auto") or "auto",
        num_threads=getattr(args, "threads", None),
    )


def data_dir(args: argparse.Namespace) -> Path:
    from assistant.lm.config import default_data_dir

    return Path(getattr(args, "data_dir", None) or default_data_dir()).expanduser()


def open_store(args: argparse.Namespace):
    """The Store at <data-dir>/inkloop.db (created and migrated if needed)."""
    from storage.store import Store

    return Store(data_dir(args) / "inkloop.db")


def load_models(args: argparse.Namespace, with_embedder: bool = True, progress: Callable[[str], None] | None = say):
    """(LoadedLM, embedder or None). Raises ModelLoadError with an actionable message."""
    from assistant.lm.models import load_embedder, load_lm

    settings = model_settings(args)
    if settings.model_path is not None:
        # refuse hub ids and missing folders before spending any time
        from assistant.lm.models import resolve_model_path

        resolve_model_path(settings)
    lm = load_lm(settings, progress=progress)
    if progress:
        progress(f"Loaded {lm.name} on {lm.device} ({str(lm.dtype).replace('torch.', '')}) in {lm.seconds:.1f} s")
    emb = None
    if with_embedder:
        t0 = time.perf_counter()
        emb = load_embedder(settings)
        if progress:
            progress(f"Loaded the embedder in {time.perf_counter() - t0:.1f} s")
    return lm, emb


def policy_source(store, profile: str) -> Callable[[], tuple[int, str] | None]:
    """The Generator's version_source: the live published policy of `profile` as (id, dir)."""

    def live() -> tuple[int, str] | None:
        v = store.live_version(profile, "policy")
        return (v.id, v.path) if v else None

    return live


def build_services(args: argparse.Namespace, store=None, lm=None, embedder=None, with_embedder: bool = True):
    """Compose Store + Generator (hot-swapping the live policy) + Library + Services."""
    from assistant.app.services import Services
    from assistant.lm.generate import Generator
    from assistant.lm.library import Library
    from assistant.lm.models import embedder_name

    store = store if store is not None else open_store(args)
    if lm is None:
        lm, loaded_emb = load_models(args, with_embedder=with_embedder and embedder is None)
        embedder = embedder if embedder is not None else loaded_emb
    profile = getattr(args, "profile", "default") or "default"
    gen = Generator(lm.model, lm.tokenizer, version_source=policy_source(store, profile), device=lm.device)
    library = Library(store, embedder, embedder_name(embedder)) if embedder is not None else None
    choice = from_args(ChoiceConfig, args, prefix="choice_")  # the serve flags --choice-*, else the defaults
    return Services(store, gen, library, model_name=lm.name, generation=GenerationSettings(), default_profile=profile,
                    choice=choice, embedder=embedder)


def serve_hooks(name: str) -> list[Callable[..., Any]]:
    """The functions called `name` that the modules of SERVE_HOOK_MODULES define."""
    hooks = []
    for mod_name in SERVE_HOOK_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name == mod_name:
                continue
            raise
        fn = getattr(mod, name, None)
        if callable(fn):
            hooks.append(fn)
    return hooks


def extra_api_routers(services) -> list:
    """Routers other areas contribute (their ``api_routers(services)`` hooks)."""
    routers = []
    for hook in serve_hooks("api_routers"):
        routers.extend(hook(services))
    return routers


def build_app(services, with_ui: bool = True):
    """FastAPI app with the REST API (and extra routers) and, when available, the Gradio UI at '/'."""
    from assistant.app.api.routes import build_api

    app = build_api(services, extra_routers=extra_api_routers(services))
    if with_ui:
        try:
            from assistant.app.ui.writer import mount_ui
        except ModuleNotFoundError as e:
            if e.name != "assistant.app.ui.writer":
                raise
            say("assistant/ui.py is not there: serving the REST API only")
            return app
        app = mount_ui(app, services, path="/")  # gr.mount_gradio_app with the project's css/theme
    return app


# ----------------------------------------------------------------------------- commands
@command
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    say("inkloop: loading models (the first start converts the bundled GGUF once, about 20 s)...")
    services = build_services(args)
    # e.g. reward.cli_learn: the Learning/Export tabs and the learner's own process
    attached = [hook(services, args) for hook in serve_hooks("attach_learning")]
    try:
        app = build_app(services, with_ui=not args.api_only)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
        _run_server(uvicorn.Server(config), args)
    finally:
        for obj in attached:
            if obj is not None and hasattr(obj, "stop"):
                obj.stop()
    return 0


def _run_server(server, args: argparse.Namespace) -> None:
    """Run uvicorn; once it listens, print the URL and the startup time."""

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
            say(f"inkloop is ready at http://{host}:{args.port}/  (API: /api/v1, OpenAPI: /openapi.json)")
            say(f"startup took {process_age():.1f} s (process start -> listening)")

    threading.Thread(target=announce, daemon=True, name="inkloop-announce").start()
    server.run()


def _suggest_request(args: argparse.Namespace):
    from assistant.app.services import SuggestRequest

    return SuggestRequest(
        mode=args.mode,
        text=args.text if args.text is not None else "",
        style=args.style,
        sample=args.sample,
        keywords=args.keywords,
        inspire_kind=args.inspire_kind,
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        profile=args.profile,
        variety=args.variety,
        draw=getattr(args, "draw", None),
        choice=getattr(args, "choice", None),
    )


@command
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
            if res.choice:
                print(f"  reward-guided choice: best {len(res.suggestions)} of {res.choice['drawn']} drawn by reward "
                      f"model v{res.choice['reward_version']}; the exploration slot is marked (explore)")
            for m in res.material:
                print(f"  material: {m['text'][:70]}")
            for s in res.suggestions:
                tag = "" if "score" not in s else f" (score {s['score']:+.2f}{', explore' if s['exploration'] else ''})"
                print(f"\n[{s['id']}]{tag} {s['text']}")
            if not res.suggestions:
                print("(the model produced no usable suggestion; try again or raise the temperature)")
    finally:
        store.close()
    return 0


@command
def cmd_status(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        live = store.live_version(args.profile, "policy")
        out: dict[str, Any] = {
            "data_dir": str(data_dir(args)),
            "profile": args.profile,
            "model": args.model or "SmolLM2-135M-Instruct (bundled)",
            "policy_version": live.id if live else 0,
            "counts": store.counts(),
            "feedback_by_kind": store.feedback_counts_by_kind(),
            "learner": store.learner_state(args.profile),
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
        print("counts:         " + ", ".join(f"{k} {v}" for k, v in out["counts"].items()))
        print("feedback:       " + ", ".join(f"{k} {v}" for k, v in out["feedback_by_kind"].items()))
        ls = out["learner"]
        learner = "never ran" if not ls else f"{ls.get('phase')} - {ls.get('message') or ''}"
        print(f"learner:        {learner}")
    return 0


@command
def cmd_rate(args: argparse.Namespace) -> int:
    from assistant.lm.config import MAX_TEXT_CHARS
    from storage.store import StoreError

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
    p.add_argument("--port", type=int, default=7860, help="default %(default)s")
    p.add_argument("--api-only", action="store_true", help="serve the REST API without the web UI")
    add_flags(p, ChoiceConfig, prefix="choice_", choices={"explore": EXPLORE})
    for hook in serve_hooks("add_serve_flags"):
        hook(p)
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
    p.add_argument("--variety", action="store_true",
                   help="continue/inspire: candidates from different angles (detail, brevity, tone, surprise)")
    p.add_argument("--draw", type=_int_in(1, MAX_DRAW), default=None, metavar="N",
                   help="reward-guided choice: draw N candidates and show the reward model's best K "
                        f"(1..{MAX_DRAW}; default: ChoiceConfig.draw = {ChoiceConfig.draw})")
    p.add_argument("--choice", action=argparse.BooleanOptionalAction, default=None,
                   help="reward-guided choice on/off (default: on once the profile has a reward model)")
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
