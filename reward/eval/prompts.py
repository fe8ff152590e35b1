"""Evaluation and simulation prompts: one format (assets/prompts.json, JSON or JSONL files), one loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from assistant.lm.config import ASSETS
from storage.jsonl import decode_json


# ----------------------------------------------------------------------------- prompts
@dataclass
class EvalPrompt:
    """One evaluation request: a mode, its text, and the prompt options (style, keywords, ...)."""

    mode: str
    text: str
    options: dict[str, Any] = field(default_factory=dict)
    """style, sample, keywords, inspire_kind: what a SuggestRequest takes besides mode and text."""
    id: str = ""
    """The prompt's id in its file, if it has one."""

    def fields(self) -> dict[str, Any]:
        """mode, text and the options as one mapping, keywords as a list (what a rater reads)."""
        kws = self.options.get("keywords") or []
        if isinstance(kws, str):
            kws = [k.strip() for k in kws.split(",") if k.strip()]
        return {"mode": self.mode, "text": self.text, **self.options, "keywords": list(kws)}

def _one_prompt(item: Any, mode: str | None = None) -> EvalPrompt:
    if isinstance(item, str):
        if mode is None:
            raise ValueError(f"a bare string prompt needs a mode: {item[:40]!r}")
        return EvalPrompt(mode, item)
    if not isinstance(item, dict):
        raise ValueError(f"a prompt must be an object or a string, got {type(item).__name__}")
    m = item.get("mode", mode)
    if not isinstance(m, str) or m not in ("continue", "restyle", "inspire"):
        raise ValueError(f"prompt has no valid mode (continue|restyle|inspire): {str(item)[:80]}")
    text = item.get("text") or item.get("theme") or ""
    if not isinstance(text, str):
        raise ValueError(f"a prompt's text must be a string: {str(item)[:80]}")
    if not isinstance(item.get("options") or {}, dict):
        raise ValueError(f"a prompt's options must be an object: {str(item)[:80]}")
    opts = dict(item.get("options") or {})
    for k_in, k_out in (("style", "style"), ("sample", "sample"), ("keywords", "keywords"),
                        ("kind", "inspire_kind"), ("inspire_kind", "inspire_kind")):
        if item.get(k_in):
            opts.setdefault(k_out, item[k_in])
    for k, v in opts.items():
        texts = v if k == "keywords" and isinstance(v, list) else [v]
        if not all(isinstance(x, str) for x in texts):
            raise ValueError(f"a prompt's {k} must be text: {str(item)[:80]}")
    return EvalPrompt(m, text, opts, str(item.get("id") or ""))

def parse_prompts(data: Any, split: str | None = "heldout") -> list[EvalPrompt]:
    """Accepts: a list of {"mode", "text", options...}; a dict mode -> list (strings or objects,
    like assets/examples.json); or a dict holding such a value under "held_out", "eval", "test"
    or "prompts" (like assets/prompts.json). When the objects carry a "split" field, only those of
    `split` are kept (None keeps all)."""
    if isinstance(data, list) and split and any(isinstance(it, dict) and "split" in it for it in data):
        kept = [it for it in data if isinstance(it, dict) and it.get("split") == split]
        if not kept:
            raise ValueError(f"no prompts with split {split!r}")
        data = kept
    if isinstance(data, dict):
        for key in ("held_out", "heldout", "eval", "test", "prompts"):
            if key in data:
                return parse_prompts(data[key], split)
        out = []
        for mode in ("continue", "restyle", "inspire"):
            if not isinstance(data.get(mode, []), list):
                raise ValueError(f"prompts under {mode!r} must be a list")
            out += [_one_prompt(it, mode) for it in data.get(mode, [])]
        if not out:
            raise ValueError("no prompts found: expected a list, or keys continue/restyle/inspire or held_out")
        return out
    if isinstance(data, list):
        return [_one_prompt(it) for it in data]
    raise ValueError(f"cannot read prompts from a {type(data).__name__}")

def spread(prompts: Sequence[EvalPrompt], n: int | None) -> list[EvalPrompt]:
    """At most n prompts taken round-robin over the modes (so a small limit still covers all three)."""
    if not n or n >= len(prompts):
        return list(prompts)
    by_mode: dict[str, list[EvalPrompt]] = {}
    for p in prompts:
        by_mode.setdefault(p.mode, []).append(p)
    out, i = [], 0
    while len(out) < n:
        for ps in by_mode.values():
            if i < len(ps) and len(out) < n:
                out.append(ps[i])
        i += 1
    return out

def load_prompts(path: str | Path | None = None, split: str | None = "heldout") -> list[EvalPrompt]:
    """Prompts from a JSON or JSONL file; by default the held-out prompts of assets/prompts.json,
    else assets/examples.json."""
    if path is None:
        for cand in (ASSETS / "prompts.json", ASSETS / "examples.json"):
            if cand.is_file():
                path = cand
                break
        else:
            raise ValueError("no prompts: pass --prompts FILE (JSON or JSONL)")
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"prompts file {p} does not exist")
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"prompts file {p} is not UTF-8 text") from None
    try:
        data = decode_json(raw)
    except ValueError:
        try:
            data = [decode_json(line) for line in raw.splitlines() if line.strip()]
        except ValueError as e:
            raise ValueError(f"prompts file {p} is neither JSON nor JSONL: {e}") from None
    try:
        prompts = parse_prompts(data, split)
    except RecursionError:
        raise ValueError(f"prompts file {p} is nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"prompts file {p}: {e}") from None
    if not prompts:
        raise ValueError(f"prompts file {p} holds no prompts")
    return prompts

