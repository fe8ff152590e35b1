"""Reward model: losses and metrics by hand, learning on separable data, chance on shuffled
labels, save -> load identity, the embedding cache, the store round trip, the LM backbone."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from reward.config import RewardTrainConfig
from reward.feedback import PointwiseTarget, PreferencePair, RewardData
from reward.losses import bradley_terry_loss, pointwise_loss
from reward.train import (
    expected_calibration_error,
    grouped_folds,
    length_direction,
    length_floor,
    pair_accuracy,
    paired_bootstrap_ci,
    pairs_from_points,
    shuffled_labels,
    split_by_group,
    train_reward_model,
)


# ----------------------------------------------------------------------------- by hand
def test_bradley_terry_loss_by_hand():
    rc, rr = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    l1, l0 = math.log(1 + math.exp(-1)), math.log(2)  # 0.3133, 0.6931
    assert bradley_terry_loss(rc, rr).item() == pytest.approx((l1 + l0) / 2, abs=1e-6)
    lm = math.log(1 + math.exp(-0.5))  # margin 0.5 on the first pair: -log sigmoid(1 - 0.5)
    assert bradley_terry_loss(rc, rr, torch.tensor([0.5, 0.0])).item() == pytest.approx((lm + l0) / 2, abs=1e-6)
    assert bradley_terry_loss(rc, rr, weight=torch.tensor([3.0, 1.0])).item() == pytest.approx(
        (3 * l1 + l0) / 4, abs=1e-6)


def test_pointwise_loss_by_hand():
    # BCE(sigmoid(0), 0.5) = log 2; BCE(sigmoid(2), 1) = log(1 + e^-2)
    r, t = torch.tensor([0.0, 2.0]), torch.tensor([0.5, 1.0])
    assert pointwise_loss(r, t).item() == pytest.approx((math.log(2) + math.log(1 + math.exp(-2))) / 2, abs=1e-6)


def test_metrics_by_hand():
    assert pair_accuracy(np.array([1.0, 2.0, 0.0, 1.0]), np.array([0.0, 3.0, 0.0, 0.5])) == pytest.approx(
        (1 + 0 + 0.5 + 1) / 4)
    # confidences 0.9, 0.9 (both right) and 0.6, 0.6 (one right): |1-.9|*.5 + |.5-.6|*.5 = 0.1
    assert expected_calibration_error(np.array([0.9, 0.9, 0.6, 0.4])) == pytest.approx(0.1, abs=1e-9)
    pairs = [PreferencePair("", "aaaa", "a"), PreferencePair("", "aaa", "a"), PreferencePair("", "aa", "a"),
             PreferencePair("", "a", "aaaa")]
    assert length_floor(pairs) == pytest.approx(0.75)  # "longer wins" is right 3 times in 4
    assert length_floor(pairs[3:]) == pytest.approx(1.0)  # "shorter wins" is right
    # a rule fixed in advance (by training data) is scored as it is, even where it is the worse one
    assert length_floor(pairs, direction=1) == pytest.approx(0.75)
    assert length_floor(pairs, direction=-1) == pytest.approx(0.25)
    assert length_direction(pairs) == 1 and length_direction(pairs[3:]) == -1
    assert length_direction(pairs[:1] + pairs[3:]) == 1  # a tie (1 of 2) goes to "longer wins"


def test_pairs_from_points_and_shuffle():
    pts = [PointwiseTarget("c", "a", 1.0, group="1"), PointwiseTarget("c", "b", 0.5, group="2"),
           PointwiseTarget("c", "d", 0.4, group="3"), PointwiseTarget("other", "e", 0.0, group="4")]
    got = sorted((p.chosen, p.rejected) for p in pairs_from_points(pts, 0.2))
    assert got == [("a", "b"), ("a", "d")]  # b vs d differ by 0.1; "e" has another context
    # gaps: a-b 0.5, a-d 0.6, b-d 0.1; below max_diff 0.55 only a-b, from 0.05 to 0.2 only b-d
    assert [(p.chosen, p.rejected) for p in pairs_from_points(pts, 0.2, max_diff=0.55)] == [("a", "b")]
    assert [(p.chosen, p.rejected) for p in pairs_from_points(pts, 0.05, max_diff=0.2)] == [("b", "d")]
    # versions of one story share a group: a and b (group s), d alone (group t)
    story = [PointwiseTarget("c", "a", 1.0, group="s"), PointwiseTarget("c", "b", 0.5, group="s"),
             PointwiseTarget("c", "d", 0.4, group="t")]
    within = pairs_from_points(story, 0.2, same_group=True)
    assert [(p.chosen, p.rejected, p.group) for p in within] == [("a", "b", "s|s")]
    assert [(p.chosen, p.rejected, p.group) for p in pairs_from_points(story, 0.2, same_group=False)] == [
        ("a", "d", "s|t")]
    data = RewardData([PreferencePair("c", str(i), str(i + 100)) for i in range(200)], pts)
    sh = shuffled_labels(data, seed=0)
    flipped = sum(p.chosen != q.chosen for p, q in zip(data.pairs, sh.pairs))
    assert flipped == 100  # exactly half
    assert sorted(p.target for p in sh.points) == sorted(p.target for p in pts)


def test_split_by_group_never_splits_a_group():
    data = RewardData([PreferencePair("c", f"x{i}", f"y{i}", group=f"g{i % 10}") for i in range(50)], [])
    tr, ev = split_by_group(data, 0.2, seed=3)
    assert len(ev.groups()) == 2 and len(tr.groups()) == 8
    assert not set(tr.groups()) & set(ev.groups())
    assert len(tr) + len(ev) == 50


def test_grouped_folds_hold_out_every_group_once():
    data = RewardData([PreferencePair("c", f"x{i}", f"y{i}", group=f"g{i % 11}") for i in range(55)], [])
    folds = grouped_folds(data, k=5, seed=1)
    assert len(folds) == 5
    held = [g for _tr, ev in folds for g in ev.groups()]
    assert sorted(held) == sorted(data.groups())  # each of the 11 groups held out exactly once
    assert sorted(len(ev.groups()) for _tr, ev in folds) == [2, 2, 2, 2, 3]
    for tr, ev in folds:
        assert not set(tr.groups()) & set(ev.groups()) and len(tr) + len(ev) == 55
    assert [ev.groups() for _t, ev in grouped_folds(data, 5, 1)] == [ev.groups() for _t, ev in folds]
    with pytest.raises(ValueError):
        grouped_folds(data, k=12)


def test_paired_bootstrap_ci_by_hand():
    # model right on every pair, longer wins on every pair: diff 0 in every resample
    ci = paired_bootstrap_ci([1, 1, 1, 1], [1, 1, 1, 1], [[0], [0], [1], [1]], n_boot=200)
    assert (ci["diff"], ci["lo"], ci["hi"]) == (0.0, 0.0, 0.0)
    # each cluster: model right on one of its two pairs (0.5); longer always wins (floor 1) -> -0.5 always
    ci = paired_bootstrap_ci([1, 0, 1, 0], [1, 1, 1, 1], [[0], [0], [1], [1]], n_boot=200)
    assert ci["diff"] == ci["lo"] == ci["hi"] == -0.5
    # two clusters, model right on cluster 0 only, length a coin flip (floor 0.5): a resample of
    # {0,0} gives 1 - 0.5, {1,1} gives 0 - 0.5, a mixed one 0.5 - 0.5; each pure draw has p = 1/4
    ci = paired_bootstrap_ci([1, 0], [0.5, 0.5], [[0], [1]], n_boot=2000, seed=0)
    assert ci["diff"] == 0.0 and ci["lo"] == -0.5 and ci["hi"] == 0.5
    # a pair in two clusters (two paragraphs) is weighted by the product of their draw counts:
    # pair 0 in clusters {0, 1}, pair 1 in {1}; longer always wins (floor 1). Draw {1, 1}: weights
    # 0 and 2, only the wrong pair 1 counts -> 0 - 1; draw {0, 1}: weights 1 and 1 -> 0.5 - 1; draw
    # {0, 0}: no pair has weight (skipped). So resamples are -1 (1/3) or -0.5 (2/3).
    ci = paired_bootstrap_ci([1, 0], [1, 1], [[0, 1], [1]], n_boot=2000, seed=0)
    assert ci["diff"] == -0.5 and ci["lo"] == -1.0 and ci["hi"] == -0.5
    # the floor's rule fixed by the training data: model right on both pairs, longer wins on pair 0
    # only. Fixed "longer wins": {0,0} 1 - 1, {1,1} 1 - 0, mixed 1 - 0.5 -> lo 0, hi 1. Recomputed
    # (max of the two rules) {1,1} is 1 - 1 instead: the CI is [0, 0.5]
    ci = paired_bootstrap_ci([1, 1], [1, 0], [[0], [1]], n_boot=2000, seed=0, direction=1)
    assert ci["diff"] == 0.5 and ci["lo"] == 0.0 and ci["hi"] == 1.0
    ci = paired_bootstrap_ci([1, 1], [1, 0], [[0], [1]], n_boot=2000, seed=0)
    assert ci["diff"] == 0.5 and ci["lo"] == 0.0 and ci["hi"] == 0.5
    # one rule per pair (each fold's own): longer for pair 0, shorter for pair 1 -> the floor is
    # right on both, diff 0 in every resample
    ci = paired_bootstrap_ci([1, 1], [1, 0], [[0], [1]], n_boot=200, seed=0, direction=[1, -1])
    assert (ci["diff"], ci["lo"], ci["hi"]) == (0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------- learning (real MiniLM)
SUBJECTS = ["the harbour", "the old mill", "her garden", "the city at dawn", "the mountain road", "the library",
            "the winter forest", "the small kitchen", "the river", "the night market", "the school yard",
            "the lighthouse"]
GOOD = ["glowed with warm, golden light and the smell of fresh bread", "was calm, bright and full of quiet joy",
        "shimmered under a gentle sky while children laughed", "felt welcoming, peaceful and beautifully alive"]
BAD = ["was filthy, broken and reeked of rot and despair", "was a miserable, ugly ruin full of anger",
       "stank of garbage and everyone there was cruel", "felt hostile, grim and hopelessly wretched"]


def separable_data(n_groups: int = 48) -> RewardData:
    """Context: describe a place; chosen: a pleasant description; rejected: a nasty one.
    Similar lengths, so length alone cannot tell them apart."""
    rng = random.Random(0)
    pairs = []
    for g in range(n_groups):
        subj = SUBJECTS[g % len(SUBJECTS)]
        ctx = f"Describe {subj} in one sentence. (#{g})"
        good, bad = rng.choice(GOOD), rng.choice(BAD)
        pairs.append(PreferencePair(ctx, f"{subj.capitalize()} {good}.", f"{subj.capitalize()} {bad}.",
                                    group=f"g{g}"))
        pairs.append(PreferencePair(ctx, f"{subj.capitalize()} {rng.choice(GOOD)} today.",
                                    f"{subj.capitalize()} {rng.choice(BAD)} today.", group=f"g{g}"))
    return RewardData(pairs, [])


FAST = RewardTrainConfig(epochs=30, seed=0, eval_frac=0.25)


def test_separable_set_is_learned_and_shuffled_is_chance(embedder, store):
    data = separable_data()
    train, held = split_by_group(data, 0.25, seed=0)
    model, m = train_reward_model(train, FAST, embedder, store, eval=held)
    assert m["rm/accuracy"] > 0.9, m
    assert 0.25 <= m["rm/shuffled_control"] <= 0.75, m
    assert m["rm/n_train"] == len(train) and m["rm/n_eval"] == len(held)
    for k in ("rm/loss", "rm/ece", "rm/length_floor", "rm/seconds"):
        assert k in m and m[k] == m[k]
    # a model trained on shuffled labels, measured directly
    _ctrl, mc = train_reward_model(shuffled_labels(train, 1), FAST, embedder, store, eval=held)
    assert 0.2 <= mc["rm/accuracy"] <= 0.8
    # normalised scores use the training reward mean/std
    r = model.score([p.context for p in held.pairs], [p.chosen for p in held.pairs])
    rn = model.score([p.context for p in held.pairs], [p.chosen for p in held.pairs], normalize=True)
    np.testing.assert_allclose(rn, (r - float(model.reward_mean)) / float(model.reward_std), rtol=1e-5, atol=1e-5)


def test_pointwise_targets_are_learned(embedder, store):
    rng = random.Random(1)
    pts = []
    for g, subj in enumerate(SUBJECTS * 3):
        good = rng.random() < 0.5
        text = f"{subj.capitalize()} {rng.choice(GOOD if good else BAD)}."
        pts.append(PointwiseTarget("Describe a place.", text, 0.9 if good else 0.1, group=f"p{g}"))
    model, m = train_reward_model(RewardData([], pts), FAST, embedder, store)
    assert m["rm/spearman"] > 0.6, m
    assert m["rm/accuracy"] > 0.9, m


def test_save_load_identical_and_cache_reused(embedder, store, tmp_path):
    from reward.model import RewardModel

    data = separable_data(16)
    model, m = train_reward_model(data, RewardTrainConfig(epochs=5, eval_frac=0.0, shuffled_control=False),
                                  embedder, store)
    assert m["rm/n_embedded"] > 0
    ctx, txt = [p.context for p in data.pairs], [p.rejected for p in data.pairs]
    before = model.score(ctx, txt)
    model.save(tmp_path / "rm")
    assert (tmp_path / "rm" / "reward_head.safetensors").exists()
    loaded = RewardModel.load(tmp_path / "rm", embedder, store)
    np.testing.assert_array_equal(loaded.score(ctx, txt), before)
    assert float(loaded.reward_mean) == float(model.reward_mean)
    # retraining on the same texts embeds nothing new (the store caches by text hash)
    _m2, m2 = train_reward_model(data, RewardTrainConfig(epochs=2, eval_frac=0.0, shuffled_control=False),
                                 embedder, store)
    assert m2["rm/n_embedded"] == 0


def test_train_from_store_and_live_version(embedder, store, tmp_path):
    from reward.train import (
        load_live_reward_model,
        save_reward_version,
        train_from_store,
    )

    assert load_live_reward_model(store, "default", embedder) is None
    data = separable_data(12)
    for p in data.pairs:  # feedback through the store: the person marks the pleasant one "best"
        req = store.record_request(profile_id="default", mode="continue", text=p.context, options={}, prompt="p",
                                   policy_version=0, suggestions=[p.rejected, p.chosen])
        store.add_feedback(req.suggestions[1].id, "best", source="ui")
    cfg = RewardTrainConfig(epochs=20, eval_frac=0.25, seed=0)
    model, m = train_from_store(store, "default", embedder, cfg)
    assert m["rm/n_train"] + m["rm/n_eval"] == len(data.pairs)
    v = save_reward_version(store, tmp_path, "default", model, m, cfg)
    assert v.kind == "reward" and v.status == "published" and v.metrics["rm/accuracy"] == m["rm/accuracy"]
    live = load_live_reward_model(store, "default", embedder)
    ctx, txt = [p.context for p in data.pairs], [p.chosen for p in data.pairs]
    np.testing.assert_array_equal(live.score(ctx, txt), model.score(ctx, txt))


# ----------------------------------------------------------------------------- LM backbone (tiny model)
def test_lm_backbone_learns_and_round_trips(tiny_lm, tiny_tokenizer, tmp_path):
    from assistant.lm.tiny import build_tiny_lm
    from reward.model import RewardModel

    good = ["Happy, bright, wonderful, joyful.", "Sunny, warm and cheerful.", "Glad, bright and warm."]
    bad = ["Bitter, icy, smoky.", "Roaring bitter icy smoke.", "Crimson icy bitter."]
    pairs = [PreferencePair(f"Write a line {i}.", g, b, group=str(i))
             for i, (g, b) in enumerate(itertools.product(good, bad))]
    data = RewardData(pairs, [])
    cfg = RewardTrainConfig(backbone="lm", lm_epochs=25, lm_lr=3e-3, lm_batch_size=9, eval_frac=0.0,
                            shuffled_control=False, lm_max_length=64)
    model, tok = tiny_lm
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    rm, m = train_reward_model(data, cfg, lm=(model, tok))
    assert m["rm/train_accuracy"] >= 0.9, m
    # base weights frozen, LoRA weights trained
    lora = {k: v for k, v in rm.lm.state_dict().items() if "lora_" in k}
    assert lora and any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)
    for k, v in rm.lm.get_base_model().state_dict().items():
        if "lora_" not in k and "base_layer" not in k and k in base_before:
            assert torch.equal(v, base_before[k]), k
    before = rm.score([p.context for p in pairs], [p.chosen for p in pairs])
    rm.save(tmp_path / "lm-rm")
    assert (tmp_path / "lm-rm" / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "lm-rm" / "reward_head.safetensors").exists()
    fresh = build_tiny_lm(seed=0, tokenizer=tiny_tokenizer)
    loaded = RewardModel.load(tmp_path / "lm-rm", lm=fresh)
    np.testing.assert_allclose(loaded.score([p.context for p in pairs], [p.chosen for p in pairs]), before,
                               rtol=1e-5, atol=1e-5)


def test_relation_stats_by_hand():
    from reward.features import RELATION_STAT_NAMES, relation_stats

    ctx = "The cat sat on the mat. The cat slept."
    # content words of ctx (stop words dropped): cat, sat, mat, cat, slept -> distinct {cat, sat, mat, slept}
    txt = "The cat sat on a rug"  # content words: cat, sat, rug
    st = dict(zip(RELATION_STAT_NAMES, relation_stats(ctx, txt)))
    assert st["coverage"] == pytest.approx(2 / 4)  # cat, sat of {cat, sat, mat, slept}
    assert st["weighted_coverage"] == pytest.approx(3 / 5)  # cat, sat, cat of 5 occurrences
    # bigrams the cat | cat sat | sat on | on a | a rug: the first three occur in ctx
    assert st["bigram_overlap"] == pytest.approx(3 / 5)
    assert st["novel_content_frac"] == pytest.approx(1 / 3)  # rug
    assert st["ends_clean"] == 0.0 and relation_stats(ctx, txt + ".")[-1] == 1.0


def test_style_stats_by_hand():
    from reward.features import STYLE_STAT_NAMES, style_stats

    txt = 'He ran. "Stop it," she said quietly, slowly.'
    st = dict(zip(STYLE_STAT_NAMES, style_stats(txt)))
    # sentences "He ran" (2 words) and '"Stop it," she said quietly, slowly' (6): std of [2, 6] is 2
    assert st["sentence_words_std"] == pytest.approx(2.0)
    assert st["dialogue_frac"] == pytest.approx(10 / 44)  # '"Stop it,"' is 10 of 44 characters
    # words: he ran stop it she said quietly slowly (8); 7+ letters: quietly; -ly: quietly, slowly
    assert st["long_word_frac"] == pytest.approx(1 / 8)
    assert st["comma_rate"] == pytest.approx(2 / 8)
    assert st["ly_word_frac"] == pytest.approx(2 / 8)
    assert style_stats("").tolist() == [0.0] * len(STYLE_STAT_NAMES)
    assert style_stats("“Fly,” said the only owl.")[1] == pytest.approx(6 / 25)  # curly quotes count too


def test_extra_stats_train_save_load(embedder, store, tmp_path):
    from reward.features import STAT_NAMES
    from reward.model import RewardModel

    stats = STAT_NAMES + ("coverage", "bigram_overlap", "cos_context_head")
    data = separable_data(16)
    cfg = RewardTrainConfig(epochs=5, eval_frac=0.0, shuffled_control=False, stats=stats,
                            emb_features=("s", "sc", "sch"))
    model, _m = train_reward_model(data, cfg, embedder, store)
    assert model.cfg.stats == stats and model.cfg.n_features == 3 * 384 + len(stats)
    ctx, txt = [p.context for p in data.pairs], [p.chosen for p in data.pairs]
    before = model.score(ctx, txt)
    model.save(tmp_path / "rm")
    loaded = RewardModel.load(tmp_path / "rm", embedder, store)
    assert loaded.cfg.stats == stats
    np.testing.assert_array_equal(loaded.score(ctx, txt), before)
    with pytest.raises(ValueError, match="unknown reward statistics"):
        train_reward_model(data, RewardTrainConfig(epochs=1, eval_frac=0.0, shuffled_control=False,
                                                   stats=("no_such_stat",)), embedder, store)
    # unnamed, training uses TRAIN_STAT_NAMES (three style stats beyond STAT_NAMES), and saves them
    from reward.features import TRAIN_STAT_NAMES

    plain, _m = train_reward_model(data, RewardTrainConfig(epochs=5, eval_frac=0.0, shuffled_control=False),
                                   embedder, store)
    assert plain.cfg.stats == TRAIN_STAT_NAMES and TRAIN_STAT_NAMES[: len(STAT_NAMES)] == STAT_NAMES
    plain.save(tmp_path / "plain")
    assert RewardModel.load(tmp_path / "plain", embedder, store).cfg.stats == TRAIN_STAT_NAMES


def test_bootstrap_by_group_by_hand():
    from reward.train import bootstrap_by_group

    # one group is always drawn exactly once: the data come back unchanged
    one = RewardData([PreferencePair("c", "a", "b", weight=2.0, group="g")], [PointwiseTarget("c", "a", 0.5, group="g")])
    assert bootstrap_by_group(one, seed=3) == one
    # many groups: as many draws as groups, a group keeps all its items with one multiplier
    pairs = [PreferencePair("c", f"a{g}{i}", f"b{g}{i}", group=f"g{g}") for g in range(10) for i in range(3)]
    data = RewardData(pairs, [PointwiseTarget("c", f"t{g}", 0.1, group=f"g{g}") for g in range(10)])
    bs = bootstrap_by_group(data, seed=0)
    mult = {}
    for p in [*bs.pairs, *bs.points]:
        assert float(p.weight).is_integer() and p.weight >= 1
        mult.setdefault(p.group, set()).add(p.weight)
    assert all(len(m) == 1 for m in mult.values())
    assert sum(m.pop() for m in mult.values()) == 10  # the draws
    assert all(sum(1 for p in bs.pairs if p.group == g) == 3 for g in mult)  # a drawn group is whole
    assert len(mult) < 10  # ten draws from ten groups with replacement leave some out (here)
    assert bootstrap_by_group(data, seed=0) == bs and bootstrap_by_group(data, seed=1) != bs


def test_ensemble_learns_round_trips_and_is_unsure_off_the_data(embedder, store, tmp_path):
    from reward.model import EnsembleRewardModel, RewardModel, load_reward_model
    from reward.train import load_live_reward_model, save_reward_version

    data = separable_data()
    train, held = split_by_group(data, 0.25, seed=0)
    cfg = RewardTrainConfig(epochs=30, seed=0, ensemble=3, shuffled_control=False)
    model, m = train_reward_model(train, cfg, embedder, store, eval=held)
    assert isinstance(model, EnsembleRewardModel) and len(model.members) == 3
    assert m["rm/accuracy"] > 0.9, m
    ctx, txt = [p.context for p in held.pairs], [p.chosen for p in held.pairs] + [p.rejected for p in held.pairs]
    ctx = ctx + ctx
    each = model.score_members(ctx, txt)
    assert each.shape == (3, len(txt))
    assert not np.allclose(each[0], each[1])  # different resamples, different heads
    np.testing.assert_allclose(model.score(ctx, txt), each.mean(0), rtol=1e-6)
    z = model.score_members(ctx, txt, normalize=True)
    np.testing.assert_allclose(z, (each - float(model.reward_mean)) / float(model.reward_std), rtol=1e-5, atol=1e-5)
    # the members agree where they were trained and disagree on text unlike anything rated
    seen = model.score_members([p.context for p in train.pairs], [p.chosen for p in train.pairs], normalize=True)
    odd = ["zq!! 0x7f 0x7f ## 12345 qwv", "SELECT * FROM table WHERE id = 3;", "ok", "1. 1. 7. 7. 7."]
    far = model.score_members([ctx[0]] * len(odd), odd, normalize=True)
    assert far.std(0).mean() > seen.std(0).mean(), (far.std(0), seen.std(0).mean())
    # save -> load gives identical scores, through either loader and the store's live version
    model.save(tmp_path / "ens")
    for loaded in (RewardModel.load(tmp_path / "ens", embedder, store), load_reward_model(tmp_path / "ens", embedder)):
        assert isinstance(loaded, EnsembleRewardModel)
        np.testing.assert_array_equal(loaded.score_members(ctx, txt), each)
        assert float(loaded.reward_std) == float(model.reward_std)
    save_reward_version(store, tmp_path / "data", "default", model, m, cfg)
    live = load_live_reward_model(store, "default", embedder)
    np.testing.assert_array_equal(live.score(ctx, txt), model.score(ctx, txt))
    with pytest.raises(ValueError, match="at least 1"):
        train_reward_model(train, RewardTrainConfig(ensemble=0), embedder, store, eval=held)
    with pytest.raises(ValueError, match="tie_pick_weight"):
        RewardTrainConfig(tie_pick_weight=1.5).validate()


def test_anchored_ensemble_scores_with_the_full_head_and_keeps_the_bootstrap_spread(embedder, store, tmp_path):
    from dataclasses import replace

    from reward.model import EnsembleRewardModel, RewardModel

    data = separable_data(24)
    cfg = RewardTrainConfig(epochs=20, seed=0, ensemble=3, shuffled_control=False, eval_frac=0.0)
    assert cfg.ensemble_anchor  # the default
    model, _ = train_reward_model(data, cfg, embedder, store, eval=RewardData())
    assert isinstance(model, EnsembleRewardModel) and model.anchor is not None and model.cfg.anchored
    one, _ = train_reward_model(data, replace(cfg, ensemble=1), embedder, store, eval=RewardData())
    ctx = [p.context for p in data.pairs] * 2
    txt = [p.chosen for p in data.pairs] + [p.rejected for p in data.pairs]
    each = model.score_members(ctx, txt)
    # the score is the head fitted on all the data (seed cfg.seed), exactly the single-head model
    np.testing.assert_allclose(model.score(ctx, txt), one.score(ctx, txt), rtol=1e-5, atol=1e-5)
    # the spread is the bootstrap heads' own: the same members without the anchor
    free = EnsembleRewardModel.from_members(list(model.members))
    assert free.anchor is None
    bare = free.score_members(ctx, txt)
    np.testing.assert_allclose(each.std(0), bare.std(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(each - each.mean(0), bare - bare.mean(0), rtol=1e-5, atol=1e-5)
    assert each.std(0).mean() > 0
    # save -> load keeps the anchor; an ensemble without it (older files) still loads unanchored
    model.save(tmp_path / "anch")
    loaded = RewardModel.load(tmp_path / "anch", embedder, store)
    assert loaded.anchor is not None
    np.testing.assert_array_equal(loaded.score_members(ctx, txt), each)
    free.save(tmp_path / "free")
    assert RewardModel.load(tmp_path / "free", embedder, store).anchor is None
    with pytest.raises(ValueError, match="share one"):
        EnsembleRewardModel.from_members(list(model.members), RewardModel(replace(model.anchor.cfg, hidden=8)))


def test_learns_a_taste_in_no_lexicon_and_generalises_to_unseen_words(embedder, store):
    """A taste no word list of a rater or a feature names (living creatures over things), learnt
    from pairs of one vocabulary and measured on pairs of words it never saw: only the meaning,
    which the embedding carries, can carry it over."""
    places = ["by the gate", "near the river", "under the bridge", "in the kitchen", "on the hill", "at the station"]
    seen_yes = ["cat", "dog", "horse", "sparrow", "fox", "goat"]
    seen_no = ["kettle", "bucket", "lamp", "brick", "ladder", "chair"]
    new_yes = ["owl", "rabbit", "donkey", "heron"]
    new_no = ["teapot", "shovel", "candle", "barrel"]

    def pairs(yes, no, tag):
        return [PreferencePair(f"Write a line. ({tag}{i})", f"The {a} waited {p}.", f"The {b} waited {p}.",
                               group=f"{tag}{i}")
                for i, (a, b, p) in enumerate((a, b, p) for a in yes for b in no for p in places[:2])]

    train, test = pairs(seen_yes, seen_no, "t"), pairs(new_yes, new_no, "e")
    assert not {w for p in test for w in p.chosen.split()} & set(seen_yes + seen_no)
    _model, m = train_reward_model(RewardData(train, []), FAST, embedder, store, eval=RewardData(test, []))
    assert m["rm/length_floor"] <= 0.75  # lengths do not give it away
    assert m["rm/accuracy"] >= 0.8, m
    assert m["rm/shuffled_control"] <= 0.7, m  # the same model on shuffled labels cannot


def test_word_vector_sums_by_hand():
    """wvec: one embedding per content-word occurrence, summed, over WORD_VECTOR_SCALE; stop words,
    numbers and case do not count; a text without content words gives zeros."""
    from reward.features import WORD_VECTOR_SCALE, content_words, word_vector_sums

    table = {"red": [1.0, 0.0], "fox": [0.0, 1.0], "ran": [1.0, 1.0]}
    asked = []

    def embed(words):
        asked.append(list(words))
        return np.array([table[w] for w in words], np.float32)

    assert content_words("The red fox, the RED one, ran 3 times") == ["red", "fox", "red", "one", "ran", "times"]
    table.update({"one": [0.0, 0.0], "times": [0.0, 2.0]})
    out = word_vector_sums(["The red fox, the RED one, ran 3 times", "it is 42", "fox"], embed, 2)
    # red twice (2, 0) + fox (0, 1) + one (0, 0) + ran (1, 1) + times (0, 2) = (3, 4)
    np.testing.assert_allclose(out[0], np.array([3.0, 4.0]) / WORD_VECTOR_SCALE)
    np.testing.assert_array_equal(out[1], [0.0, 0.0])
    np.testing.assert_allclose(out[2], np.array([0.0, 1.0]) / WORD_VECTOR_SCALE)
    assert asked == [["fox", "one", "ran", "red", "times"]]  # each distinct word embedded once
    assert word_vector_sums(["a the of"], embed, 2).shape == (1, 2)


def test_wvec_block_trains_saves_and_loads(embedder, store, tmp_path):
    from reward.model import RewardModel

    data = separable_data(16)
    cfg = RewardTrainConfig(epochs=5, eval_frac=0.0, shuffled_control=False, emb_features=("s", "wvec"))
    model, _m = train_reward_model(data, cfg, embedder, store)
    assert model.cfg.n_emb_features == 2 * 384
    ctx, txt = [p.context for p in data.pairs], [p.chosen for p in data.pairs]
    model.save(tmp_path / "rm")
    np.testing.assert_array_equal(RewardModel.load(tmp_path / "rm", embedder, store).score(ctx, txt),
                                  model.score(ctx, txt))
