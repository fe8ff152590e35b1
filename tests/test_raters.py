"""The raters added for benchmarks/learning.py, worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from reward.eval.raters import (
    RATERS,
    alliteration_utility,
    dialogue_utility,
    first_person_utility,
    make_rater,
)


def test_dialogue_needs_a_quoted_line_of_two_words():
    assert dialogue_utility('She said, "Come home now." Then she left.', {}) == 1.0
    assert dialogue_utility("He whispered “not yet” and waited by the door.", {}) == 1.0
    assert dialogue_utility('The sign read "Exit" above the door frame.', {}) == 0.0  # one word
    assert dialogue_utility("No talk here at all.", {}) == 0.0
    assert dialogue_utility('"Go now"', {}) == 0.5  # two words: _substance 2/4


def test_first_person_counts_first_person_words_to_three():
    assert first_person_utility("The cat sat on the warm mat.", {}) == 0.0
    assert first_person_utility("My cat sat on the warm mat.", {}) == pytest.approx(1 / 3)
    assert first_person_utility("I think my friend and I went out.", {}) == 1.0


def test_alliteration_counts_neighbouring_long_words_with_one_initial():
    # long words: silver sails bright brass bells -> silver/sails, bright/brass, brass/bells
    assert alliteration_utility("The silver sails and bright brass bells.", {}) == 1.0
    # long words: many mice ... -> many/mice only ("made" is 4 letters but follows "mice": a pair too)
    assert alliteration_utility("So many mice made a nest there.", {}) == 1.0
    assert alliteration_utility("Many small dogs barked at night.", {}) == 0.0
    assert alliteration_utility("The great green door opened slowly.", {}) == 0.5  # great/green


def test_new_raters_are_registered():
    for name in ("dialogue", "firstperson", "alliteration"):
        assert name in RATERS and make_rater(name).name == name


def test_expected_stars_by_hand_and_against_sampling():
    from reward.eval.raters import make_rater

    r = make_rater("concise", noise=0.5)
    # "" has utility 0: E = 1 + P(N >= 0.5) + P(N >= 1.5) + ... = 1 + Phi(-1) + Phi(-3) + ... = 1.16000
    # "one two three four" has utility 1: mirrored, 5 - 0.16000
    e = r.expected_stars(["", "one two three four"], {})
    assert e == pytest.approx([1.16000, 4.84000], abs=1e-5)
    assert r.expected_stars([], {}).shape == (0,)
    # it is the mean of what stars() draws
    text = "A short line with a few more words than eight. Then a much longer sentence follows here."
    draws = [r.stars([text], {})[0] for _ in range(4000)]
    assert np.mean(draws) == pytest.approx(r.expected_stars([text], {})[0], abs=0.05)
