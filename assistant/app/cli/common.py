"""What every command composes from its flags: `open_store(args)`, `model_settings(args)`,
`load_models(args)`, `build_services(args)`, and the `command` decorator (a clear message on stderr
and exit code 2 for bad input or a model that cannot be loaded; no traceback)."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from assistant.app.cli.flags import FlagError, from_args
from assistant.lm.config import (
    GenerationSettings,
    ModelSettings,
)
from reward.select import ChoiceConfig

_IMPORT_T0 = time.time()

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
    """Wrap a command: bad input (arguments that are not UTF-8 too), unknown ids and model-loading
    failures print one clear line on stderr and return exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args) or 0)
        except UnicodeEncodeError as e:  # bytes that are not UTF-8 on the command line (PEP 383 surrogates)
            around = e.object[max(0, e.start - 20):e.end + 20] if isinstance(e.object, str) else ""
            return fail(f"an argument is not valid UTF-8 text ({around!r}); inkloop stores text as UTF-8")
        except Exception as e:
            if isinstance(e, _user_error_types()):
                return fail(str(e))
            raise

    return run

def _user_error_types() -> tuple[type[BaseException], ...]:
    """StoreError (NotFound included), InputError, ModelLoadError: looked up lazily so a command
    that never touched torch (status, rate) does not import it just to name an exception."""
    from storage.records import StoreError

    types: list[type[BaseException]] = [StoreError, FlagError]
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

def policy_source(store, failed: Callable[[], Any] = tuple) -> Callable[[str], tuple[int, str] | None]:
    """The Generator's version_source: for a profile, its live published policy as (id, dir); once
    the live one is among `failed()` (it could not be loaded), the profile's newest loadable
    published version instead (None: the base model)."""
    from storage.artifacts import fallback_version

    def live(profile: str) -> tuple[int, str] | None:
        v = store.live_version(profile, "policy")
        bad = set(failed())
        if v is not None and v.id in bad:
            v = fallback_version(store, profile, "policy", exclude=bad)
        return (v.id, v.path) if v else None

    return live

def build_services(args: argparse.Namespace, store=None, lm=None, embedder=None, with_embedder: bool = True,
                   busy=None):
    """Compose Store + Generator (serving each request its profile's live policy) + Library + Services
    (`args.profile`: the profile of requests that name none)."""
    from assistant.app.services import Services
    from assistant.lm.config import embedder_name
    from assistant.lm.generate import Generator
    from assistant.lm.library import Library

    store = store if store is not None else open_store(args)
    if lm is None:
        lm, loaded_emb = load_models(args, with_embedder=with_embedder and embedder is None)
        embedder = embedder if embedder is not None else loaded_emb
    profile = getattr(args, "profile", "default") or "default"
    box: dict[str, Any] = {}  # the source skips what this generator could not load
    gen = Generator(lm.model, lm.tokenizer, version_source=policy_source(store, lambda: box["g"].failed_versions),
                    device=lm.device, busy=busy)
    box["g"] = gen
    library = Library(store, embedder, embedder_name(embedder)) if embedder is not None else None
    choice = from_args(ChoiceConfig, args, prefix="choice_")  # the serve flags --choice-*, else the defaults
    return Services(store, gen, library, model_name=lm.name, generation=GenerationSettings(), default_profile=profile,
                    choice=choice, embedder=embedder)
