"""Reward-guided choice of what to show (pure: numbers in, indices out; no model, no I/O).

A request draws N > K candidates in one batched call; the profile's reward model scores each of
them (an ensemble: one row per member; one head: a single row) and this module picks the K shown:

- K - 1 slots (all K when exploration is off) go to the best *conservative* scores,
  mean - kappa * spread over the members (Coste et al. 2023: a pessimistic ensemble score removes
  most best-of-N over-optimisation; with one head the spread is 0 and this is plain best-of-N);
- one slot explores, so the ratings keep teaching the reward model about candidates it is unsure
  of. The default is a Thompson draw: one ensemble member, drawn uniformly (a bootstrap member is a
  sample of the reward model's posterior), names its favourite among the candidates not yet
  chosen. It is chosen over "the most uncertain candidate" because a Thompson pick is a candidate
  that *some* plausible reward model thinks best: it explores where the members disagree about
  the top, not where they disagree about texts nobody would want (the most uncertain candidate is
  often an odd, broken one, and a shown slot wasted on it costs the person a worse list). With a
  single head (no posterior) the exploration slot is a uniform draw among the rest: an unbiased
  sample of the policy, the same as a request without choice would have shown.

The shown order is the conservative score, best first, with the exploration slot last. A request
for one suggestion (K = 1) gets the best conservative score and no exploration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from assistant.lm.config import (
    MAX_DRAW,  # the largest N a request may draw (one batch of N rows)
)

EXPLORE = ("thompson", "uncertain", "none")


@dataclass
class ChoiceConfig:
    """Reward-guided choice of the K suggestions shown out of N drawn (on once a reward model exists)."""

    enabled: bool = True
    """Draw N and show the reward model's best K when the profile has a published reward model
    (without one, every request draws exactly K, as before)."""
    draw: int = 8
    """Candidates drawn in the one batched call (N, at most MAX_DRAW); at or below K nothing is chosen.
    Default from benchmarks/latency.py: the largest N within 1.5x of a warm K=4 request (N=8: 1.17x
    wall, 1.43x CPU; N=12: 1.65x / 1.87x)."""
    kappa: float = 1.0
    """Pessimism: the conservative score is the ensemble mean minus kappa times the members' spread
    (standard deviation); 0 is plain best-of-N on the mean."""
    explore: str = "thompson"
    """The exploration slot: thompson (one bootstrap member's favourite among the rest), uncertain
    (the candidate the members disagree on most) or none (all K slots by conservative score)."""

    def validate(self) -> None:
        if not 1 <= int(self.draw) <= MAX_DRAW:
            raise ValueError(f"draw must be between 1 and {MAX_DRAW}, got {self.draw}")
        if self.explore not in EXPLORE:
            raise ValueError(f"explore must be one of {', '.join(EXPLORE)}, got {self.explore!r}")
        if float(self.kappa) < 0:
            raise ValueError(f"kappa must be >= 0, got {self.kappa}")


@dataclass
class Choice:
    """The candidates to show, in the order to show them."""

    indices: list[int]
    """Indices into the N drawn candidates."""
    exploration: list[bool]
    """Aligned with indices: True for the exploration slot."""
    score: list[float]
    """Aligned with indices: the conservative score (mean - kappa * spread)."""
    mean: list[float]
    """Aligned with indices: the members' mean score."""
    spread: list[float]
    """Aligned with indices: the members' standard deviation (0 for one head)."""


def as_member_matrix(scores: Sequence[float] | Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """(members, N) float array: a 1-D score vector is one member."""
    s = np.asarray(scores, np.float64)
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2:
        raise ValueError(f"scores must be (members, N) or (N,), got shape {s.shape}")
    return s


def spread(scores: Sequence[float] | Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Per candidate: the members' standard deviation (population, ddof 0; 0 for one member)."""
    return as_member_matrix(scores).std(axis=0)


def conservative(scores: Sequence[float] | Sequence[Sequence[float]] | np.ndarray, kappa: float) -> np.ndarray:
    """Per candidate: mean over members - kappa * spread."""
    s = as_member_matrix(scores)
    return s.mean(axis=0) - float(kappa) * s.std(axis=0)


def choose(scores: Sequence[float] | Sequence[Sequence[float]] | np.ndarray, k: int, kappa: float = 1.0,
           explore: str = "thompson", rng: np.random.Generator | None = None) -> Choice:
    """The K of N candidates to show (see the module doc). With N <= K all are shown (best first,
    none marked as exploration: nothing was held back). Ties keep the lower index."""
    if explore not in EXPLORE:
        raise ValueError(f"explore must be one of {', '.join(EXPLORE)}, got {explore!r}")
    s = as_member_matrix(scores)
    m, n = s.shape
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rng = rng if rng is not None else np.random.default_rng()
    mean, sd = s.mean(axis=0), s.std(axis=0)
    cons = mean - float(kappa) * sd
    order = [int(i) for i in np.argsort(-cons, kind="stable")]
    if n <= k or explore == "none" or k == 1:  # one slot: no room to explore
        chosen, explored = order[: min(k, n)], None
    else:
        chosen = order[: k - 1]
        rest = [i for i in range(n) if i not in chosen]
        if explore == "thompson" and m > 1:
            member = int(rng.integers(m))
            explored = max(rest, key=lambda i: (s[member, i], -i))
        elif explore == "uncertain" and m > 1 and float(sd[rest].max()) > 0:
            explored = max(rest, key=lambda i: (sd[i], -i))
        else:  # one head (or no disagreement): an unbiased sample of the policy
            explored = rest[int(rng.integers(len(rest)))]
        chosen = chosen + [explored]
    return Choice(
        indices=chosen,
        exploration=[i == explored for i in chosen],
        score=[float(cons[i]) for i in chosen],
        mean=[float(mean[i]) for i in chosen],
        spread=[float(sd[i]) for i in chosen],
    )


def member_scores(rm, context: str, texts: Sequence[str]) -> np.ndarray:
    """(members, N) standardised scores of `texts` in `context`: every head of an ensemble
    (``score_members``), or the one row of a single reward model. Standardised with the model's
    training mean/std, so kappa is in units of the reward's spread over the rated texts."""
    if not texts:
        return np.zeros((1, 0))
    ctx = [context] * len(texts)
    if hasattr(rm, "score_members"):
        return np.asarray(rm.score_members(ctx, list(texts), normalize=True), np.float64)
    return np.asarray(rm.score(ctx, list(texts), normalize=True), np.float64)[None, :]
