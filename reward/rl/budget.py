"""When a run of RL updates stops (pure: figures in, a reason out; the clock is a parameter).

A learner cycle trains for the CPU time it has, not for a fixed number of updates, and stops
earlier when going on would not help or would not be allowed:

    nonfinite  an update was skipped for a NaN/inf reward or loss (the guards discard the run)
    kl         the rollouts' KL to the reference per reply (``rl/kl``, the k1 estimate summed over a
               reply's tokens, as the learner's evaluation measures it) reached the bound
    patience   the reward of the policy's samples on held-out prompts has not beaten its best
               (the score before the first update included) for `patience` checks in a row
    steps      the cap on updates was reached
    seconds    the next update would end more than half an update past the CPU-time budget (the
               mean update so far, held-out checks included, is the estimate of its cost): a run
               spends its budget to within half an update either way, whether its updates are
               cheap or dear (stopping before any update that would not fit whole would leave up
               to a whole update of the budget unspent: a third of it for PPO at 60 s here)

The first update always runs: a budget smaller than one update still gives one. ``rl/stop_reason``
stores the reason's index in STOP_REASONS (metrics are numbers); the version's config.json its name.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

STOP_REASONS = ("steps", "seconds", "kl", "patience", "nonfinite")


def stop_reason(metrics: dict[str, Any]) -> str | None:
    """The name of the stop reason a run's metrics record (rl/stop_reason), None without one."""
    code = metrics.get("rl/stop_reason")
    return STOP_REASONS[int(code)] if code is not None else None


@dataclass
class StopRule:
    """When a run of RL updates stops (see the module doc). At least one of seconds / steps is set."""

    seconds: float = 0.0
    """CPU-seconds (this process's time, time.process_time) the run may spend; 0: no time budget."""
    steps: int = 0
    """At most this many updates; 0: no cap."""
    max_kl: float = math.inf
    """Stop once the rollouts' KL to the reference per reply (rl/kl) reaches this."""
    patience: int = 0
    """Stop after this many held-out checks in a row without a new best; 0: no held-out checks."""
    min_delta: float = 0.0
    """A held-out reward counts as a new best when it is above the best so far by more than this."""
    heldout_samples: int = 2
    """Samples per held-out prompt at each check."""
    heldout_max_new_tokens: int = 24
    """Tokens per held-out sample."""

    def validate(self) -> None:
        if self.seconds < 0 or self.steps < 0 or self.patience < 0:
            raise ValueError("seconds, steps and patience must be >= 0")
        if not self.seconds and not self.steps:
            raise ValueError("an RL run needs a CPU-time budget (seconds > 0) or a cap on its updates (steps > 0)")
        if self.heldout_samples < 1 or self.heldout_max_new_tokens < 1:
            raise ValueError("heldout_samples and heldout_max_new_tokens must be >= 1")


class Budget:
    """The running state of one StopRule: call ``start(score)`` once (the held-out reward before
    any update, or None), then ``after_step(metrics, score)`` after every update; it returns the
    stop reason, or None to go on."""

    def __init__(self, rule: StopRule, clock: Callable[[], float] = time.process_time):
        rule.validate()
        self.rule, self.clock = rule, clock
        self.t0 = clock()
        self.steps = 0
        self.best = -math.inf
        self.since_best = 0
        self.reason: str | None = None

    @property
    def seconds(self) -> float:
        """CPU-seconds spent since the budget was made."""
        return self.clock() - self.t0

    def start(self, score: float | None) -> None:
        """The held-out reward of the policy before any update (the bar the first check must beat)."""
        if score is not None and math.isfinite(score):
            self.best = float(score)

    def checks_heldout(self) -> bool:
        return self.rule.patience > 0

    def after_step(self, metrics: dict[str, Any], score: float | None = None) -> str | None:
        """Count one update (its metrics; `score`: the held-out reward after it, if checked)."""
        r = self.rule
        self.steps += 1
        elapsed = self.seconds
        if score is not None:
            if math.isfinite(score) and score > self.best + r.min_delta:
                self.best, self.since_best = float(score), 0
            else:
                self.since_best += 1
        kl = float(metrics.get("rl/kl", 0.0))
        if metrics.get("rl/skipped") or not math.isfinite(kl):
            self.reason = "nonfinite"
        elif kl >= r.max_kl:
            self.reason = "kl"
        elif r.patience and self.since_best >= r.patience:
            self.reason = "patience"
        elif r.steps and self.steps >= r.steps:
            self.reason = "steps"
        elif r.seconds and elapsed + 0.5 * elapsed / self.steps > r.seconds:
            self.reason = "seconds"
        return self.reason

    def metrics(self) -> dict[str, float]:
        """rl/stop_reason (index into STOP_REASONS), rl/steps, rl/seconds, rl/heldout_best."""
        out = {"rl/steps": float(self.steps), "rl/seconds": self.seconds}
        if self.reason is not None:
            out["rl/stop_reason"] = float(STOP_REASONS.index(self.reason))
        if math.isfinite(self.best):
            out["rl/heldout_best"] = self.best
        return out
