"""Flags from config dataclasses: each flag is defined once, from the field's default and docstring.

`add_flags(parser, Config, prefix=...)` adds one `--name` per field (bools get --name / --no-name,
tuples take comma-separated values, `X | None` fields accept "none"); `from_args(Config, args)`
builds the dataclass back from what was given. Flags added this way default to "not given"
(argparse.SUPPRESS), so a sub-command never overwrites a value given before it on the command line,
and an untouched field keeps the dataclass default.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from typing import Any, Iterable


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (its first sentence, one line)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr) \
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _parser_for(tp: Any) -> tuple[Any, bool]:
    """(argparse type, is_bool) for a field annotation."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = type(None) in typing.get_args(tp)
    base = args[0] if optional and len(args) == 1 else tp
    if base is bool:
        return None, True
    if typing.get_origin(base) is tuple:
        inner = (typing.get_args(base) or (str,))[0]
        conv = inner if inner in (int, float) else str

        def tuple_of(text: str) -> tuple:
            return tuple(conv(x.strip()) for x in text.split(",") if x.strip())
        fn = tuple_of
    elif base in (int, float, str):
        fn = base
    else:
        return None, False  # not a command-line field (nested config, dict, ...)
    if optional:
        def maybe(text: str, _fn=fn):
            return None if text.strip().lower() == "none" else _fn(text)
        maybe.__name__ = getattr(fn, "__name__", "value")
        return maybe, False
    return fn, False


def _fmt_default(v: Any) -> str:
    if isinstance(v, tuple):
        return ",".join(map(str, v)) or '""'
    return str(v)


def add_flags(parser: argparse.ArgumentParser | Any, cls: type, *, prefix: str = "", only: Iterable[str] | None = None,
              exclude: Iterable[str] = (), defaults: Any = None, choices: dict[str, Iterable[Any]] | None = None) -> None:
    """One flag per field of dataclass `cls` (`--{prefix}{name}`, dashes for underscores)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    keep = set(only) if only is not None else None
    base = defaults if defaults is not None else cls()
    for f in dataclasses.fields(cls):
        if (keep is not None and f.name not in keep) or f.name in set(exclude) or not f.init:
            continue
        conv, is_bool = _parser_for(hints[f.name])
        if conv is None and not is_bool:
            continue
        dest = prefix + f.name
        flag = "--" + dest.replace("_", "-")
        default = getattr(base, f.name)
        help_ = f"{docs.get(f.name, '')} (default {_fmt_default(default)})".strip().replace("%", "%%")
        kw: dict[str, Any] = dict(dest=dest, default=argparse.SUPPRESS, help=help_)
        if is_bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            if choices and f.name in choices:
                kw["choices"] = list(choices[f.name])
            parser.add_argument(flag, type=conv, metavar=f.name.upper(), **kw)


class FlagError(ValueError):
    """A setting given on the command line that its config's validate() rejects (exit code 2)."""


def validated(cfg: Any) -> Any:
    """`cfg` after its validate(); a rejection becomes a FlagError with the same message."""
    try:
        cfg.validate()
    except ValueError as e:
        raise FlagError(str(e)) from None
    return cfg


def from_args(cls: type, args: argparse.Namespace, *, prefix: str = "", base: Any = None,
              exclude: Iterable[str] = (), **nested: Any):
    """The dataclass `cls` with every field given on the command line (and `nested` fields) set;
    `exclude` names fields whose flag is not this dataclass's (e.g. the common --threads)."""
    obj = base if base is not None else cls()
    skip = set(exclude) | set(nested)
    given = {f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls)
             if f.init and f.name not in skip and hasattr(args, prefix + f.name)}
    return dataclasses.replace(obj, **given, **nested)


# ----------------------------------------------------------------------------- the learner's flags
def add_learner_flags(parser, *, exclude: Iterable[str] = ()) -> None:
    """LearnerConfig's flags, its RL update's as --rl-*, its reward model's as --rm-* (shared by
    `inkloop learn` and `inkloop simulate`, so each means the same in both)."""
    from reward.config import RewardTrainConfig
    from reward.loop.config import LearnerConfig
    from reward.rl.config import ALGOS, RLConfig

    add_flags(parser, LearnerConfig, exclude={"threads", *exclude})
    add_flags(parser, RLConfig, prefix="rl_", choices={"algo": ALGOS})
    add_flags(parser, RewardTrainConfig, prefix="rm_", exclude={"seed"})


def learner_config(args: argparse.Namespace):
    """The LearnerConfig the flags of add_learner_flags (and --threads) describe."""
    from reward.config import RewardTrainConfig
    from reward.loop.config import LearnerConfig
    from reward.rl.config import RLConfig

    base = LearnerConfig()
    cfg = from_args(LearnerConfig, args, base=base, exclude={"threads"},
                    rl=from_args(RLConfig, args, prefix="rl_", base=base.rl),
                    rm=from_args(RewardTrainConfig, args, prefix="rm_", base=base.rm))
    if getattr(args, "threads", None):
        cfg.threads = int(args.threads)
    validated(cfg)
    validated(cfg.rl)
    validated(cfg.rm)
    return cfg
