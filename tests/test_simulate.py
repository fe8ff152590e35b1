"""Simulated raters, and the simulated human-in-the-loop cycle end to end on the tiny model."""

import numpy as np
import pytest
import torch

from reward.loop.simulate import (
    RATERS,
    SimConfig,
    concise_utility,
    interleave_modes,
    keyword_utility_factory,
    load_prompts,
    make_rater,
    simulate,
    upbeat_utility,
    vivid_utility,
)

torch.set_num_threads(1)


def test_rater_tastes_by_hand():
    assert concise_utility("", {}) == 0.0
    assert concise_utility("The dog ran. It was fast.", {}) == 1.0  # 3 words per sentence, 6 words
    # one 24-word sentence: 0.5 * (24 - 8) / 16 = 0.5 off; 24 words: 0.5 * 9 / 30 = 0.15 off
    assert concise_utility(" ".join(["word"] * 24) + ".", {}) == pytest.approx(0.35)
    assert vivid_utility("The crimson smoke smelled bitter and warm.", {}) == 1.0
    assert vivid_utility("He went to the office on a Tuesday.", {}) == 0.0
    assert upbeat_utility("a happy joyful day for all", {}) == pytest.approx(0.5 + 0.5 * np.tanh(1.0))
    assert upbeat_utility("a sad and lonely day for all", {}) == pytest.approx(0.5 - 0.5 * np.tanh(1.0))
    kw = keyword_utility_factory(["light", "home"])
    assert kw("The light at home was on.", {}) == 1.0
    assert kw("The fog rolled in over the sea.", {"keywords": ["fog"]}) == 0.5


def test_rater_noise_and_judgement():
    r = make_rater("concise", seed=1)
    short, long_ = "It rained. We stayed in.", " ".join(["and then"] * 20) + "."
    stars = [r.stars([short, long_], {}) for _ in range(50)]
    assert np.mean([s[0] for s in stars]) > np.mean([s[1] for s in stars]) + 1.5
    assert all(1 <= x <= 5 for s in stars for x in s)
    assert len({tuple(s) for s in stars}) > 1  # noisy
    assert np.mean([r.judge(short, long_, {}) for _ in range(50)]) > 0.9
    assert r.judge(short, short, {}) == 0.5
    with pytest.raises(ValueError):
        make_rater("nobody")
    assert set(RATERS) >= {"concise", "vivid", "upbeat", "keywords"}


def test_prompts_file_and_interleaving():
    import random

    train, held = load_prompts()
    assert {p["mode"] for p in train} == {"continue", "restyle", "inspire"}
    assert not {p["id"] for p in train} & {p["id"] for p in held}
    order = interleave_modes(train, random.Random(0))
    assert sorted(p["id"] for p in order) == sorted(p["id"] for p in train)
    assert len({p["mode"] for p in order[:3]}) == 3


def tiny_loop(tok, store, embedder):
    """(services, policy) for simulate on two copies of the tiny model: the generator hot-swaps the
    live policy of profile "sim", the learner's Policy trains on its own copy."""
    from assistant.app.cli.common import policy_source
    from assistant.app.services import Services
    from assistant.lm.generate import Generator
    from assistant.lm.library import Library
    from assistant.lm.tiny import build_tiny_lm
    from reward.rl.policy import Policy

    gen_model, _ = build_tiny_lm(seed=0, tokenizer=tok)
    learner_model, _ = build_tiny_lm(seed=0, tokenizer=tok)
    services = Services(store, Generator(gen_model, tok, version_source=policy_source(store, "sim")),
                        Library(store, embedder), model_name="tiny", default_profile="sim")
    return services, Policy.from_base(learner_model, tok)


def test_simulate_end_to_end_on_tiny_model(tiny_tokenizer, store, embedder, tmp_path):
    services, policy = tiny_loop(tiny_tokenizer, store, embedder)
    cfg = SimConfig(budget=8, k=2, max_new_tokens=8, rm_every=4, rl_steps=1, prompts_per_step=2,
                    heldout_samples=1, rm_epochs=3, target_kl=0.5)
    res = simulate(services, policy, embedder, make_rater("concise"), cfg, tmp_path, profile="sim")
    assert res.ratings == 8
    assert res.rounds == 2 and len(res.policy_versions) == 2
    # ratings went through the feedback path, marked simulated
    fb = store.feedback("sim")
    assert {f.source for f in fb} == {"simulated"} and sum(f.kind == "stars" for f in fb) == 8
    # the reward model was retrained and the policy published; the generator swapped it in
    assert store.live_version("sim", "reward") is not None
    assert services.generator.policy_version == res.policy_versions[-1]
    assert store.live_version("sim", "policy").id == res.policy_versions[-1]
    assert 0.0 <= res.ci_low <= res.win_rate <= res.ci_high <= 1.0 and res.n_pairs == 10
    assert len(res.curves["rl/reward"]) == 2 and len(res.curves["sim/stars"]) >= 4
    assert np.isfinite(res.kl)
    # --target-kl: the RL config of every version adapts beta; the coefficient carries across rounds
    import json
    from pathlib import Path

    rl_cfgs = [json.loads((Path(store.get_version(v).path) / "config.json").read_text())
               for v in res.policy_versions]
    assert all(c["rl"]["adaptive_kl"] and c["rl"]["target_kl"] == 0.5 for c in rl_cfgs)
    assert all(c["rl"]["kl_horizon"] == cfg.kl_horizon for c in rl_cfgs)
    betas = [c["kl_coef_now"] for c in rl_cfgs]
    assert betas[0] != cfg.kl_coef and betas[1] != betas[0]


def test_simulate_rl_after_and_rm_features(tiny_tokenizer, store, embedder, tmp_path):
    """rl_after: rounds before it retrain the reward model but leave the policy alone;
    rm_features and rm_ensemble reach the reward model that simulate trains, and the RL reward
    logs the ensemble's disagreement."""
    import json
    from pathlib import Path

    services, policy = tiny_loop(tiny_tokenizer, store, embedder)
    cfg = SimConfig(budget=8, k=2, max_new_tokens=8, rm_every=4, rl_steps=1, prompts_per_step=2,
                    heldout_samples=1, rm_epochs=3, rl_after=8, rm_features=("s", "sc", "words"), rm_ensemble=2,
                    variety=True)
    # variety reaches the suggestions the rater is shown, never the held-out comparison
    seen: list[bool] = []
    suggest = services.generator.suggest
    services.generator.suggest = lambda prompt, src, gen, **kw: seen.append(gen.variety) or suggest(prompt, src, gen, **kw)
    with pytest.raises(ValueError, match="rl_after"):
        simulate(services, policy, embedder, make_rater("keywords"), SimConfig(budget=8, rl_after=8 + 1), tmp_path)
    res = simulate(services, policy, embedder, make_rater("keywords"), cfg, tmp_path, profile="sim")
    assert res.rounds == 2 and len(res.policy_versions) == 1  # round 1 (4 ratings) had no RL
    assert len(store.versions("sim", "reward")) == 2 and len(res.curves["rl/reward"]) == 1
    rm_cfg = json.loads((Path(store.live_version("sim", "reward").path) / "reward_config.json").read_text())
    assert rm_cfg["backbone"] == "ensemble" and rm_cfg["members"] == 2
    assert rm_cfg["member"]["emb_features"] == ["s", "sc", "words"]
    rated = store.recent_requests("sim", limit=100)
    assert rated and all(r.options["variety"] is True and len(r.options["angles"]) == len(r.suggestions)
                         for r in rated)
    n_held = len(load_prompts()[1])
    assert seen.count(False) == 2 * n_held and seen.count(True) == len(rated)
    assert "reward/rm_uncertainty" in store.get_version(res.policy_versions[0]).metrics


def test_utility_reward_by_hand_and_oracle_simulate(tiny_tokenizer, store, embedder, tmp_path):
    """--oracle-reward: RL reads the rater's utility (1 + 4u), never its noise, and the run says so."""
    import json
    from pathlib import Path

    from reward.functions import RolloutPrompt
    from reward.loop.simulate import UtilityReward

    rater = make_rater("keywords", seed=0)
    state = rater.rng.bit_generator.state
    ps = [RolloutPrompt("p", "inspire", keywords=["fog"]), RolloutPrompt("p", "continue")]
    out = UtilityReward(rater)(ps, ["The fog came home.", "The fog came in."])
    # inspire: "fog" (its own keyword) and "home" -> u 1 -> 5; continue: no keyword of the rater -> 1
    assert out.total.tolist() == [5.0, 1.0] and out.terms["utility"].tolist() == [1.0, 0.0]
    assert rater.rng.bit_generator.state == state  # the rater's noise is untouched

    services, policy = tiny_loop(tiny_tokenizer, store, embedder)
    cfg = SimConfig(budget=4, k=2, max_new_tokens=8, rm_every=4, rl_steps=1, prompts_per_step=2,
                    heldout_samples=1, rm_epochs=3, oracle_reward=True)
    res = simulate(services, policy, embedder, rater, cfg, tmp_path, profile="oracle")
    v = store.get_version(res.policy_versions[0])
    assert json.loads((Path(v.path) / "config.json").read_text())["oracle_reward"] is True
    assert "reward/utility" in v.metrics and "reward/rm" not in v.metrics
    assert "oracle reward" in res.summary()
