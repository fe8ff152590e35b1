"""Reward terms and their composition, with values worked out by hand."""

import numpy as np
import pytest

from reward import functions as F
from reward.functions import RewardConfig, RewardFunction, RolloutPrompt


def test_length_term():
    # 4 words vs target 4 -> 0; 2 words vs 4 -> -0.5; 10 words vs 4 -> capped at -1; "" -> -1
    v = F.length_term(["a b c d", "a b", " ".join("x" * 10), ""], [4, 4, 4, 4])
    assert v.tolist() == pytest.approx([0.0, -0.5, -1.0, -1.0])


def test_repetition_term():
    # "the cat the cat": bigrams (the cat)(cat the)(the cat): 1 repeat of 3
    v = F.repetition_term(["the cat the cat", "one two three"])
    assert v.tolist() == pytest.approx([-1 / 3, 0.0])


def test_distinct_term_across_group():
    texts = ["a b c", "a b d", "x y z"]
    groups = ["p", "p", "q"]
    # text0 bigrams {ab, bc}; group-mate has {ab, bd} -> only bc novel: 1/2; text1 -> 1/2; text2 alone -> 1
    assert F.distinct_term(texts, groups).tolist() == pytest.approx([0.5, 0.5, 1.0])


def test_keyword_term():
    v = F.keyword_term(["Storms over the Harbour", "nothing here", "anything"], [["storm", "harbour", "letter"], ["sea"], []])
    assert v.tolist() == pytest.approx([2 / 3, 0.0, 0.0])


def test_tone_term():
    # happy, bright positive; sad negative -> (2 - 1) / (3 + 1)
    v = F.tone_term(["happy bright sad day", "a day", "dark cold night"])
    assert v.tolist() == pytest.approx([0.25, 0.0, -2 / 3])


def test_style_term_cosine():
    table = {"t1": [1.0, 0.0], "t2": [1.0, 1.0], "s": [1.0, 0.0]}

    def embed(xs):
        return np.asarray([table[x] for x in xs])

    v = F.style_term(["t1", "t2", "t1"], ["s", "s", ""], embed)
    assert v.tolist() == pytest.approx([1.0, 1 / np.sqrt(2), 0.0])


def test_style_term_with_real_embedder(embedder):
    embed = F.embed_with(embedder)
    sims = F.style_term(
        ["The crimson sun roared over velvet hills, smelling of smoke and salt.", "The meeting is at 3 pm."],
        ["vivid, concrete, sensory detail: sights, sounds, textures, smells"] * 2,
        embed,
    )
    assert sims[0] > sims[1]


class ConstRM:
    """A reward model stand-in with a known score: the number of characters."""

    def score(self, contexts, texts, normalize=False):
        assert len(contexts) == len(texts)
        return np.asarray([len(t) for t in texts], np.float32) / (10.0 if normalize else 1.0)


def test_compose_weights_per_mode_and_logs_terms():
    cfg = RewardConfig(
        weights={
            "continue": {"rm": 1.0, "length": 2.0},
            "inspire": {"keywords": 3.0, "tone": 1.0},
        },
        length_targets={"continue": 4.0, "inspire": 4.0},
    )
    fn = RewardFunction(cfg, rm=ConstRM())
    prompts = [
        RolloutPrompt("p1", "continue", context="c"),
        RolloutPrompt("p2", "inspire", keywords=["sea", "moon"]),
    ]
    texts = ["a b", "happy sea"]  # lengths 3 and 9 chars
    out = fn(prompts, texts)
    # continue: rm 3/10 = 0.3 (normalised), length 2 words vs 4 -> -0.5; total 0.3 + 2 * -0.5 = -0.7
    # inspire: keywords 1/2, tone (1-0)/(1+1) = 0.5; total 3 * 0.5 + 0.5 = 2.0
    assert out.total.tolist() == pytest.approx([-0.7, 2.0])
    assert set(out.terms) == {"rm", "length", "keywords", "tone"}
    assert out.terms["rm"].tolist() == pytest.approx([0.3, 0.9])
    m = out.means()
    assert m["reward/keywords"] == pytest.approx(0.25)
    assert m["reward/total"] == pytest.approx(0.65)


class BrevityRM:
    """A learned taste for brevity: fewer characters, more reward (its best text is the empty one)."""

    def score(self, contexts, texts, normalize=False):
        return -np.asarray([len(t) for t in texts], np.float32)


def test_a_suggestion_without_words_gets_the_unusable_reward():
    ps = [RolloutPrompt("p", "continue")] * 3
    texts = ["Short one.", "", " ... ! "]  # the last two have no word: the generator would drop them
    out = RewardFunction(RewardConfig.only(rm=1.0), rm=BrevityRM())(ps, texts)
    assert out.total.tolist() == [-10.0, -3.0, -3.0]  # the default floor, whatever the RM says
    assert out.terms["rm"].tolist() == [-10.0, 0.0, -7.0]  # the term itself is logged unchanged
    floor = RewardFunction(RewardConfig.only(rm=1.0, repetition=1.0), rm=BrevityRM())
    floor.cfg.unusable_reward = -50.0
    assert floor(ps, texts).total.tolist()[1:] == [-50.0, -50.0]
    off = RewardFunction(RewardConfig(weights=RewardConfig.only(rm=1.0).weights, unusable_reward=None), rm=BrevityRM())
    assert off(ps, texts).total.tolist() == [-10.0, 0.0, -7.0]


def test_fluency_uses_extras_or_callable():
    cfg = RewardConfig.only(fluency=1.0)
    fn = RewardFunction(cfg, fluency=lambda ps, ts: np.full(len(ts), -2.0))
    ps = [RolloutPrompt("p", "continue")] * 2
    assert fn(ps, ["a", "b"]).total.tolist() == [-2.0, -2.0]
    assert fn(ps, ["a", "b"], extras={"ref_logp_mean": np.array([-1.0, -3.0])}).total.tolist() == [-1.0, -3.0]


def test_unknown_term_rejected():
    with pytest.raises(ValueError):
        RewardConfig.only(nonsense=1.0)


def test_rollout_prompt_from_request(store):
    req = store.record_request(
        profile_id="p", mode="restyle", text="It was a dark night.", options={"style": "vivid", "keywords": []},
        prompt="<rendered>", policy_version=0, suggestions=["x"],
    )
    rp = RolloutPrompt.from_request(req)
    assert rp.prompt_text == "<rendered>" and rp.mode == "restyle"
    assert "sensory" in rp.style_text and "restyle" in rp.context


class TwoHeadRM:
    """An ensemble stand-in with known members: head A scores the characters, head B their negation
    for texts longer than 3 characters (it disagrees there) and the same otherwise."""

    def score_members(self, contexts, texts, normalize=False):
        a = np.asarray([len(t) for t in texts], np.float32)
        b = np.where(a > 3, -a, a)
        return np.stack([a, b]) / (10.0 if normalize else 1.0)

    def score(self, contexts, texts, normalize=False):
        return self.score_members(contexts, texts, normalize).mean(0)


def test_ensemble_rm_term_is_mean_minus_alpha_std():
    ps = [RolloutPrompt("p", "continue")] * 2
    texts = ["abc", "abcdef"]  # heads (normalised): [0.3, 0.3] and [0.6, -0.6]
    out = RewardFunction(RewardConfig.only(rm=1.0), rm=TwoHeadRM())(ps, texts)
    # mean 0.3 and 0.0; std 0 and 0.6; default alpha 1 -> 0.3 and -0.6
    assert out.terms["rm"].tolist() == pytest.approx([0.3, -0.6])
    assert out.info["rm_uncertainty"].tolist() == pytest.approx([0.0, 0.6])
    assert out.means()["reward/rm_uncertainty"] == pytest.approx(0.3)
    half = RewardFunction(RewardConfig(weights=RewardConfig.only(rm=1.0).weights, rm_uncertainty=0.5), rm=TwoHeadRM())
    assert half(ps, texts).total.tolist() == pytest.approx([0.3, -0.3])
    # a single model has no spread to log
    assert "rm_uncertainty" not in RewardFunction(RewardConfig.only(rm=1.0), rm=ConstRM())(ps, texts).info
