"""Services: the one place the UI, the REST API and the CLI call into.

`Services` composes the store, the generator and the library. It validates input (raising
`InputError` with a message a person can act on, before anything is written), builds the prompt,
generates, and records the request with its suggestions and the policy version that made them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np

from assistant.app.limits import Cancelled, GenerationGate, ServeLimits, Ticket
from assistant.lm.config import (
    BUILTIN_STYLES,
    INSPIRE_KINDS,
    MAX_K,
    MAX_KEYWORD_CHARS,
    MAX_KEYWORDS,
    MAX_NEW_TOKENS,
    MAX_SAMPLE_CHARS,
    MAX_TEXT_CHARS,
    MODES,
    GenerationSettings,
)
from assistant.lm.generate import Generator, SuggestResult
from assistant.lm.library import Library
from assistant.lm.prompts import build_prompt
from reward.feedback import context_of
from reward.model import load_reward_model
from reward.select import ChoiceConfig, choose, member_scores
from storage.records import NotFound, StoreError
from storage.store import Store

log = logging.getLogger(__name__)


MIN_MATERIAL_SCORE = 0.2
"""Library snippets below this cosine similarity to the inspire query are not offered as material."""


SAMPLE_STYLE_NAMES = ("sample", "imitate")
"""Style values that mean "imitate the sample text" (reserved: no defined style may take them)."""


class InputError(ValueError):
    """Bad input from a person or a client. Nothing was written."""


@dataclass
class SuggestRequest:
    """One request for suggestions, as the UI, the API and the CLI send it."""

    mode: str
    text: str = ""
    style: str | None = None
    sample: str | None = None
    keywords: list[str] | str | None = None
    inspire_kind: str = "ideas"
    k: int = 3
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 64
    seed: int | None = None
    profile: str = "default"
    document_id: int | None = None
    variety: bool = False
    """Candidates from different angles (GenerationSettings.variety)."""
    draw: int | None = None
    """Reward-guided choice: candidates drawn to choose the K shown from (None: the server's
    ChoiceConfig.draw). Only used when the profile has a reward model."""
    choice: bool | None = None
    """Reward-guided choice on or off for this request (None: the server's ChoiceConfig.enabled)."""

    def generation(self, base: GenerationSettings | None = None) -> GenerationSettings:
        g = GenerationSettings(**asdict(base)) if base else GenerationSettings()
        g.k, g.temperature, g.top_p = int(self.k), float(self.temperature), float(self.top_p)
        g.max_new_tokens, g.seed, g.variety = int(self.max_new_tokens), self.seed, bool(self.variety)
        return g


@dataclass
class SuggestResponse:
    request_id: int
    policy_version: int
    suggestions: list[dict[str, Any]]
    material: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    choice: dict[str, Any] | None = None
    """With reward-guided choice: reward_version, draw, drawn, kappa, explore (each suggestion
    also carries its score and whether it was the exploration slot); None without."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _keywords(kw: list[str] | str | None) -> list[str]:
    if kw is None:
        return []
    if isinstance(kw, str):
        kw = kw.split(",")
    return [k.strip() for k in kw if k and k.strip()]


def validate_request(req: SuggestRequest, custom_styles: dict[str, str] | None = None) -> None:
    """Raise InputError for anything the generator cannot or should not take."""
    if req.mode not in MODES:
        raise InputError(f"unknown mode {req.mode!r}; expected one of {', '.join(MODES)}")
    text = req.text or ""
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    if req.sample and len(req.sample) > MAX_SAMPLE_CHARS:
        raise InputError(f"sample is {len(req.sample)} characters; the limit is {MAX_SAMPLE_CHARS}")
    if isinstance(req.keywords, str) and len(req.keywords) > MAX_KEYWORDS * (MAX_KEYWORD_CHARS + 2):
        raise InputError(f"keywords are {len(req.keywords)} characters; at most {MAX_KEYWORDS} keywords "
                         f"of {MAX_KEYWORD_CHARS} characters each")
    kws = _keywords(req.keywords)
    if len(kws) > MAX_KEYWORDS:
        raise InputError(f"{len(kws)} keywords; the limit is {MAX_KEYWORDS}")
    if any(len(k) > MAX_KEYWORD_CHARS for k in kws):
        raise InputError(f"a keyword is limited to {MAX_KEYWORD_CHARS} characters")
    if req.mode in ("continue", "restyle") and not text.strip():
        raise InputError(f"{req.mode} needs non-empty text")
    if req.mode == "inspire":
        if not text.strip() and not kws:
            raise InputError("inspire needs keywords or a theme")
        if req.inspire_kind not in INSPIRE_KINDS:
            raise InputError(f"unknown inspire_kind {req.inspire_kind!r}; expected one of {', '.join(INSPIRE_KINDS)}")
    if req.mode == "restyle":
        style = req.style or ""
        if style in ("", *SAMPLE_STYLE_NAMES):
            if not (req.sample or "").strip():
                raise InputError("restyle needs a style, or a sample text to imitate")
        elif style not in {"formal", "casual", "concise", "vivid", "poetic"} and style not in (custom_styles or {}):
            raise InputError(
                f"unknown style {style!r}; use formal, casual, concise, vivid, poetic, 'sample' or a style you defined"
            )
    try:
        k = int(req.k)
    except (TypeError, ValueError):
        raise InputError("k must be an integer") from None
    if not 1 <= k <= MAX_K:
        raise InputError(f"k must be between 1 and {MAX_K}, got {req.k}")
    if not 1 <= int(req.max_new_tokens) <= MAX_NEW_TOKENS:
        raise InputError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}")
    if not 0.0 <= float(req.temperature) <= 5.0:
        raise InputError("temperature must be between 0 and 5")
    if not 0.0 < float(req.top_p) <= 1.0:
        raise InputError("top_p must be in (0, 1]")
    if req.draw is not None:
        try:
            ChoiceConfig(draw=int(req.draw)).validate()
        except (TypeError, ValueError) as e:
            raise InputError(str(e)) from None
    for s in (text, req.sample or "", req.style or "", *kws):
        if "\x00" in s:
            raise InputError("text contains a NUL character")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("text is not valid UTF-8 (it contains lone surrogates)") from None


class Services:
    def __init__(
        self,
        store: Store,
        generator: Generator,
        library: Library | None = None,
        model_name: str = "",
        generation: GenerationSettings | None = None,
        default_profile: str = "default",
        limits: ServeLimits | None = None,
        choice: ChoiceConfig | None = None,
        embedder: Any = None,
    ):
        self.store, self.generator, self.library = store, generator, library
        self.model_name = model_name
        self.generation_defaults = generation or GenerationSettings()
        self.default_profile = default_profile
        self.limits = limits or ServeLimits()
        self.gate = GenerationGate(self.limits)
        """Every suggestion (UI, API) passes it: 1 generating + max_waiting waiting, the rest Busy."""
        if getattr(generator, "on_error", None) is None:
            generator.on_error = self._policy_load_failed
        self.choice = choice or ChoiceConfig()
        self.choice.validate()
        self.embedder = embedder if embedder is not None else getattr(library, "embedder", None)
        self._reward_models: dict[str, tuple[int, Any]] = {}  # profile -> (reward version id, model)
        self._rm_lock = threading.Lock()

    def _policy_load_failed(self, profile: str, version_id: int, message: str) -> None:
        """The generator could not load a profile's live version (it keeps generating with what
        served that profile last, else the base model)."""
        self.store.add_event("policy_load_failed", message, profile, version_id)

    # ------------------------------------------------------------------ reward-guided choice
    def reward_model(self, profile: str) -> tuple[int, Any] | None:
        """(version id, model) of the profile's published reward model, loaded once per version
        (a cheap store query per request notices a newer one); None without one, without the
        embedder, or for an LM-backbone reward model (choice needs the embedder heads)."""
        if self.embedder is None:
            return None
        live = self.store.live_version(profile, "reward")
        if live is None:
            return None
        with self._rm_lock:
            cached = self._reward_models.get(profile)
            if cached is not None and cached[0] == live.id:
                return cached
            try:
                rm = load_reward_model(live.path, self.embedder, self.store)
            except (OSError, ValueError, KeyError) as e:  # missing files, LM backbone, other embedder
                log.warning("reward version %s cannot serve the choice: %s", live.id, e)
                return None
            self._reward_models[profile] = (live.id, rm)
            return live.id, rm

    def _chooser(self, req: SuggestRequest) -> tuple[int, Any, int] | None:
        """(reward version, model, N) when this request gets reward-guided choice, else None."""
        on = self.choice.enabled if req.choice is None else bool(req.choice)
        draw = int(self.choice.draw if req.draw is None else req.draw)
        if not on or draw <= int(req.k):
            return None
        live = self.reward_model(req.profile)
        return None if live is None else (live[0], live[1], draw)

    def _choose(self, req: SuggestRequest, options: dict[str, Any], result: SuggestResult,
                chooser: tuple[int, Any, int]) -> tuple[SuggestResult, dict[str, Any]]:
        """Score every drawn candidate with the reward model and keep the K to show (reward.select)."""
        version, rm, draw = chooser
        ctx = context_of(SimpleNamespace(mode=req.mode, text=req.text or "", options=self._stored_options(req, options)))
        scores = member_scores(rm, ctx, result.texts)
        rng = np.random.default_rng(None if req.seed is None else int(req.seed) + 7)
        ch = choose(scores, int(req.k), self.choice.kappa, self.choice.explore, rng)
        angles = result.angles or [""] * len(result.texts)
        chosen = set(ch.indices)
        info = {
            "reward_version": int(version), "draw": draw, "drawn": len(result.texts), "kappa": self.choice.kappa,
            "explore": self.choice.explore, "members": int(scores.shape[0]),
            "scores": [round(x, 4) for x in ch.score], "mean": [round(x, 4) for x in ch.mean],
            "spread": [round(x, 4) for x in ch.spread], "exploration": list(ch.exploration),
            "unshown": [t for i, t in enumerate(result.texts) if i not in chosen],
        }
        shown = replace(result, texts=[result.texts[i] for i in ch.indices], angles=[angles[i] for i in ch.indices])
        return shown, info

    # ------------------------------------------------------------------ suggestions
    def _prepare(self, req: SuggestRequest):
        req.profile = (req.profile or self.default_profile).strip() or self.default_profile
        custom = self.store.styles(req.profile)
        validate_request(req, custom)
        material: list[dict[str, Any]] = []
        kws = _keywords(req.keywords)
        if req.mode == "inspire" and self.library is not None:
            query = " ".join([*kws, req.text or ""]).strip()
            material = [
                {"id": m.snippet.id, "text": m.snippet.text, "score": round(m.score, 4)}
                for m in self.library.search(req.profile, query, top_k=5)
                if m.score >= MIN_MATERIAL_SCORE  # unrelated snippets would only derail the prompt
            ]
        options = {
            "style": req.style,
            "sample": req.sample,
            "custom_styles": custom,
            "keywords": kws,
            "inspire_kind": req.inspire_kind,
            "material": [m["text"] for m in material[:3]],
        }
        try:
            prompt = build_prompt(req.mode, req.text, options)
        except ValueError as e:
            raise InputError(str(e)) from None
        return prompt, options, material

    @staticmethod
    def _stored_options(req: SuggestRequest, options: dict[str, Any]) -> dict[str, Any]:
        """The request's options as the store keeps them (what the reward model's context reads)."""
        stored_opts = {k: v for k, v in options.items() if k not in ("custom_styles",)}
        stored_opts.update(
            k=req.k, temperature=req.temperature, top_p=req.top_p, max_new_tokens=req.max_new_tokens, seed=req.seed,
            variety=bool(req.variety),
        )
        return stored_opts

    def _record(self, req: SuggestRequest, options, result, material, t0, choice=None) -> SuggestResponse:
        stored_opts = self._stored_options(req, options)
        if choice is not None:
            stored_opts["choice"] = choice  # scores and exploration aligned with the suggestions' idx
        if req.variety:
            stored_opts["angles"] = list(result.angles)  # aligned with the suggestions' idx
        rec = self.store.record_request(
            profile_id=req.profile,
            mode=req.mode,
            text=req.text or "",
            options=stored_opts,
            prompt=result.prompt_text,
            policy_version=result.policy_version,
            suggestions=result.texts,
            document_id=req.document_id,
        )
        suggestions = []
        for i, (s, a) in enumerate(zip(rec.suggestions, result.angles or [""] * len(rec.suggestions))):
            item = {"id": s.id, "text": s.text, **({"angle": a} if a else {})}
            if choice is not None:
                item.update(score=choice["scores"][i], exploration=bool(choice["exploration"][i]))
            suggestions.append(item)
        return SuggestResponse(
            request_id=rec.id,
            policy_version=rec.policy_version,
            suggestions=suggestions,
            material=material,
            seconds=round(time.perf_counter() - t0, 3),
            choice=None if choice is None else {k: choice[k] for k in
                                                ("reward_version", "draw", "drawn", "kappa", "explore", "members")},
        )

    def _settings(self, req: SuggestRequest, chooser) -> GenerationSettings:
        gen = req.generation(self.generation_defaults)
        if chooser is not None:
            gen.draw = chooser[2]
        return gen

    def _generate(self, req: SuggestRequest, on_update: Callable[[list[str]], None] | None = None,
                  ticket: Ticket | None = None):
        """Validate and build the prompt, then (with a ticket: once it is this request's turn, until its
        deadline) generate; with a reward model, draw N and keep the K chosen to show."""
        prompt, options, material = self._prepare(req)
        if on_update is not None:
            on_update([])  # the input is valid: the request is accepted (it may wait for the model)
        chooser = self._chooser(req)
        with ticket.generating() if ticket is not None else contextlib.nullcontext():
            result = self.generator.suggest(prompt, req.text or "", self._settings(req, chooser), on_update=on_update,
                                            should_stop=ticket.should_stop if ticket else None, profile=req.profile)
        choice = None
        if chooser is not None:
            result, choice = self._choose(req, options, result, chooser)
        return result, options, material, choice

    def suggest(self, req: SuggestRequest, ticket: Ticket | None = None,
                on_update: Callable[[list[str]], None] | None = None) -> SuggestResponse:
        """K recorded suggestions. Passes the generation gate (Busy when it is full) unless the caller
        was admitted already (`ticket`); stops at the ticket's deadline, and records nothing when
        the ticket was cancelled (the client left). `on_update` gets the partial candidates."""
        t0 = time.perf_counter()
        ticket = ticket or self.gate.admit()
        try:
            result, options, material, choice = self._generate(req, on_update, ticket)
        finally:
            ticket.release()
        if ticket.cancelled:
            raise Cancelled("the request was cancelled: nothing recorded")
        return self._record(req, options, result, material, t0, choice)

    def preview(self, req: SuggestRequest):
        """Suggestions for `req` from the live policy (with the reward-guided choice when it applies),
        recording nothing (held-out evaluation)."""
        return self._generate(req)[0]

    def suggest_stream(self, req: SuggestRequest) -> Iterator[list[str] | SuggestResponse]:
        """Yield partial candidate lists while generating, then the recorded SuggestResponse."""
        t0 = time.perf_counter()
        prompt, options, material = self._prepare(req)
        ticket = self.gate.admit()
        result = None
        chooser = self._chooser(req)
        try:
            with ticket.generating():
                events = self.generator.stream(prompt, req.text or "", self._settings(req, chooser),
                                               should_stop=ticket.should_stop, profile=req.profile)
                with contextlib.closing(events):  # closed early (the reader left): generation stops
                    for ev in events:
                        if ev.done:
                            result = ev.result
                        else:
                            yield ev.partial
        finally:
            ticket.release()
        choice = None
        if chooser is not None:
            result, choice = self._choose(req, options, result, chooser)
        yield self._record(req, options, result, material, t0, choice)

    # ------------------------------------------------------------------ feedback
    def feedback(
        self,
        suggestion_id: int,
        kind: str,
        value: float | None = None,
        edited_text: str | None = None,
        ranking: list[int] | None = None,
        source: str = "api",
    ) -> int:
        if edited_text is not None and len(edited_text) > MAX_TEXT_CHARS:
            raise InputError(f"edited_text is limited to {MAX_TEXT_CHARS} characters")
        try:
            return self.store.add_feedback(suggestion_id, kind, value, edited_text, ranking, source)
        except NotFound:
            raise
        except StoreError as e:
            raise InputError(str(e)) from None

    # ------------------------------------------------------------------ library and styles
    def add_snippet(self, text: str, profile: str | None = None, source: str = "pasted") -> int:
        if self.library is None:
            raise InputError("the library needs the embedder, which is not loaded")
        try:
            return self.library.add(profile or self.default_profile, text, source)
        except ValueError as e:
            raise InputError(str(e)) from None

    def search_library(self, query: str, profile: str | None = None, top_k: int = 5) -> list[dict[str, Any]]:
        if self.library is None:
            return []
        return [
            {"id": m.snippet.id, "text": m.snippet.text, "score": round(m.score, 4), "source": m.snippet.source}
            for m in self.library.search(profile or self.default_profile, query, top_k)
        ]

    def save_style(self, name: str, description: str, profile: str | None = None) -> None:
        if (name or "").strip() in (*BUILTIN_STYLES, *SAMPLE_STYLE_NAMES):
            raise InputError(f"{name.strip()!r} is a built-in style name; choose another")
        try:
            self.store.save_style(profile or self.default_profile, name, description)
        except StoreError as e:
            raise InputError(str(e)) from None

    # ------------------------------------------------------------------ status
    def status(self, profile: str | None = None) -> dict[str, Any]:
        """The profile's live policy and reward versions, the policy version that served its last
        request, counts and its learner's state."""
        profile = profile or self.default_profile
        st = self.store.profile_status(profile)
        live = st["policy_version"]
        failed = bool(live) and live in self.generator.failed_versions
        return {
            "model": self.model_name,
            **st,
            "loaded_policy_version": self.generator.served_version(profile),
            "policy_error": self.generator.load_errors.get(live) if failed else None,
        }
