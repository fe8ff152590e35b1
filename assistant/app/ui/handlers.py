"""The writing UI's handlers: plain functions whose first argument is the Services facade.

assistant.app.ui.writer binds them to components; tests call them directly. No torch, no SQL.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Iterator

import gradio as gr

from assistant.app.limits import Busy
from assistant.app.services import InputError, Services, SuggestRequest, SuggestResponse
from assistant.lm.config import (
    BUILTIN_STYLES,
    MAX_K,
)
from assistant.lm.prompts import ANGLE_NAMES
from storage.records import NotFound, StoreError

log = logging.getLogger(__name__)

SAMPLE_STYLE = "sample"

UNDO_DEPTH = 20

DRAFT_PLACEHOLDER = "Start writing; then ask for a continuation."

# ============================================================================= pure helpers
def insert_into_draft(draft: str, text: str, mode: str, source: str = "") -> str:
    """Where an accepted suggestion goes in the draft.

    - continue: appended to the draft (a space between them unless the draft ends in whitespace);
    - restyle: replaces the last occurrence of the restyled passage if the draft contains it,
      else it is appended as a new paragraph;
    - inspire: appended as a new paragraph.
    """
    draft = draft or ""
    text = (text or "").strip()
    if not text:
        return draft
    if not draft.strip():
        return text
    if mode == "restyle" and source.strip() and source.strip() in draft:
        src = source.strip()
        i = draft.rfind(src)
        return draft[:i] + text + draft[i + len(src):]
    if mode == "continue":
        sep = "" if draft[-1].isspace() or text[0] in ",.;:!?)]}'\"”’…" else " "
        return draft + sep + text
    return draft.rstrip() + "\n\n" + text

def last_paragraph(text: str) -> str:
    """The last non-empty paragraph of a draft (what Restyle takes from the draft)."""
    paras = [p.strip() for p in (text or "").split("\n\n") if p.strip()]
    return paras[-1] if paras else ""

def _seed(seed: Any) -> int | None:
    if seed in (None, ""):
        return None
    try:
        return int(float(seed))
    except (TypeError, ValueError, OverflowError):  # "abc", "nan", "inf"
        raise gr.Error(f"seed must be a whole number, got {seed!r}") from None

def _profile(services: Services, profile: str | None) -> str:
    p = (profile or "").strip() or services.default_profile
    if len(p) > 64:
        raise gr.Error("a profile name is limited to 64 characters")
    return p

def _empty_cands() -> dict[str, Any]:
    return {"mode": None, "source": "", "request_id": None, "policy_version": None, "items": [], "done": False}

# ============================================================================= header, load, draft
def header_text(services: Services, profile: str | None = None) -> str:
    """Model name, and the profile's live policy version (0 = the base model), reward model
    version and learner state: what serves and chooses this profile's suggestions."""
    profile = _profile(services, profile)
    try:
        st = services.status(profile)
    except Exception:  # noqa: BLE001 - a header must never break the page
        log.exception("status failed")
        return f"**Model** {services.model_name or '?'}"
    live = int(st.get("policy_version") or 0)
    loaded = int(st.get("loaded_policy_version") or 0)
    live_txt = f"v{live}" if live else "v0 (base model)"
    fb = sum((st.get("feedback_by_kind") or {}).values())
    extra = "" if loaded == live else f" (last served by v{loaded}: switches at the next suggestion)"
    if st.get("policy_error"):
        extra = f" · ⚠️ {st['policy_error']}"
    rm = int(st.get("reward_version") or 0)
    ls = st.get("learner") or {}
    learner = "not run yet" if not ls else ("paused" if ls.get("paused") else ls.get("phase") or "idle")
    return (
        f"**Model** `{services.model_name or '?'}` · **profile** `{profile}` · **live policy** {live_txt}{extra} · "
        f"**reward model** {f'v{rm}' if rm else 'none yet'} · **learner** {learner} · {fb} ratings so far"
    )

def style_choices(services: Services, profile: str | None) -> list[tuple[str, str]]:
    custom = services.store.styles(_profile(services, profile))
    return (
        [(s, s) for s in BUILTIN_STYLES]
        + [("imitate this sample", SAMPLE_STYLE)]
        + [(f"{name} (yours)", name) for name in custom if name not in BUILTIN_STYLES and name != SAMPLE_STYLE]
    )

def load_page(services: Services, profile: str | None):
    """On page load (and on a profile switch): the profile, its latest draft, the draft's id,
    the style choices and the header. Returns
    (profile, profile_for_browser, draft, document_id, style_dropdown_update, header)."""
    profile = _profile(services, profile)
    doc = services.store.latest_document(profile)
    draft, doc_id = (doc["text"], int(doc["id"])) if doc else ("", None)
    styles = gr.update(choices=style_choices(services, profile))
    # the draft box starts read-only ("loading…") so nothing typed before the load can be overwritten
    draft_update = gr.update(value=draft, interactive=True, placeholder=DRAFT_PLACEHOLDER)
    return profile, profile, draft_update, doc_id, styles, header_text(services, profile)

def switch_profile(services: Services, new: str | None, current: str | None):
    """The profile box changed: load the new profile's draft. Unchanged (a blur without an edit):
    nothing moves, so a draft still being autosaved is never replaced by its older stored copy."""
    if _profile(services, new) == _profile(services, current):
        return tuple(gr.skip() for _ in range(6))
    return load_page(services, new)

def autosave_draft(services: Services, profile: str | None, draft: str, doc_id: int | None):
    """Save the draft as the profile's document (created on the first non-empty text).
    Returns (document_id, status line)."""
    profile = _profile(services, profile)
    draft = draft or ""
    if doc_id is not None:
        try:
            doc = services.store.get_document(int(doc_id))
        except NotFound:
            doc = None
        if doc is None or doc["profile_id"] != profile:
            doc_id = None
        elif doc["text"] == draft:
            return int(doc_id), gr.skip()
    if doc_id is None and not draft.strip():
        return None, ""
    try:
        new_id = services.store.save_document(profile, draft, document_id=doc_id)
    except StoreError as e:
        raise gr.Error(f"could not save the draft: {e}") from None
    return new_id, f"draft saved {time.strftime('%H:%M:%S')}"

def remember_selection(evt: gr.SelectData) -> str:
    """The text the person selected in the draft (Gradio passes it in SelectData.value)."""
    return evt.value if isinstance(evt.value, str) else ""

# ============================================================================= suggestions
def _rows_updates(texts: list[str], shown: int, reset: bool) -> list[Any]:
    """Updates for the MAX_K rows, then their text boxes, then (reset only) their star radios
    and confirmation lines."""
    rows = [gr.update(visible=i < shown) for i in range(MAX_K)]
    boxes = [gr.update(value=texts[i] if i < len(texts) else "") for i in range(MAX_K)]
    stars = [gr.update(value=None) if reset else gr.skip() for _ in range(MAX_K)]
    msgs = ["" if reset else gr.skip() for _ in range(MAX_K)]
    return rows + boxes + stars + msgs

def run_suggest(services: Services, req: SuggestRequest, source: str) -> Iterator[tuple]:
    """Stream one request. Each yield is (*rows, *boxes, *stars, *msgs, cands_state, info, material)
    as build_ui wires them; the last one carries the recorded suggestions with their ids."""
    t0 = time.perf_counter()
    k = int(req.k)
    pending = {**_empty_cands(), "mode": req.mode, "source": source}
    try:
        stream = services.suggest_stream(req)
        first = True
        for ev in stream:
            if isinstance(ev, SuggestResponse):
                items = [{"id": s["id"], "text": s["text"]} for s in ev.suggestions]
                cands = {
                    **pending,
                    "request_id": ev.request_id,
                    "policy_version": ev.policy_version,
                    "items": items,
                    "done": True,
                }
                pv = f"v{ev.policy_version}" if ev.policy_version else "v0 (base model)"
                note = "" if len(items) == k else f" (asked for {k}; the rest were duplicates or empty)"
                info = (
                    f"{len(items)} {req.mode} suggestion{'s' if len(items) != 1 else ''}{note} · "
                    f"policy {pv} · model `{services.model_name or '?'}` · request #{ev.request_id} · "
                    f"{ev.seconds:.1f} s"
                )
                if ev.choice:
                    explore = [i + 1 for i, s in enumerate(ev.suggestions) if s.get("exploration")]
                    info += (f" · best {len(items)} of {ev.choice['drawn']} drawn, chosen by reward model "
                             f"v{ev.choice['reward_version']} (scores "
                             + ", ".join(f"{s.get('score', 0):+.2f}" for s in ev.suggestions) + ")"
                             + (f" · #{explore[0]} is the exploration slot (shown to learn your taste)" if explore else ""))
                if any(s.get("angle") for s in ev.suggestions):
                    info += " · angles: " + ", ".join(
                        f"{i + 1} {ANGLE_NAMES.get(s.get('angle', ''), s.get('angle', ''))}"
                        for i, s in enumerate(ev.suggestions))
                if not items:
                    gr.Warning("The model produced no usable suggestion; try again or raise max new tokens.")
                material = format_material(ev.material) if req.mode == "inspire" else gr.skip()
                yield (*_rows_updates([i["text"] for i in items], len(items), reset=True), cands, info, material)
            else:
                info = f"⏳ generating {k} suggestion{'s' if k != 1 else ''}… {time.perf_counter() - t0:.1f} s"
                yield (*_rows_updates(list(ev), k, reset=first), pending, info, gr.skip())
                first = False
    except (InputError, Busy) as e:
        raise gr.Error(str(e)) from None
    except (StoreError, ValueError) as e:
        raise gr.Error(str(e)) from None
    except Exception as e:  # noqa: BLE001 - show a message, keep the traceback in the log
        log.exception("suggestion failed")
        raise gr.Error(f"generation failed: {type(e).__name__}: {e}") from None

def _req(services, mode, profile, k, temperature, top_p, max_new_tokens, seed, variety=False, draw=None, choice=None,
         **kw) -> SuggestRequest:
    try:
        k = int(k)
        max_new_tokens = int(max_new_tokens)
    except (TypeError, ValueError):
        raise gr.Error("K and max new tokens must be whole numbers") from None
    return SuggestRequest(
        mode=mode, profile=_profile(services, profile), k=k, temperature=float(temperature), top_p=float(top_p),
        max_new_tokens=max_new_tokens, seed=_seed(seed), variety=bool(variety),
        draw=None if draw in (None, "") else int(draw), choice=None if choice is None else bool(choice), **kw,
    )

def suggest_continue(services, profile, draft, doc_id, k, temperature, top_p, max_new_tokens, seed, variety=False,
                     draw=None, choice=None):
    req = _req(services, "continue", profile, k, temperature, top_p, max_new_tokens, seed, variety, draw, choice,
               text=draft or "", document_id=int(doc_id) if doc_id is not None else None)
    yield from run_suggest(services, req, source=draft or "")

def suggest_restyle(services, profile, passage, style, sample, k, temperature, top_p, max_new_tokens, seed,
                    variety=False, draw=None, choice=None):  # restyle takes no angle: the person named the style
    style = style or None
    req = _req(services, "restyle", profile, k, temperature, top_p, max_new_tokens, seed, False, draw, choice,
               text=passage or "", style=style, sample=(sample or None) if style in (None, SAMPLE_STYLE) else None)
    yield from run_suggest(services, req, source=passage or "")

def suggest_inspire(services, profile, keywords, theme, kind, k, temperature, top_p, max_new_tokens, seed,
                    variety=False, draw=None, choice=None):
    req = _req(services, "inspire", profile, k, temperature, top_p, max_new_tokens, seed, variety, draw, choice,
               text=theme or "", keywords=keywords or "", inspire_kind=kind or "ideas")
    yield from run_suggest(services, req, source=theme or "")

# ============================================================================= feedback
def _item(cands: dict[str, Any] | None, idx: int) -> dict[str, Any]:
    if not cands or not cands.get("done"):
        raise gr.Error("Wait until the suggestions are finished, then rate them.")
    items = cands.get("items") or []
    if not 0 <= idx < len(items):
        raise gr.Error(f"There is no suggestion {idx + 1} in the last request.")
    return items[idx]

def _feedback(services: Services, sid: int, kind: str, value=None, edited_text=None, ranking=None) -> int:
    try:
        return services.feedback(int(sid), kind, value=value, edited_text=edited_text, ranking=ranking, source="ui")
    except (InputError, StoreError) as e:
        raise gr.Error(str(e)) from None

def rate(services: Services, cands: dict[str, Any], idx: int, kind: str, value: Any = None) -> str:
    """One rating of candidate `idx`: thumb (value +1/-1), stars (value 1-5) or best.
    Returns the confirmation line."""
    item = _item(cands, idx)
    if kind == "stars":
        if value in (None, ""):
            return gr.skip()
        value = int(value)
        label = "★" * value
    elif kind == "thumb":
        value = float(value)
        label = "👍" if value > 0 else "👎"
    else:
        label = "best of these"
    fid = _feedback(services, item["id"], kind, value=value)
    return f"✓ saved {label} · rating #{fid}"

def parse_ranking(text: str, n: int) -> list[int]:
    """Candidate numbers, best first ("2 1 3", "2, 1, 3" or "2 > 1 > 3") -> 0-based indices.
    At least two, each shown (1..n), none twice; the unranked rest gives no pairs."""
    parts = [p for p in re.split(r"[\s,>;]+", (text or "").strip()) if p]
    if len(parts) < 2:
        raise gr.Error("Type at least two suggestion numbers, best first, e.g. 2 1 3.")
    if not all(p.isdigit() for p in parts):
        raise gr.Error(f"Use suggestion numbers only (1 to {n}), best first, e.g. 2 1 3.")
    nums = [int(p) for p in parts]
    bad = [x for x in nums if not 1 <= x <= n]
    if bad:
        raise gr.Error(f"There is no suggestion {bad[0]}: the last request showed 1 to {n}.")
    if len(set(nums)) != len(nums):
        raise gr.Error("Each suggestion can appear only once in a ranking.")
    return [x - 1 for x in nums]

def rank(services: Services, cands: dict[str, Any], text: str) -> str:
    """A ranking of the last request's suggestions (best first): one `rank` feedback row, which the
    reward model turns into every implied pair. Returns the confirmation line."""
    if not cands or not cands.get("done"):
        raise gr.Error("Wait until the suggestions are finished, then rank them.")
    items = cands.get("items") or []
    order = parse_ranking(text, len(items))
    ids = [items[i]["id"] for i in order]
    fid = _feedback(services, ids[0], "rank", ranking=ids)
    return f"✓ saved ranking {' > '.join(str(i + 1) for i in order)} · rating #{fid}"

def accept(services, cands, idx, draft, undo, doc_id, profile):
    """Accept candidate `idx` as is: one `accept` feedback row, the text goes into the draft (the
    draft before it is pushed on the undo stack) and the draft is saved.
    Returns (draft, undo, document_id, confirmation)."""
    item = _item(cands, idx)
    fid = _feedback(services, item["id"], "accept", value=1.0)
    new = insert_into_draft(draft, item["text"], cands.get("mode") or "continue", cands.get("source") or "")
    return _commit_draft(services, profile, draft, new, undo, doc_id, f"✓ accepted into the draft · rating #{fid}")

def accept_edit(services, cands, idx, edited, draft, undo, doc_id, profile):
    """Accept the person's edit of candidate `idx`: one `edit` feedback row with the edited text,
    which goes into the draft. Returns (draft, undo, document_id, confirmation)."""
    item = _item(cands, idx)
    edited = (edited or "").strip()
    if not edited:
        raise gr.Error("The edited suggestion is empty.")
    if edited == item["text"].strip():
        raise gr.Error("Edit the suggestion's text first (or use Accept to take it as is).")
    fid = _feedback(services, item["id"], "edit", edited_text=edited)
    new = insert_into_draft(draft, edited, cands.get("mode") or "continue", cands.get("source") or "")
    return _commit_draft(services, profile, draft, new, undo, doc_id, f"✓ your edit went into the draft · rating #{fid}")

def _commit_draft(services, profile, old, new, undo, doc_id, msg):
    undo = [*(undo or []), old or ""][-UNDO_DEPTH:]
    doc_id, _ = autosave_draft(services, profile, new, doc_id)
    return new, undo, doc_id, msg

def undo_accept(services, draft, undo, doc_id, profile):
    """Restore the draft as it was before the last accept. Returns (draft, undo, document_id, message)."""
    if not undo:
        gr.Warning("Nothing to undo.")
        return draft, undo or [], doc_id, "nothing to undo"
    *rest, previous = undo
    doc_id, _ = autosave_draft(services, profile, previous, doc_id)
    return previous, rest, doc_id, f"↶ undone ({len(rest)} more undo step{'s' if len(rest) != 1 else ''})"

# ============================================================================= library and styles
def format_material(material: list[dict[str, Any]]) -> str:
    if not material:
        return "_No matching snippets in your library yet: add some below._"
    lines = []
    for m in material:
        text = " ".join(str(m.get("text", "")).split())
        if len(text) > 280:
            text = text[:277] + "…"
        lines.append(f"- **{float(m.get('score', 0)):.2f}** · {text}")
    return "\n".join(lines)

def add_snippet(services: Services, profile, text, source: str = "pasted"):
    """Add a snippet to the profile's library. Returns (confirmation, cleared text box)."""
    try:
        sid = services.add_snippet(text or "", profile=_profile(services, profile), source=source)
    except InputError as e:
        raise gr.Error(str(e)) from None
    return f"✓ saved snippet #{sid} to your library", ""

def save_draft_to_library(services: Services, profile, draft, selection):
    """Save the selected part of the draft (or the whole draft when nothing is selected)."""
    text = (selection or "").strip() if (selection or "").strip() and (selection or "") in (draft or "") else draft
    src = "selection" if text is not draft else "draft"
    msg, _ = add_snippet(services, profile, text, source=src)
    return msg

def find_material(services: Services, profile, keywords, theme) -> str:
    query = " ".join(x for x in ((keywords or "").replace(",", " "), theme or "") if x).strip()
    if not query:
        raise gr.Error("Type keywords or a theme to search your library.")
    return format_material(services.search_library(query, profile=_profile(services, profile), top_k=5))

def save_style(services: Services, profile, name, description):
    """Save a person-defined style. Returns (style dropdown update, confirmation)."""
    name = (name or "").strip()
    profile = _profile(services, profile)
    try:
        services.save_style(name, description or "", profile=profile)
    except InputError as e:
        raise gr.Error(str(e)) from None
    return gr.update(choices=style_choices(services, profile), value=name), f"✓ saved style “{name}”"

def pick_sample(samples: dict[str, str], key: str | None) -> str:
    return samples.get(key or "", "")
