"""benchmarks/rm_representations.py: its pure parts by hand (the ridge head, the lambda choice, the pairs scored)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_rm_repr", ROOT / "benchmarks" / "rm_representations.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_rm_repr"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_ridge_by_hand():
    B = _bench()
    # one feature x = [0, 1, 2], y = [1, 3, 5]: centred x = [-1, 0, 1], sum x^2 = 2, sum x*y_c = 4
    x, y = np.array([[0.0], [1.0], [2.0]]), np.array([1.0, 3.0, 5.0])
    w, b = B.ridge(x, y, 0.0)
    assert np.allclose(w, [2.0]) and np.isclose(b, 1.0)
    w, b = B.ridge(x, y, 2.0)  # 4 / (2 + 2) = 1; intercept 3 - 1 * 1 = 2 (unpenalised)
    assert np.allclose(w, [1.0]) and np.isclose(b, 2.0)


def test_fit_head_prefers_little_shrinkage_on_a_clean_signal():
    B = _bench()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.01 * rng.normal(size=80)
    w, _ = B.fit_head(x, y, np.repeat(np.arange(20), 4))
    assert np.allclose(w, [1.0, -2.0, 0.5], atol=0.05)


def test_standardise_and_within_request_pairs():
    B = _bench()
    z = B.standardise(np.array([[1.0, 5.0], [3.0, 5.0]]))
    assert np.allclose(z, [[-1.0, 0.0], [1.0, 0.0]])
    scores, utility = np.array([0.9, 0.1, 0.5, 0.2]), np.array([1.0, 0.0, 0.0, 0.5])
    hi, lo = B.within_request_pairs(scores, utility, [[0, 1], [2, 3]])
    # request 1: text 0 (u 1) over text 1 (u 0); request 2: text 3 (u .5) over text 2 (u 0); no cross-request pair
    assert hi.tolist() == [0.9, 0.2] and lo.tolist() == [0.1, 0.5]
