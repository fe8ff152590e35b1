"""Feedback files in and out: TRL-style JSONL, parsed and validated, imported into the store.

Turning records into reward training data, and the store's feedback into rows, is reward's
(reward.datasets).

Three formats, each one JSON object per line (the files load with
``datasets.load_dataset("json", data_files=...)``):

- **preference**: ``{"prompt", "chosen", "rejected"}``. Also accepted on import: conversational
  message lists (``[{"role", "content"}, ...]``) for any of the three, and the *implicit prompt*
  form without ``prompt`` where ``chosen`` and ``rejected`` are whole transcripts sharing a prefix
  (as in Anthropic hh-rlhf): the prompt is the shared part up to the last ``Assistant:`` marker
  (or the last shared word boundary).
- **ratings**: ``{"prompt", "completion", "rating"}`` (a number; 1-5 stars for a store import).
- **unpaired**: ``{"prompt", "completion", "label"}`` (true = good, false = bad; as for KTO).

Import validates every line first and raises ``DatasetError`` listing each bad line's number;
only a fully valid file is written, in short transactions of whole prompts so live ratings
interleave (an interrupted import, run again, writes only what is missing). A store import
creates, per distinct prompt, one request (mode ``imported``) holding its distinct completions as
suggestions, and feedback with ``source="import"``: a preference row becomes a ``rank`` of
[chosen, rejected], a rating becomes ``stars``, an unpaired label a ``thumb``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .store import Store

FORMATS = ("preference", "ratings", "unpaired")
IMPORT_MODE = "imported"
MAX_ERRORS_SHOWN = 20


class DatasetError(ValueError):
    """A file that cannot be imported; ``errors`` holds (line number, message). Nothing was written."""

    def __init__(self, path: str | Path, errors: list[tuple[int, str]]):
        self.path, self.errors = str(path), errors
        shown = "\n".join(f"  line {n}: {msg}" for n, msg in errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        super().__init__(f"{self.path}: {len(errors)} malformed line(s); nothing was imported\n{shown}{more}")


@dataclass
class PreferenceRecord:
    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0
    line: int = 0


@dataclass
class RatingRecord:
    prompt: str
    completion: str
    rating: float
    line: int = 0


@dataclass
class UnpairedRecord:
    prompt: str
    completion: str
    label: bool
    line: int = 0


@dataclass
class ParsedFile:
    path: str
    format: str
    records: list[Any] = field(default_factory=list)


# ----------------------------------------------------------------------------- parsing (pure)
def decode_json(text: str) -> Any:
    """json.loads for text a person gave (a line, a file): every way it can fail is a ValueError
    with a short message -- not only malformed JSON, also a number longer than Python reads
    (4,300 digits) and nesting deeper than the decoder recurses."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg})") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    except ValueError:  # the limit on an integer's digits
        raise ValueError("not valid JSON (a number with too many digits)") from None


def finite_number(x: Any) -> float | None:
    """x as a float when it is a number a float holds (not a bool, not nan/inf, not a 400-digit
    integer), else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        f = float(x)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def render_messages(messages: list[dict[str, Any]]) -> str:
    """A message list as plain text: "Role: content" turns separated by blank lines."""
    return "\n\n".join(f"{str(m['role']).capitalize()}: {m['content']}" for m in messages)


def _is_messages(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in x
    )


def _text(x: Any, what: str) -> str:
    """A string field, or a conversational message list (rendered; a lone assistant turn is just
    its content)."""
    if isinstance(x, str):
        return x
    if _is_messages(x):
        if all(m["role"] == "assistant" for m in x):
            return "\n\n".join(m["content"] for m in x)
        return render_messages(x)
    raise ValueError(f"{what!r} must be a string or a list of {{role, content}} messages")


def split_implicit_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen reply, rejected reply) from two transcripts sharing a prefix. The prompt
    ends after the last shared "Assistant:" marker, else at the last shared word boundary."""
    prefix = os.path.commonprefix([chosen, rejected])
    marker = "Assistant:"
    k = prefix.rfind(marker)
    if k >= 0:
        cut = k + len(marker)
        while cut < len(prefix) and prefix[cut] == " ":
            cut += 1
    elif prefix == chosen or prefix == rejected:
        cut = max(prefix.rfind(" "), prefix.rfind("\n")) + 1
    else:
        cut = len(prefix) if prefix.endswith((" ", "\n")) else max(prefix.rfind(" "), prefix.rfind("\n")) + 1
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _implicit_messages(chosen: list[dict], rejected: list[dict]) -> tuple[str, str, str]:
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return render_messages(chosen[:n]), _text(chosen[n:], "chosen"), _text(rejected[n:], "rejected")


def detect_format(obj: dict[str, Any]) -> str | None:
    if "chosen" in obj and "rejected" in obj:
        return "preference"
    if "completion" in obj and "rating" in obj:
        return "ratings"
    if "completion" in obj and "label" in obj:
        return "unpaired"
    return None


def parse_record(obj: Any, fmt: str, line: int) -> Any:
    """One JSON value -> a record of `fmt`; raises ValueError with a message for a person."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    if fmt == "preference":
        for k in ("chosen", "rejected"):
            if k not in obj:
                raise ValueError(f"missing {k!r}")
        if "prompt" in obj and obj["prompt"] not in (None, ""):
            prompt, chosen, rejected = _text(obj["prompt"], "prompt"), _text(obj["chosen"], "chosen"), _text(
                obj["rejected"], "rejected")
        elif _is_messages(obj["chosen"]) and _is_messages(obj["rejected"]):
            prompt, chosen, rejected = _implicit_messages(obj["chosen"], obj["rejected"])
        else:
            c, r = _text(obj["chosen"], "chosen"), _text(obj["rejected"], "rejected")
            prompt, chosen, rejected = split_implicit_prompt(c, r)
        if chosen == rejected:
            raise ValueError("chosen and rejected are identical")
        margin = finite_number(0.0 if obj.get("margin") is None else obj["margin"])
        if margin is None:
            raise ValueError("'margin' must be a finite number")
        return PreferenceRecord(prompt, chosen, rejected, margin, line)
    if "completion" not in obj:
        raise ValueError("missing 'completion'")
    prompt = _text(obj.get("prompt", ""), "prompt") if obj.get("prompt") is not None else ""
    completion = _text(obj["completion"], "completion")
    if not completion.strip():
        raise ValueError("empty completion")
    if fmt == "ratings":
        r = finite_number(obj.get("rating"))
        if r is None:
            raise ValueError("'rating' must be a finite number")
        return RatingRecord(prompt, completion, r, line)
    if fmt == "unpaired":
        lab = obj.get("label")
        if not isinstance(lab, bool):
            raise ValueError("'label' must be true or false")
        return UnpairedRecord(prompt, completion, lab, line)
    raise ValueError(f"unknown format {fmt!r}")


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def parse_file(path: str | Path, fmt: str = "auto", limit: int | None = None) -> ParsedFile:
    """Read and validate a whole JSONL file (``.gz`` too). Raises DatasetError listing every bad
    line (1-based numbers); never returns a partial file."""
    path = Path(path)
    if fmt not in ("auto", *FORMATS):
        raise ValueError(f"unknown format {fmt!r}; use auto, {', '.join(FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    errors: list[tuple[int, str]] = []
    records: list[Any] = []
    try:
        with _open_text(path) as fh:
            lines = list(fh)
    except UnicodeDecodeError as e:
        raise DatasetError(path, [(0, f"not UTF-8 text ({e})")]) from None
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz
        raise DatasetError(path, [(0, f"cannot be read ({e})")]) from None
    for n, raw in enumerate(lines, start=1):
        if limit is not None and len(records) >= limit:
            break
        if not raw.strip():
            continue
        try:
            obj = decode_json(raw)
        except ValueError as e:
            errors.append((n, str(e)))
            continue
        if fmt == "auto":
            fmt_here = detect_format(obj) if isinstance(obj, dict) else None
            if fmt_here is None:
                errors.append((n, "cannot tell the format: expected chosen/rejected, completion/rating "
                                  "or completion/label"))
                continue
            fmt = fmt_here
        try:
            records.append(parse_record(obj, fmt, n))
        except ValueError as e:
            errors.append((n, str(e)))
    if errors:
        raise DatasetError(path, errors)
    if not records:
        raise DatasetError(path, [(0, "no records")])
    return ParsedFile(str(path), fmt if fmt != "auto" else "preference", records)


# ----------------------------------------------------------------------------- store import
def _check_for_store(parsed: ParsedFile) -> None:
    if parsed.format == "ratings":
        bad = [(r.line, f"rating {r.rating:g} is not 1-5 stars") for r in parsed.records
               if r.rating != int(r.rating) or not 1 <= r.rating <= 5]
        if bad:
            raise DatasetError(parsed.path, bad + [(0, "store imports take ratings as integer 1-5 stars; "
                                                       "use `inkloop rm train --from FILE` for other scales")])


IMPORT_CHUNK = 250
"""Records written per transaction by `import_into_store` (whole prompts; about 0.1 s of writing)."""
IMPORT_PAUSE_S = 0.1
"""Pause between two import transactions. SQLite's lock is not fair: a writer waiting on the busy
timeout polls at most every 100 ms, so without a gap at least that long an import that commits and
begins again at once can starve the live ratings for its whole length."""


def import_id(parsed: ParsedFile, profile_id: str) -> str:
    """A key for one file's content imported into one profile (its requests carry it)."""
    h = hashlib.sha256(f"{profile_id}\0{parsed.format}\0".encode())
    for r in parsed.records:
        h.update(json.dumps(asdict(r) | {"line": 0}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def import_into_store(store: Store, parsed: ParsedFile, profile_id: str = "default",
                      chunk: int = IMPORT_CHUNK, pause_s: float = IMPORT_PAUSE_S) -> dict[str, int]:
    """Write a validated file into the store in short transactions of about `chunk` records, each
    holding whole prompts (a request with all its feedback), so live ratings interleave with a
    large import (with `pause_s` between transactions). A bad file writes nothing (it is validated whole first). An interrupted import,
    run again, writes only the prompts that are missing: each request records the file's
    `import_id`, and prompts already imported under it are skipped (counted in "skipped")."""
    _check_for_store(parsed)
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    by_prompt: dict[str, list[Any]] = {}
    for r in parsed.records:
        by_prompt.setdefault(r.prompt, []).append(r)
    key = import_id(parsed, profile_id)
    done = store.imported_prompts(profile_id, key)
    todo = [(p, recs) for p, recs in by_prompt.items() if p not in done]
    n_req = n_fb = 0
    options = {"source": "import", "file": Path(parsed.path).name, "format": parsed.format, "import_id": key}
    i = 0
    while i < len(todo):
        if i:
            time.sleep(pause_s)  # let a waiting writer in (see IMPORT_PAUSE_S)
        batch, size = [], 0
        while i < len(todo) and (not batch or size + len(todo[i][1]) <= chunk):
            batch.append(todo[i])
            size += len(todo[i][1])
            i += 1
        with store.transaction():
            for prompt, recs in batch:
                n_fb += _import_prompt(store, parsed.format, prompt, recs, options, profile_id)
                n_req += 1
    return {"requests": n_req, "feedback": n_fb, "records": len(parsed.records), "skipped": len(by_prompt) - len(todo)}


def _import_prompt(store: Store, fmt: str, prompt: str, recs: list[Any], options: dict[str, Any],
                   profile_id: str) -> int:
    """One prompt's request, its distinct completions as suggestions, and a feedback row per record."""
    texts: dict[str, None] = {}
    for r in recs:
        for t in ((r.chosen, r.rejected) if fmt == "preference" else (r.completion,)):
            texts.setdefault(t, None)
    req = store.record_request(profile_id=profile_id, mode=IMPORT_MODE, text=prompt, options=options,
                               prompt=prompt, policy_version=0, suggestions=list(texts))
    sid = {s.text: s.id for s in req.suggestions}
    for r in recs:
        if fmt == "preference":
            store.add_feedback(sid[r.chosen], "rank", ranking=[sid[r.chosen], sid[r.rejected]], source="import")
        elif fmt == "ratings":
            store.add_feedback(sid[r.completion], "stars", value=int(r.rating), source="import")
        else:
            store.add_feedback(sid[r.completion], "thumb", value=1 if r.label else -1, source="import")
    return len(recs)


# ----------------------------------------------------------------------------- writing
def write_jsonl(rows: list[dict[str, Any]], out: str | Path) -> Path:
    """Write rows atomically (temp file, fsync, rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{random.randrange(1 << 30):x}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
