"""Reward-guided choice (reward.select): hand-computed selections and the ensemble's spread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reward.select import ChoiceConfig, choose, conservative, member_scores, spread


class FakeRM:
    """A fake ensemble: each member scores a text by a fixed table (contexts are ignored)."""

    def __init__(self, tables: list[dict[str, float]]):
        self.tables = tables

    def score_members(self, contexts, texts, normalize=False):
        return np.array([[t[x] for x in texts] for t in self.tables])


def test_conservative_and_spread_by_hand():
    s = [[1.0, 2.0, 0.0], [3.0, 2.0, 0.0]]
    # means 2, 2, 0; population std 1, 0, 0
    np.testing.assert_allclose(spread(s), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(conservative(s, 1.0), [1.0, 2.0, 0.0])
    np.testing.assert_allclose(conservative(s, 0.0), [2.0, 2.0, 0.0])
    np.testing.assert_allclose(spread([5.0, 1.0]), [0.0, 0.0])  # one head: no spread


def test_choose_keeps_the_best_by_a_fake_reward_model_and_one_thompson_slot():
    texts = ["a", "b", "c", "d", "e", "f"]
    # member 0 and 1 agree on a > b > c, disagree on d/e/f
    rm = FakeRM([
        {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.0, "e": 0.9, "f": -1.0},
        {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.8, "e": 0.0, "f": -1.0},
    ])
    s = member_scores(rm, "ctx", texts)
    assert s.shape == (2, 6)
    # conservative (kappa 1): a 3, b 2, c 1, d 0.4-0.4=0, e 0.45-0.45=0, f -1
    ch = choose(s, k=3, kappa=1.0, explore="thompson", rng=np.random.default_rng(0))
    assert ch.indices[:2] == [0, 1] and ch.exploration == [False, False, True]
    # the exploration slot is one member's favourite among the rest (c..f): c for both members
    assert ch.indices[2] == 2
    assert ch.score[:2] == [3.0, 2.0] and ch.spread[:2] == [0.0, 0.0]
    # with c gone, each member names its own favourite: member 0 -> e, member 1 -> d
    s2 = np.delete(s, 2, axis=1)  # a b d e f
    picks = {choose(s2, 3, 1.0, "thompson", np.random.default_rng(seed)).indices[2] for seed in range(20)}
    assert picks == {2, 3}  # d (index 2) or e (index 3), never f


def test_choose_uncertain_none_and_small_draws():
    s = np.array([[3.0, 2.0, 1.0, 0.0, 0.0], [3.0, 2.0, 1.0, 2.0, 0.2]])
    # conservative: 3, 2, 1, 1-1=0, 0.1-0.1=0 ; spread 0 0 0 1 0.1
    ch = choose(s, 3, 1.0, "uncertain", np.random.default_rng(0))
    assert ch.indices == [0, 1, 3] and ch.exploration == [False, False, True]
    assert ch.mean[2] == pytest.approx(1.0) and ch.spread[2] == pytest.approx(1.0)
    ch = choose(s, 3, 1.0, "none")
    assert ch.indices == [0, 1, 2] and not any(ch.exploration)
    # kappa 0: plain best-of-N on the mean (d's mean 1.0 ties c's 1.0: the lower index first)
    assert choose(s, 4, 0.0, "none").indices == [0, 1, 2, 3]
    # N <= K: everything, best first, nothing held back so nothing is exploration
    ch = choose(s[:, :3], 4, 1.0, "thompson")
    assert ch.indices == [0, 1, 2] and not any(ch.exploration)
    # K = 1: the best, no exploration
    assert choose(s, 1, 1.0, "thompson").indices == [0]


def test_choose_with_one_head_explores_uniformly_among_the_rest():
    s = [5.0, 4.0, 3.0, 2.0, 1.0]
    seen = set()
    for seed in range(40):
        ch = choose(s, 2, 1.0, "thompson", np.random.default_rng(seed))
        assert ch.indices[0] == 0 and ch.exploration == [False, True]
        seen.add(ch.indices[1])
    assert seen == {1, 2, 3, 4}


def test_choice_config_validates():
    ChoiceConfig().validate()
    with pytest.raises(ValueError, match="draw"):
        ChoiceConfig(draw=0).validate()
    with pytest.raises(ValueError, match="explore"):
        ChoiceConfig(explore="greedy").validate()


def test_ensemble_spread_is_zero_for_identical_members_and_grows_when_they_disagree(embedder, store):
    from reward.model import EnsembleRewardModel, RewardModel, RewardModelConfig

    torch.manual_seed(0)
    cfg = RewardModelConfig(hidden=16, emb_features=("s", "sc"))
    heads = [RewardModel(cfg, embedder, store) for _ in range(3)]
    for h in heads[1:]:
        h.load_state_dict(heads[0].state_dict())
    same = EnsembleRewardModel.from_members(heads)
    ctx = "mode: continue\nThe rain had not stopped for three days."
    texts = ["The gutters overflowed.", "She sold the umbrella shop.", "ok", "Thunder rolled over the hills."]
    s = member_scores(same, ctx, texts)
    assert s.shape == (3, 4)
    np.testing.assert_allclose(spread(s), 0.0, atol=1e-6)
    apart = same
    with torch.no_grad():
        for p in apart.members[1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    s1 = spread(member_scores(apart, ctx, texts))
    with torch.no_grad():
        for p in apart.members[2].parameters():
            p.add_(0.5 * torch.randn_like(p))
    s2 = spread(member_scores(apart, ctx, texts))
    assert (s1 > 0).all() and s2.mean() > s1.mean()
