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
    from reward.model import RewardModel, RewardModelConfig, STAT_NAMES

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
