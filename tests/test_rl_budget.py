"""When a run of RL updates stops (reward.rl.budget): the stop logic on a fake clock, worked by hand."""

import math

import pytest

from reward.rl.budget import STOP_REASONS, Budget, StopRule


class Clock:
    """A fake CPU clock the test moves by hand."""

    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def run(budget: Budget, clock: Clock, step_s: list[float], kls=None, scores=None) -> list[str | None]:
    out = []
    for i, dt in enumerate(step_s):
        clock.t += dt
        out.append(budget.after_step({"rl/kl": (kls or [0.0] * len(step_s))[i], "rl/skipped": 0.0},
                                     None if scores is None else scores[i]))
        if out[-1]:
            break
    return out


def test_time_budget_is_spent_to_within_half_an_update():
    clock = Clock()
    b = Budget(StopRule(seconds=30.0), clock)
    # updates of 10 s: after 1 (10 + 5 <= 30) and 2 (20 + 5 <= 30) go on; after 3 the next would
    # end 10 s past the budget, more than half an update
    assert run(b, clock, [10, 10, 10, 10]) == [None, None, "seconds"]
    assert b.steps == 3 and b.seconds == pytest.approx(30.0)
    m = b.metrics()
    assert m["rl/stop_reason"] == STOP_REASONS.index("seconds") and m["rl/seconds"] == 30.0 and m["rl/steps"] == 3
    # dear updates of 37 s in 60: one leaves 23 s unspent, a second goes 14 s over: it runs
    clock = Clock()
    assert run(Budget(StopRule(seconds=60.0), clock), clock, [37, 37, 37]) == [None, "seconds"]
    # the estimate is the mean update so far: 4, 14 (18 + 4.5 <= 25 goes on), 10 (28 + 4.7 > 25 stops)
    clock = Clock()
    assert run(Budget(StopRule(seconds=25.0), clock), clock, [4, 14, 10, 1]) == [None, None, "seconds"]
    # a budget smaller than one update still runs one
    clock = Clock()
    assert run(Budget(StopRule(seconds=1.0), clock), clock, [10]) == ["seconds"]


def test_step_cap_and_no_time_budget():
    clock = Clock()
    assert run(Budget(StopRule(steps=2), clock), clock, [1000, 1000, 1000]) == [None, "steps"]
    clock = Clock()  # a cap inside the time budget wins when it comes first
    assert run(Budget(StopRule(seconds=100, steps=1), clock), clock, [1]) == ["steps"]
    with pytest.raises(ValueError, match="budget"):
        StopRule().validate()
    with pytest.raises(ValueError):
        StopRule(seconds=-1).validate()


def test_kl_bound_stops():
    clock = Clock()
    b = Budget(StopRule(seconds=100, max_kl=2.0), clock)
    assert run(b, clock, [1, 1, 1, 1], kls=[0.5, 1.9, 2.0, 3.0]) == [None, None, "kl"]
    clock = Clock()  # a NaN KL (or a skipped update) stops as non-finite
    assert run(Budget(StopRule(seconds=100, max_kl=2.0), clock), clock, [1], kls=[math.nan]) == ["nonfinite"]
    b = Budget(StopRule(steps=5), clock)
    assert b.after_step({"rl/skipped": 1.0}) == "nonfinite"


def test_patience_counts_checks_without_a_new_best():
    clock = Clock()
    b = Budget(StopRule(seconds=100, patience=2, min_delta=0.05), clock)
    b.start(0.30)  # the policy before any update
    # 0.40 new best; 0.43 not above 0.40 + 0.05 (1); 0.50 new best; 0.49 (1); 0.52 (2) -> stop
    assert run(b, clock, [1] * 6, scores=[0.40, 0.43, 0.50, 0.49, 0.52, 0.9]) == [None, None, None, None, "patience"]
    assert b.best == pytest.approx(0.50) and b.metrics()["rl/heldout_best"] == pytest.approx(0.50)
    clock = Clock()  # never beating the start: stops after `patience` checks
    b = Budget(StopRule(seconds=100, patience=2), clock)
    b.start(0.5)
    assert run(b, clock, [1, 1, 1], scores=[0.5, 0.4, 0.9]) == [None, "patience"]
    clock = Clock()  # patience 0: the scores are not looked at
    assert run(Budget(StopRule(steps=3), clock), clock, [1, 1, 1], scores=[0.0, 0.0, 0.0]) == [None, None, "steps"]
