"""The learner's guards (pure): each looks at a cycle's figures and says whether to retry, discard or roll back."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from reward.loop.config import LearnerConfig
from reward.rl.step import accepts_extras

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- guards (pure)
@dataclass
class GuardFiring:
    guard: str
    """nonfinite | kl | reward_hacking | length_hacking"""
    action: str
    """discard | shrink | rollback"""
    reason: str
    data: dict[str, float] = field(default_factory=dict)

def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; 0 when either side has no variance or there are fewer than 2 points."""
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(a) < 2 or len(a) != len(b):
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return 0.0 if den == 0.0 else float((a * b).sum() / den)

def guard_nonfinite(metrics: dict[str, Any], saw_nonfinite_reward: bool = False) -> GuardFiring | None:
    """Any NaN/inf metric (loss, reward, KL...) or reward seen during the update discards it."""
    bad = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not math.isfinite(float(v)))
    if saw_nonfinite_reward:
        bad = ["reward (during rollouts)", *bad]
    if not bad:
        return None
    return GuardFiring("nonfinite", "discard", f"non-finite values in {', '.join(bad)}: update discarded")

def guard_kl(kl: float | None, max_kl: float, retries_left: int, base_kl: float | None = None,
             action: str | None = None) -> GuardFiring | None:
    """KL above the limit: shrink (retry smaller) while retries are left, else discard; `action`,
    when given, instead (the live re-check rolls back).

    Two KLs are held to the same limit: `kl`, the step's (the candidate against the version it was
    trained from), and `base_kl`, the candidate's KL to the base model; either may be None (not
    checked). With both, no published version drifts further than max_kl from the base however
    many small steps it took."""
    checks = [(what, v) for what, v in (("KL", kl), ("KL to the base model", base_kl)) if v is not None]
    data = {"max_kl": max_kl, **({"kl": kl} if kl is not None else {}),
            **({"base_kl": base_kl} if base_kl is not None else {})}
    then = {"shrink": ": retrying with fewer steps and a lower learning rate", "discard": ": update discarded"}
    for what, value in checks:
        if not math.isfinite(value):
            act = action or "discard"
            return GuardFiring("kl", act, f"{what} is {value}{then.get(act, '')}", data)
    over = [(what, value) for what, value in checks if value > max_kl]
    if not over:
        return None
    act = action or ("shrink" if retries_left > 0 else "discard")
    said = "; ".join(f"{what} {value:.3f}" for what, value in over)
    return GuardFiring("kl", act, f"{said} above the limit {max_kl:.3f}{then.get(act, '')}", data)

def guard_reward_hacking(
    reward_new: float, reward_old: float, agreement_new: float, agreement_old: float,
    gain_eps: float, agreement_drop: float, action: str = "discard", n_pairs: int | None = None,
    min_pairs: int = 0,
) -> GuardFiring | None:
    """Reward rising while agreement with held-out feedback falls; not judged on fewer than
    `min_pairs` held-out pairs (`n_pairs`), where one pair flipping moves the agreement by 1/n."""
    gain, drop = reward_new - reward_old, agreement_old - agreement_new
    if n_pairs is not None and n_pairs < min_pairs:
        return None
    if gain > gain_eps and drop > agreement_drop:
        return GuardFiring(
            "reward_hacking", action,
            f"reward rose by {gain:.3f} while agreement with held-out feedback fell by {drop:.3f} "
            f"({agreement_old:.2f} -> {agreement_new:.2f})",
            {"reward_gain": gain, "agreement_drop": drop},
        )
    return None

def length_taste(pairs: Sequence[tuple[str, str]], sign: float) -> tuple[float, int]:
    """How far the person's own held-out choices follow length in the direction `sign` (> 0: the
    longer text chosen, < 0: the shorter): (share of the pairs of different length in words whose
    chosen text is longer (sign > 0) or shorter (sign < 0), how many such pairs). (0.0, 0) when no
    pair differs in length."""
    diffs = [len(c.split()) - len(r.split()) for c, r in pairs]
    decided = [d for d in diffs if d != 0]
    if not decided:
        return 0.0, 0
    agree = sum(1 for d in decided if (d > 0) == (sign > 0))
    return agree / len(decided), len(decided)


def guard_length_hacking(
    rm_scores: Sequence[float], lengths: Sequence[float], reward_gain: float, cfg: LearnerConfig,
    action: str = "discard", feedback_pairs: Sequence[tuple[str, str]] = (),
) -> GuardFiring | None:
    """The learned reward is explained mostly by length (|corr| above the limit) while the reward
    rises, and the person's own held-out choices (`feedback_pairs`: (chosen, rejected)) do not
    follow length the same way. When at least cfg.length_taste_share of those pairs (of
    different length, at least cfg.min_agreement_pairs of them) chose the text the reward's sign
    favours, length is the person's taste (a "shorter, please" writer), not the reward's shortcut."""
    if len(rm_scores) < cfg.min_length_corr_samples or reward_gain <= cfg.reward_gain_eps:
        return None
    r = pearson(rm_scores, lengths)
    if abs(r) <= cfg.max_length_corr:
        return None
    share, n = length_taste(feedback_pairs, r)
    if n >= cfg.min_agreement_pairs and share >= cfg.length_taste_share:
        log.info("length guard: reward follows length (corr %+.2f) as the person's held-out choices do "
                 "(%.2f of %d pairs): their taste, not hacking", r, share, n)
        return None
    return GuardFiring(
        "length_hacking", action,
        f"learned reward is explained by length (corr {r:+.2f}, limit {cfg.max_length_corr:.2f}) "
        f"while the reward rose by {reward_gain:.3f}",
        {"length_corr": r, "reward_gain": reward_gain, "feedback_length_share": share},
    )

class NonFiniteWatch:
    """Wraps a reward function; remembers whether it ever returned NaN/inf (the guard reads it)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn, self.seen = fn, False

    def __call__(self, prompts: Any, texts: Any, extras: Any = None) -> Any:

        out = self.fn(prompts, texts, extras=extras) if extras is not None and accepts_extras(self.fn) \
            else self.fn(prompts, texts)
        total = getattr(out, "total", out)
        if not np.all(np.isfinite(np.asarray(total, np.float64))):
            self.seen = True
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fn, name)
