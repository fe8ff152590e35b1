"""Composable reward terms for RL on the writing policy.

Every term maps a batch of (prompt, text) pairs to one number per sample (a float32 array); the
total reward is a weighted sum whose weights depend on the request's mode (`RewardConfig`). Each
term's raw values are returned beside the total, so a metric such as ``reward/length`` (and the UI)
can show *why* a suggestion scored as it did.

Terms (names are the keys in `RewardConfig` weights and in the logged metrics):

- ``rm``          the learned reward model (anything with ``.score(contexts, texts)``), standardised
                  with the model's own training mean/std when it offers ``normalize=True``. For
                  an ensemble (``.score_members``), the members' mean minus
                  ``RewardConfig.rm_uncertainty`` times their standard deviation; that spread is
                  logged as ``reward/rm_uncertainty``.
- ``length``      closeness to a target length in words: ``-min(1, |n - target| / target)``; the
                  target is per mode, and for restyle the length of the passage being rewritten.
- ``repetition``  minus the share of repeated word bigrams inside the text (rep-2): 0 is best.
- ``distinct``    share of the text's distinct word n-grams that no other candidate for the same
                  prompt uses (diversity across the K samples); 1 is fully novel.
- ``keywords``    share of the request's keywords the text mentions (inspire); 0 when none given.
- ``style``       cosine similarity of the text's embedding to the requested style's description
                  or to the pasted sample (restyle only; 0 elsewhere).
- ``fluency``     mean log-probability per token of the text under the reference model (the policy
                  with its adapter disabled), passed in by the caller.
- ``tone``        a small lexicon score of upbeat tone: (positive - negative) / (positive + negative
                  + 1) over the words of `POSITIVE_WORDS` / `NEGATIVE_WORDS`; in (-1, 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from assistant.lm.prompts import STYLE_INSTRUCTIONS
from reward.feedback import context_of
from reward.text import ngrams, repetition_rate, words

TERMS = ("rm", "length", "repetition", "distinct", "keywords", "style", "fluency", "tone")

POSITIVE_WORDS = frozenset(
    """good great happy joy joyful glad bright sunny warm cheerful delight delighted delightful love
    lovely wonderful beautiful hope hopeful smile smiled smiling laugh laughed laughter bliss calm
    kind gentle proud free alive shine shining golden sweet fun win won success celebrate brilliant
    excited amazing fresh peace peaceful grateful gift treasure dream bloom blossom""".split()
)
NEGATIVE_WORDS = frozenset(
    """bad sad sorrow grief cry cried tears fear afraid dark gloom gloomy cold bitter angry anger hate
    pain hurt lonely alone lost loss death dead die died dying grim grey gray broken ruin fail failed
    failure dread worry worried sick tired empty cruel weep wept storm bleak misery miserable""".split()
)


class Scorer(Protocol):
    def score(self, contexts: Sequence[str], texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class RolloutPrompt:
    """One prompt the policy is rolled out on, with what the reward terms need to judge a reply."""

    prompt_text: str
    """The exact string fed to the tokenizer (chat template applied), as `Request.prompt` stores it."""
    mode: str
    """continue, restyle or inspire."""
    context: str = ""
    """What the reward model conditions on (`reward.feedback.context_of(request)`)."""
    source_text: str = ""
    """The person's own text (draft to continue, passage to restyle, theme)."""
    keywords: list[str] = field(default_factory=list)
    """Keywords the reply should mention (inspire)."""
    style_text: str = ""
    """Description of the requested style, or the sample to imitate (restyle)."""

    @classmethod
    def from_request(cls, request: Any) -> "RolloutPrompt":
        """From a stored `storage.store.Request` (its rendered prompt, mode, text and options)."""

        opts = request.options or {}
        kws = opts.get("keywords") or []
        if isinstance(kws, str):
            kws = [k.strip() for k in kws.split(",") if k.strip()]
        style = opts.get("style")
        if style in (None, "", "sample", "imitate"):
            style_text = opts.get("sample") or ""
        else:
            custom = opts.get("custom_styles") or {}
            style_text = STYLE_INSTRUCTIONS.get(style) or custom.get(style) or str(style)
        return cls(
            prompt_text=request.prompt,
            mode=request.mode,
            context=context_of(request),
            source_text=request.text or "",
            keywords=list(kws),
            style_text=style_text if request.mode == "restyle" else "",
        )


# ----------------------------------------------------------------------------- pure terms
def length_term(texts: Sequence[str], targets: Sequence[float]) -> np.ndarray:
    """-min(1, |words - target| / target) per text: 0 on target, -1 at double or zero length."""
    out = []
    for t, target in zip(texts, targets):
        target = max(float(target), 1.0)
        out.append(-min(1.0, abs(len(words(t)) - target) / target))
    return np.asarray(out, np.float32)


def repetition_term(texts: Sequence[str], n: int = 2) -> np.ndarray:
    """Minus the rep-n rate of each text (0 = no repeated n-gram)."""
    return -np.asarray([repetition_rate(t, n) for t in texts], np.float32)


def distinct_term(texts: Sequence[str], groups: Sequence[Any], n: int = 2) -> np.ndarray:
    """For each text, the share of its distinct n-grams used by no other text of its group.
    Texts with no n-grams score 0."""
    grams = [set(ngrams(words(t), n)) for t in texts]
    out = np.zeros(len(texts), np.float32)
    for i, g in enumerate(grams):
        if not g:
            continue
        others: set = set()
        for j, h in enumerate(grams):
            if j != i and groups[j] == groups[i]:
                others |= h
        out[i] = len(g - others) / len(g)
    return out


def keyword_term(texts: Sequence[str], keywords: Sequence[Sequence[str]]) -> np.ndarray:
    """Share of each request's keywords mentioned in its text (as a word or word prefix, case
    insensitive, so "storm" counts "storms"); 0 when the request has none."""
    out = []
    for t, kws in zip(texts, keywords):
        kws = [k.lower().strip() for k in kws if k and k.strip()]
        if not kws:
            out.append(0.0)
            continue
        low = (t or "").lower()
        hit = sum(1 for k in kws if re.search(r"\b" + re.escape(k), low))
        out.append(hit / len(kws))
    return np.asarray(out, np.float32)


def tone_term(texts: Sequence[str]) -> np.ndarray:
    """(positive - negative) / (positive + negative + 1) over the tone lexicons; in (-1, 1)."""
    out = []
    for t in texts:
        ws = words(t)
        pos = sum(1 for w in ws if w in POSITIVE_WORDS)
        neg = sum(1 for w in ws if w in NEGATIVE_WORDS)
        out.append((pos - neg) / (pos + neg + 1))
    return np.asarray(out, np.float32)


def style_term(texts: Sequence[str], style_texts: Sequence[str], embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Cosine similarity of each text to its style description/sample; 0 where no style is given."""
    out = np.zeros(len(texts), np.float32)
    idx = [i for i, s in enumerate(style_texts) if s and texts[i].strip()]
    if not idx:
        return out
    a = np.asarray(embed([texts[i] for i in idx]), np.float32)
    b = np.asarray(embed([style_texts[i] for i in idx]), np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-8)
    b /= np.linalg.norm(b, axis=1, keepdims=True).clip(min=1e-8)
    out[idx] = (a * b).sum(1)
    return out


# ----------------------------------------------------------------------------- configuration
def _weights(**kw: float) -> dict[str, float]:
    return {t: float(kw.get(t, 0.0)) for t in TERMS}


def default_mode_weights() -> dict[str, dict[str, float]]:
    return {
        "continue": _weights(rm=1.0, length=0.2, repetition=0.5, distinct=0.1, fluency=0.05),
        "restyle": _weights(rm=1.0, length=0.2, repetition=0.5, style=0.5, fluency=0.05),
        "inspire": _weights(rm=1.0, length=0.1, repetition=0.5, distinct=0.2, keywords=0.5),
    }


@dataclass
class RewardConfig:
    """Weights of the reward terms per mode, and the terms' parameters."""

    weights: dict[str, dict[str, float]] = field(default_factory=default_mode_weights)
    """mode -> term -> weight (terms: see `TERMS`); a missing term weighs 0. Tone is 0 by default:
    an upbeat bias is a taste the person opts into, not a default."""
    length_targets: dict[str, float] = field(default_factory=lambda: {"continue": 40.0, "inspire": 40.0})
    """Target length in words per mode; restyle aims at the length of its source passage."""
    repetition_n: int = 2
    """n of the rep-n repetition rate."""
    distinct_n: int = 2
    """n of the distinct-n novelty across a prompt's K candidates."""
    rm_normalize: bool = True
    """Standardise learned-RM scores with the model's training mean/std (when it supports it)."""
    rm_uncertainty: float = 1.0
    """With an ensemble reward model: the rm term is the members' mean score minus this many
    standard deviations of their scores, a lower confidence bound. A text unlike anything rated,
    where the members disagree, earns less than its mean says, so the policy is not paid for
    drifting to where the ratings say nothing (reward over-optimisation). 0: the plain mean.
    Ignored for a single model."""
    unusable_reward: float | None = -3.0
    """The total reward of a suggestion without a single word (empty after cleaning). The
    generator never shows such a text, so no rating ever teaches the reward model about it, and a
    learned taste for brevity extrapolates to nothing at all (seen in `simulate --rater concise
    --algo a2c`: the policy learned to answer with an empty string). -3 sits below almost every
    standardised RM score. None: score it like any other text."""

    def weights_for(self, mode: str) -> dict[str, float]:
        w = self.weights.get(mode) or self.weights.get("continue") or {}
        return {t: float(w.get(t, 0.0)) for t in TERMS}

    @classmethod
    def only(cls, **weights: float) -> "RewardConfig":
        """The same weights for every mode (e.g. ``RewardConfig.only(rm=1.0, repetition=0.2)``)."""
        unknown = set(weights) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown reward terms {sorted(unknown)}; known: {', '.join(TERMS)}")
        return cls(weights={m: _weights(**weights) for m in ("continue", "restyle", "inspire")})


@dataclass
class RewardOutput:
    total: np.ndarray
    """Weighted sum per sample."""
    terms: dict[str, np.ndarray]
    """Raw (unweighted) value of every term with a non-zero weight somewhere in the batch."""
    info: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-sample diagnostics that are not terms of the sum (``rm_uncertainty``: the spread of an
    ensemble reward model's members)."""

    def means(self) -> dict[str, float]:
        """{"reward/<term or diagnostic>": mean} for logging."""
        out = {f"reward/{k}": float(np.mean(v)) if len(v) else 0.0 for k, v in {**self.terms, **self.info}.items()}
        out["reward/total"] = float(np.mean(self.total)) if len(self.total) else 0.0
        return out


class RewardFunction:
    """The composed reward: ``fn(prompts, texts, extras=None) -> RewardOutput``.

    rm: a learned reward model (``.score(contexts, texts)``) or None (its weight then counts 0).
    embed: ``list[str] -> (n, d) array`` for the style term (e.g. a sentence-transformer's encode).
    fluency: ``(prompts, texts) -> array`` of mean reference log-probs; during RL the update passes
    the values it already computed as ``extras["ref_logp_mean"]`` instead.
    """

    def __init__(
        self,
        cfg: RewardConfig | None = None,
        rm: Scorer | None = None,
        embed: Callable[[list[str]], np.ndarray] | None = None,
        fluency: Callable[[Sequence[RolloutPrompt], Sequence[str]], np.ndarray] | None = None,
    ):
        self.cfg = cfg or RewardConfig()
        self.rm, self.embed, self.fluency = rm, embed, fluency

    def _rm_scores(self, prompts: Sequence[RolloutPrompt], texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """(rm term, members' std or None for a single model)."""
        contexts = [p.context for p in prompts]
        if hasattr(self.rm, "score_members"):
            m = np.asarray(self.rm.score_members(contexts, list(texts), normalize=self.cfg.rm_normalize), np.float32)
            std = m.std(0)
            return m.mean(0) - self.cfg.rm_uncertainty * std, std
        return self._rm_single(contexts, texts), None

    def _rm_single(self, contexts: list[str], texts: Sequence[str]) -> np.ndarray:
        if self.cfg.rm_normalize:
            try:
                return np.asarray(self.rm.score(contexts, list(texts), normalize=True), np.float32)
            except TypeError:
                pass
        return np.asarray(self.rm.score(contexts, list(texts)), np.float32)

    def __call__(
        self, prompts: Sequence[RolloutPrompt], texts: Sequence[str], extras: dict[str, np.ndarray] | None = None
    ) -> RewardOutput:
        if len(prompts) != len(texts):
            raise ValueError("prompts and texts must pair up")
        extras = extras or {}
        n = len(texts)
        w = np.asarray([[self.cfg.weights_for(p.mode)[t] for t in TERMS] for p in prompts], np.float32).reshape(
            n, len(TERMS)
        )
        active = {t for j, t in enumerate(TERMS) if n and np.any(w[:, j] != 0)}
        terms: dict[str, np.ndarray] = {}
        info: dict[str, np.ndarray] = {}
        if "rm" in active and self.rm is not None:
            terms["rm"], spread = self._rm_scores(prompts, texts)
            if spread is not None:
                info["rm_uncertainty"] = spread
        if "length" in active:
            targets = [
                len(words(p.source_text)) if p.mode == "restyle" else self.cfg.length_targets.get(p.mode, 40.0)
                for p in prompts
            ]
            terms["length"] = length_term(texts, targets)
        if "repetition" in active:
            terms["repetition"] = repetition_term(texts, self.cfg.repetition_n)
        if "distinct" in active:
            terms["distinct"] = distinct_term(texts, [p.prompt_text for p in prompts], self.cfg.distinct_n)
        if "keywords" in active:
            terms["keywords"] = keyword_term(texts, [p.keywords for p in prompts])
        if "style" in active and self.embed is not None:
            terms["style"] = style_term(texts, [p.style_text for p in prompts], self.embed)
        if "fluency" in active:
            if "ref_logp_mean" in extras:
                terms["fluency"] = np.asarray(extras["ref_logp_mean"], np.float32)
            elif self.fluency is not None:
                terms["fluency"] = np.asarray(self.fluency(prompts, texts), np.float32)
        if "tone" in active:
            terms["tone"] = tone_term(texts)
        total = np.zeros(n, np.float32)
        for j, t in enumerate(TERMS):
            if t in terms:
                total += w[:, j] * terms[t]
        if self.cfg.unusable_reward is not None:
            unusable = np.array([not words(t) for t in texts], bool)
            total[unusable] = self.cfg.unusable_reward
        return RewardOutput(total, terms, info)


def embed_with(embedder: Any) -> Callable[[list[str]], np.ndarray]:
    """Adapt a sentence-transformers model to the `embed` callable (unit-normalised vectors)."""

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(embedder.encode(list(texts), normalize_embeddings=True, show_progress_bar=False))

    return embed
