"""Reward-model feature functions by hand: sentence splitting and sentence-level alignment."""

from __future__ import annotations

import numpy as np
import pytest

from reward.model import (
    ALIGN_CONTEXT_SENTENCES,
    ALIGN_STAT_NAMES,
    ALIGN_TEXT_SENTENCES,
    alignment_sentences,
    alignment_stats,
    split_sentences,
)


def test_split_sentences_by_hand():
    text = "TITLE: my cat is lost\nPOST: I lost my cat. He ran away yesterday! Help me please?  Ok."
    assert split_sentences(text) == ["TITLE: my cat is lost", "POST: I lost my cat.", "He ran away yesterday!",
                                     "Help me please?"]  # "Ok." has fewer than 3 words
    assert split_sentences("  Yes.  ") == ["Yes."]  # nothing qualifies: the whole text
    assert split_sentences("Lost cat. Ran away yesterday, need help.", min_words=2) == [
        "Lost cat.", "Ran away yesterday, need help."]


def test_alignment_sentences_caps():
    ctx = " ".join(f"Context sentence number {i}." for i in range(60))
    txt = " ".join(f"Text sentence number {i}." for i in range(20))
    c, t = alignment_sentences(ctx, txt)
    assert len(c) <= ALIGN_CONTEXT_SENTENCES and c[-1] == "Context sentence number 59."  # the context's end
    assert len(t) == ALIGN_TEXT_SENTENCES and t[0] == "Text sentence number 0."  # the text's start


def test_alignment_stats_by_hand():
    e = np.eye(3, dtype=np.float32)
    # context sentences: e0, e1, e2; text sentences: e0 and (e0 + e1)/sqrt 2
    c = e
    t = np.stack([e[0], (e[0] + e[1]) / np.sqrt(2)])
    # cos matrix rows (context) x cols (text): e0 -> [1, .707], e1 -> [0, .707], e2 -> [0, 0]
    # coverage = mean of row maxima = (1 + .707 + 0) / 3; faithfulness = mean of column maxima = (1 + .707) / 2
    r = 1 / np.sqrt(2)
    got = dict(zip(ALIGN_STAT_NAMES, alignment_stats(c, t)))
    assert got["align_coverage"] == pytest.approx((1 + r) / 3, abs=1e-6)
    assert got["align_faithfulness"] == pytest.approx((1 + r) / 2, abs=1e-6)
    # a text that repeats the context exactly covers it fully and is fully faithful
    np.testing.assert_allclose(alignment_stats(e, e), [1.0, 1.0], atol=1e-6)


def test_alignment_features_in_the_model(embedder, store):
    """The model computes the two stats from cached MiniLM sentence embeddings: a summary that
    restates the post covers it better than an unrelated one of the same length."""
    from reward.model import STAT_NAMES, RewardModel, RewardModelConfig

    model = RewardModel(RewardModelConfig(stats=STAT_NAMES + ALIGN_STAT_NAMES, emb_features=("s", "sc")),
                        embedder, store)
    post = ("My landlord refuses to return my security deposit. I moved out two months ago and left the "
            "apartment clean. He says the carpet was damaged but it was old when I moved in.")
    good = "Landlord keeps my security deposit over an old damaged carpet."
    bad = "I am thinking about buying a new bicycle for the summer trip."
    f = model.raw_features([post, post], [good, bad]).numpy()[:, -2:]
    assert f[0, 0] > f[1, 0] and f[0, 1] > f[1, 1]
    n0 = model.cache.n_embedded
    model.raw_features([post], [good])  # cached: nothing is embedded again
    assert model.cache.n_embedded == n0


def test_hashed_words_by_hand():
    import zlib

    from reward.model import hashed_words

    v = hashed_words("Rain, rain and RAIN on the roof", 8)
    # distinct lower-cased words: rain, and, on, the, roof -> one count each in its crc32 bucket
    expect = np.zeros(8, np.float32)
    for w in ("rain", "and", "on", "the", "roof"):
        expect[zlib.crc32(w.encode()) % 8] += 1
    np.testing.assert_allclose(v, expect / np.linalg.norm(expect), rtol=1e-6)
    assert np.linalg.norm(v) == pytest.approx(1.0)
    assert not hashed_words("  ...  ", 8).any()  # no words: the zero vector, not NaN


def test_words_block_learns_a_vocabulary_and_round_trips(embedder, store, tmp_path):
    """A taste for particular words (here: any of three) that similar sentences otherwise share:
    the words block alone learns it from pairs and scores unseen sentences with those words higher."""
    import random

    from reward.feedback import PreferencePair, RewardData
    from reward.model import RewardModel
    from reward.train import RewardTrainConfig, train_reward_model

    liked = ["lantern", "harbour", "violet"]
    rng = random.Random(0)
    nouns = ["road", "house", "garden", "station", "field", "kitchen", "bridge", "market"]
    pairs = []
    for g in range(40):
        a, b = rng.sample(nouns, 2)
        pairs.append(PreferencePair("continue the story", f"We walked past the {a} and the {rng.choice(liked)}.",
                                    f"We walked past the {a} and the {b}.", group=f"g{g}"))
    cfg = RewardTrainConfig(epochs=40, eval_frac=0.0, shuffled_control=False, emb_features=("words",),
                            words_dim=256, hidden=0, weight_decay=0.0, lr=1e-2)
    model, _ = train_reward_model(RewardData(pairs, []), cfg, embedder, store)
    assert model.cfg.words_dim == 256 and model.cfg.n_features == 256 + len(model.cfg.stats)
    # unseen sentence frames: the liked word still wins
    good = [f"A {w} stood by the old {n}." for w, n in zip(liked, ["wall", "tree", "door"])]
    bad = [f"A {m} stood by the old {n}." for m, n in zip(["bench", "cart", "sign"], ["wall", "tree", "door"])]
    ctx = ["continue the story"] * 3
    assert (model.score(ctx, good) > model.score(ctx, bad)).all()
    model.save(tmp_path / "rm")
    loaded = RewardModel.load(tmp_path / "rm", embedder, store)
    assert loaded.cfg.words_dim == 256 and loaded.cfg.emb_features == ("words",)
    np.testing.assert_array_equal(loaded.score(ctx * 2, good + bad), model.score(ctx * 2, good + bad))
    with pytest.raises(ValueError, match="unknown feature block"):
        train_reward_model(RewardData(pairs, []), RewardTrainConfig(epochs=1, eval_frac=0.0, shuffled_control=False,
                                                                    emb_features=("s", "bag")), embedder, store)
