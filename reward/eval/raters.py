"""Simulated raters: a hidden taste (a utility in [0, 1] of the text, never shown to the learner) and noise in how it is reported.

They stand in for a person in `simulate` and in benchmarks/learning.py, and judge held-out pairs.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from reward.text import words

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- raters
SENSORY_WORDS = frozenset(
    """red crimson scarlet gold golden silver amber blue green grey gray white black bright dark glowing
    glittering shimmering sparkling pale shadow shadows light sunlight moonlight candlelight flicker
    flickering loud quiet silent silence whisper whispered whispering roar roaring hum humming buzz
    crackle crackling rustle rustling creak creaking echo echoed ringing thunder hiss hissing
    soft rough smooth silky velvet cold icy warm hot damp wet sticky sharp prickly heavy
    smell smelled scent fragrant smoky smoke salt salty sweet bitter sour spicy taste tasted
    perfume musty fresh rain wind breeze fog mist dust rust wood stone""".split()
)

UPBEAT_WORDS = frozenset(
    """happy happily joy joyful glad bright cheerful delight delighted delightful love loved lovely
    wonderful beautiful hope hopeful smile smiled smiling laugh laughed laughing laughter fun
    excited exciting amazing great good best kind warm friendly proud celebrate celebrated
    success successful win won grateful thank thanks sunny shine shining""".split()
)

DOWNBEAT_WORDS = frozenset(
    """sad sadly sorrow grief cry cried crying tears fear afraid scared gloom gloomy angry anger hate
    hated pain painful hurt lonely lost loss death dead die died dying grim broken fail failed
    failure dread worry worried terrible awful horrible miserable bleak cruel never nothing""".split()
)

@dataclass
class Rater:
    """A simulated person: a hidden utility over texts, plus noise in how it reports it.

    Stars = round(1 + 4 * utility + N(0, star_noise)) clipped to 1..5; the best pick is the argmax
    of utility + N(0, pick_noise); a pairwise judgement compares utility + N(0, pick_noise) (equal
    utilities are a tie: the rater has no preference)."""

    name: str
    utility: Callable[[str, dict[str, Any]], float]
    description: str
    star_noise: float = 0.5
    pick_noise: float = 0.05
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def utilities(self, texts: Sequence[str], prompt: dict[str, Any]) -> np.ndarray:
        return np.asarray([self.utility(t, prompt) for t in texts], np.float64)

    def stars(self, texts: Sequence[str], prompt: dict[str, Any]) -> list[int]:
        u = self.utilities(texts, prompt)
        s = np.rint(1 + 4 * u + self.rng.normal(0, self.star_noise, len(u)))
        return [int(x) for x in np.clip(s, 1, 5)]

    def expected_stars(self, texts: Sequence[str], prompt: dict[str, Any]) -> np.ndarray:
        """The mean of ``stars`` over its noise, exactly: stars >= k+1 when 1 + 4u + noise >= k + 0.5,
        so E[stars] = 1 + sum over k = 1..4 of P(noise >= k + 0.5 - 1 - 4u). Comparing two systems'
        texts by it leaves out the star noise."""
        u = self.utilities(texts, prompt)
        sd = max(self.star_noise, 1e-9)
        erf = np.vectorize(math.erf, otypes=[float])
        return 1.0 + sum(0.5 * (1.0 + erf((1 + 4 * u - (k + 0.5)) / (sd * math.sqrt(2)))) for k in range(1, 5))

    def best(self, texts: Sequence[str], prompt: dict[str, Any]) -> int:
        u = self.utilities(texts, prompt) + self.rng.normal(0, self.pick_noise, len(texts))
        return int(np.argmax(u))

    def judge(self, a: str, b: str, prompt: dict[str, Any]) -> float:
        """1 if the rater prefers a, 0 if b, 0.5 if it has no preference."""
        ua, ub = self.utility(a, prompt), self.utility(b, prompt)
        if ua == ub:
            return 0.5
        na, nb = self.rng.normal(0, self.pick_noise, 2)
        return 1.0 if ua + na > ub + nb else 0.0

def _substance(text: str) -> float:
    """Raters dislike empty or broken suggestions whatever their taste: 0 for no words, 1 from 4."""
    return min(1.0, len(words(text)) / 4.0)

def concise_utility(text: str, prompt: dict[str, Any]) -> float:
    """Prefers short sentences and short suggestions: 1 at <= 8 words per sentence and <= 15 words."""
    ws = words(text)
    if not ws:
        return 0.0
    sentences = max(1, len(re.findall(r"[.!?]+(?:\s|$)", text)))
    per_sentence = len(ws) / sentences
    u = 1.0 - 0.5 * min(1.0, max(0.0, per_sentence - 8) / 16) - 0.5 * min(1.0, max(0.0, len(ws) - 15) / 30)
    return u * _substance(text)

def vivid_utility(text: str, prompt: dict[str, Any]) -> float:
    """Prefers vivid sensory words (colours, sounds, textures, smells): 1 at four of them."""
    hits = sum(1 for w in words(text) if w in SENSORY_WORDS)
    return min(1.0, hits / 4.0) * _substance(text)

def upbeat_utility(text: str, prompt: dict[str, Any]) -> float:
    """Prefers an upbeat tone: 0.5 + 0.5 * tanh((positive - negative) / 2) over its lexicons."""
    ws = words(text)
    pos = sum(1 for w in ws if w in UPBEAT_WORDS)
    neg = sum(1 for w in ws if w in DOWNBEAT_WORDS)
    return (0.5 + 0.5 * math.tanh((pos - neg) / 2.0)) * _substance(text)

def keyword_utility_factory(keywords: Sequence[str]) -> Callable[[str, dict[str, Any]], float]:
    kws = [k.lower() for k in keywords]

    def keyword_utility(text: str, prompt: dict[str, Any]) -> float:
        """Prefers suggestions that mention its keywords (and the request's own keywords):
        1 once two different ones appear."""
        wanted = set(kws) | {k.lower() for k in prompt.get("keywords") or []}
        low = text.lower()
        hits = sum(1 for k in wanted if re.search(r"\b" + re.escape(k), low))
        return min(1.0, hits / 2.0) * _substance(text)

    return keyword_utility

FIRST_PERSON_WORDS = frozenset("i me my mine myself we us our ours ourselves".split())

_QUOTED = re.compile(r"[\"“”]([^\"“”]{3,})[\"“”]")


def dialogue_utility(text: str, prompt: dict[str, Any]) -> float:
    """Prefers suggestions with a character's spoken words: 1 when a quoted line of at least two
    words appears, else 0 (the base model writes dialogue now and then in stories)."""
    spoken = any(len(words(m)) >= 2 for m in _QUOTED.findall(text))
    return (1.0 if spoken else 0.0) * _substance(text)


def first_person_utility(text: str, prompt: dict[str, Any]) -> float:
    """Prefers first-person writing (I, me, my, we, our, ...): 1 at three such words."""
    hits = sum(1 for w in words(text) if w in FIRST_PERSON_WORDS)
    return min(1.0, hits / 3.0) * _substance(text)


def alliteration_utility(text: str, prompt: dict[str, Any]) -> float:
    """Prefers alliteration: neighbouring words of four letters or more that start with the same
    letter ("silver sails", "bright brass"); 1 at two such pairs. A taste in the letters, not in any
    word list: no lexicon of a rater or of a reward-model feature names it."""
    ws = [w for w in words(text) if len(w) >= 4]
    pairs = sum(1 for a, b in zip(ws, ws[1:]) if a[0] == b[0])
    return min(1.0, pairs / 2.0) * _substance(text)


RATER_KEYWORDS = ("light", "home", "water", "heart", "friend")

def make_rater(name: str, seed: int = 0, noise: float = 0.5) -> Rater:
    """One of the built-in raters: concise, vivid, upbeat, keywords, dialogue, firstperson, alliteration."""
    table: dict[str, tuple[Callable, str]] = {
        "concise": (concise_utility, "prefers concise suggestions with short sentences"),
        "vivid": (vivid_utility, "prefers vivid sensory words"),
        "upbeat": (upbeat_utility, "prefers an upbeat tone"),
        "keywords": (keyword_utility_factory(RATER_KEYWORDS),
                     f"prefers mentions of {', '.join(RATER_KEYWORDS)} (and of the request's keywords)"),
        "dialogue": (dialogue_utility, "prefers suggestions with spoken dialogue"),
        "firstperson": (first_person_utility, "prefers first-person writing"),
        "alliteration": (alliteration_utility, "prefers alliteration (a taste in no lexicon)"),
    }
    if name not in table:
        raise ValueError(f"unknown rater {name!r}; choose from {', '.join(RATERS)}")
    fn, desc = table[name]
    return Rater(name, fn, desc, star_noise=noise, seed=seed)

RATERS = ("concise", "vivid", "upbeat", "keywords", "dialogue", "firstperson", "alliteration")

def rate_suggestions(rater: Rater, prompt: dict[str, Any], ids: Sequence[int], texts: Sequence[str], limit: int,
                     feedback: Callable[..., Any]) -> list[int]:
    """The rater's stars for the first `limit` suggestions and, when it starred them all, its best
    pick, each given as ``feedback(suggestion_id, kind, value, source="simulated")`` (the UI's
    path, Services.feedback, or Store.add_feedback). Returns the stars."""
    stars = rater.stars(texts, prompt)[:limit]
    for sid, st in zip(ids, stars):
        feedback(sid, "stars", st, source="simulated")
    if len(texts) > 1 and len(stars) == len(texts):
        feedback(ids[rater.best(texts, prompt)], "best", source="simulated")
    return stars
