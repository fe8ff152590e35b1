"""The background learner: guards (pure, hand-worked), commands, and full cycles on the tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reward.learner import (
    GuardFiring,
    LearnerConfig,
    NonFiniteWatch,
    guard_kl,
    guard_length_hacking,
    guard_nonfinite,
    guard_reward_hacking,
    pearson,
    send_command,
    win_rate,
)


# ----------------------------------------------------------------------------- pure guards
def test_pearson_by_hand():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = [1,2,3,4], y = [1,3,2,4]: dx = [-1.5,-.5,.5,1.5], dy = [-1.5,.5,-.5,1.5]
    # sum dxdy = 2.25-.25-.25+2.25 = 4; sum dx^2 = sum dy^2 = 5 -> r = 0.8
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0  # no variance
    assert pearson([1], [2]) == 0.0


def test_win_rate_counts_ties_half():
    assert win_rate([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0]) == pytest.approx((2 + 0.5) / 4)
    assert win_rate([], []) == 0.5


def test_guard_nonfinite():
    assert guard_nonfinite({"rl/loss": 0.3, "rl/kl": 0.01, "rl/steps": 2}) is None
    g = guard_nonfinite({"rl/loss": float("nan"), "rl/kl": 0.1, "rl/reward": float("inf")})
    assert g.action == "discard" and "rl/loss" in g.reason and "rl/reward" in g.reason
    g = guard_nonfinite({"rl/loss": 0.1}, saw_nonfinite_reward=True)
    assert g is not None and "reward" in g.reason


def test_guard_kl_shrinks_then_discards():
    assert guard_kl(0.5, max_kl=1.0, retries_left=1) is None
    g = guard_kl(1.5, max_kl=1.0, retries_left=1)
    assert g.action == "shrink" and "1.500" in g.reason
    assert guard_kl(1.5, max_kl=1.0, retries_left=0).action == "discard"
    assert guard_kl(float("nan"), max_kl=1.0, retries_left=3).action == "discard"


def test_guard_reward_hacking():
    # reward +0.5, agreement 0.70 -> 0.50 (drop 0.2 > 0.1): hacking
    g = guard_reward_hacking(1.5, 1.0, 0.5, 0.7, gain_eps=0.0, agreement_drop=0.1)
    assert g.guard == "reward_hacking" and g.data["reward_gain"] == pytest.approx(0.5)
    assert g.data["agreement_drop"] == pytest.approx(0.2)
    # reward rising, agreement steady: fine; reward falling with agreement falling: not hacking
    assert guard_reward_hacking(1.5, 1.0, 0.68, 0.7, 0.0, 0.1) is None
    assert guard_reward_hacking(0.5, 1.0, 0.3, 0.7, 0.0, 0.1) is None
    assert guard_reward_hacking(1.5, 1.0, 0.5, 0.7, 0.0, 0.1, action="rollback").action == "rollback"


def test_guard_length_hacking():
    cfg = LearnerConfig(max_length_corr=0.9, min_length_corr_samples=4)
    lengths = [5, 10, 15, 20]
    by_length = [0.1, 0.2, 0.3, 0.4]  # corr = 1
    g = guard_length_hacking(by_length, lengths, reward_gain=0.2, cfg=cfg)
    assert g is not None and g.guard == "length_hacking" and g.data["length_corr"] == pytest.approx(1.0)
    assert guard_length_hacking(by_length, lengths, reward_gain=-0.1, cfg=cfg) is None  # reward not rising
    assert guard_length_hacking([0.1, 0.4, 0.3, 0.2], lengths, 0.2, cfg) is None  # corr 0.2
    assert guard_length_hacking(by_length[:3], lengths[:3], 0.2, cfg) is None  # too few samples


def test_nonfinite_watch_sees_nan():
    class Out:
        def __init__(self, total):
            self.total = np.asarray(total)

    w = NonFiniteWatch(lambda prompts, texts: Out([0.1 for _ in texts]))
    w([1, 2], ["a", "b"])
    assert not w.seen
    w.fn = lambda prompts, texts: Out([0.1, math.nan])
    w([1, 2], ["a", "b"])
    assert w.seen


def test_send_command_and_state(store):
    st = send_command(store, "default", "pause")
    assert st["paused"] is True and st["command"] == "pause"
    assert store.take_learner_command("default") == "pause"
    assert store.take_learner_command("default") is None
    assert send_command(store, "default", "resume")["paused"] is False
    with pytest.raises(ValueError, match="unknown learner action"):
        send_command(store, "default", "explode")
    assert isinstance(GuardFiring("kl", "discard", "x"), GuardFiring)
