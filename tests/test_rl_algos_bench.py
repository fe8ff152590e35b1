"""benchmarks/rl_algos.py: the utility reward by hand, and the whole comparison on the tiny model."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_rl_algos", ROOT / "benchmarks" / "rl_algos.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_rl_algos"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_utility_reward_is_the_raters_utility_standardised_over_the_log():
    from reward.eval.raters import make_rater
    from reward.functions import RolloutPrompt

    B = _bench()
    rater = make_rater("vivid")
    # the log's utilities: 1 (four sensory words), 0, 0, 0.5 (two) -> mean 0.375, std sqrt(0.171875)
    log = ["The crimson smoke smelled bitter and warm.", "He went to the office.", "It was a day.",
           "The red door was cold."]
    fn = B.utility_reward(rater, log, [{"mode": "continue", "text": "", "keywords": []}] * 4)
    sd = np.sqrt(np.mean((np.array([1, 0, 0, 0.5]) - 0.375) ** 2))
    p = RolloutPrompt("prompt", "continue")
    out = fn([p, p], ["The crimson smoke smelled bitter and warm.", "Nothing here at all."])
    assert out.tolist() == pytest.approx([(1 - 0.375) / sd, (0 - 0.375) / sd], rel=1e-5)


def test_rl_algos_benchmark_on_the_tiny_model(tiny_model_dir, tmp_path):
    """Every algorithm of the comparison runs for its CPU budget from the same base on the tiny
    model, for both reward columns; the table pools the cells per (rater, reward, algo)."""
    import torch

    B = _bench()
    n = torch.get_num_threads()
    cfg = B.RLAlgosConfig(raters=("concise",), seeds=(0,), algos=("reinforce", "distill", "mix"), seconds=0.5,
                          ratings=8, heldout_limit=2, max_new_tokens=6, n_boot=50, out=str(tmp_path))
    try:
        B.run_all(cfg, argparse.Namespace(threads=1, model=str(tiny_model_dir)), tmp_path)
    finally:
        torch.set_num_threads(n)
    cells = B.load_cells(tmp_path)
    assert {(c["reward"], c["algo"]) for c in cells} == {(r, a) for r in cfg.rewards for a in cfg.algos}
    for c in cells:
        assert c["steps"] >= 1 and c["stop"] == "seconds" and len(c["texts"]) == len(c["base_texts"]) == 2
        assert all(len(t) == cfg.heldout_samples for t in c["texts"])
    rows = B.table_rows(cells, n_boot=50)
    assert [(r["reward"], r["algo"]) for r in rows] == [(r, a) for r in ("rm", "utility") for a in cfg.algos]
    assert all(r["n"] == 2 * cfg.heldout_samples for r in rows)
    B.print_table(rows)
