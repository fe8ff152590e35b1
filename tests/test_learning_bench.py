"""benchmarks/learning.py: its statistics by hand, and its core (simulate through the real learner
cycle, both kinds of run, the table) on the tiny model in well under a minute."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "benchmarks" / "learning.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_learning"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def one_thread():
    """One torch thread: on a shared, loaded CPU two OpenMP threads per process run ~10x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_summarise_by_hand():
    L = _bench()
    # prompt a: win, tie; prompt b: loss, win -> W 2, T 1, L 1
    s = L.summarise([1.0, 0.5, 0.0, 1.0], [0.5, 0.0, -0.25, 0.75], ["a", "a", "b", "b"], n_boot=200)
    assert (s["wins"], s["ties"], s["losses"], s["n"]) == (2, 1, 1, 4)
    assert s["decided"] == pytest.approx(2 / 3) and s["half"] == pytest.approx(2.5 / 4)
    assert s["gain"] == pytest.approx(0.25)
    # resampling prompts: only {a,a} (decided 1), {b,b} (1/2) or {a,b}: the interval lies in [1/2, 1]
    assert 0.5 - 1e-9 <= s["decided_lo"] <= s["decided"] <= s["decided_hi"] <= 1.0
    assert s["gain_lo"] == pytest.approx(0.25, abs=0.26) and s["gain_hi"] <= 0.5 + 1e-9


def test_first_last_stars_by_hand():
    L = _bench()
    curve = [(4 * i, float(i % 5 + 1)) for i in range(20)]  # stars 1..5 repeating
    f, last = L.first_last_stars(curve, n=4)
    assert f == pytest.approx(np.mean([1, 2, 3, 4])) and last == pytest.approx(np.mean([2, 3, 4, 5]))


def test_stars_control_by_hand():
    """Expected stars of the first and last n requests, shown against the base on the same requests."""
    from reward.eval.raters import make_rater

    L = _bench()
    r = make_rater("concise")
    e0, e1 = r.expected_stars(["", "one two three four"], {})  # utility 0 and 1
    prompt = {"mode": "continue", "text": "x"}
    good, bad = "one two three four", ""
    reqs = [{"prompt": prompt, "seed": i, "texts": [bad, bad] if i < 2 else [good, bad]} for i in range(5)]
    base = {i: [bad, bad] for i in range(5)}
    base[0] = [good, good]
    c = L.stars_control(reqs, r, lambda q: base[q["seed"]], n=2)
    assert c["first_shown"] == pytest.approx(e0)
    assert c["first_base"] == pytest.approx((e1 + e0) / 2)  # request 0: base all good; request 1: all bad
    assert c["last_shown"] == pytest.approx((e0 + e1) / 2)  # requests 3, 4: one good of two each
    assert c["last_base"] == pytest.approx(e0)


def test_learning_benchmark_core_on_the_tiny_model(tiny_tokenizer, embedder, tmp_path, one_thread):
    from assistant.lm.tiny import build_tiny_lm
    from reward.config import RewardTrainConfig
    from reward.rl.config import RLConfig

    L = _bench()
    t0 = time.perf_counter()
    cfg = L.LearningBenchConfig(raters=("concise",), seeds=(0,), budget=8, k=2, draw=4, heldout_limit=3,
                                heldout_samples=2, max_new_tokens=8, n_boot=100, out=str(tmp_path),
                                learner_seconds_per_rating=1000.0, stars_control=1)

    def small(learner):
        learner.min_new_feedback, learner.rl_steps, learner.eval_prompts, learner.eval_samples = 5, 1, 2, 1
        learner.eval_max_new_tokens, learner.max_kl = 6, 1e9
        learner.rl = RLConfig(k=2, prompts_per_step=2, max_new_tokens=6, seed=0)
        learner.rm = RewardTrainConfig(epochs=3, shuffled_control=False, ensemble=2, hidden=16)
        return learner

    model, _ = build_tiny_lm(seed=0, tokenizer=tiny_tokenizer)
    L.BASE_CACHE.clear()
    cells = [L.run_cell(cfg, "concise", 0, run, model, tiny_tokenizer, embedder, tmp_path, learner_overrides=small)
             for run in L.RUNS]
    system, choice = cells
    assert system["budget"] == choice["budget"] == 8
    # the choice-alone run trains the reward model only: no policy is ever published
    assert choice["published"] == [] and all(c["outcome"] == "reward" for c in choice["cycles"])
    assert all(c["outcome"] in ("published", "discarded") for c in system["cycles"])
    for c in cells:
        assert {k: len(v) for k, v in c["heldout"].items()} == {"base": 3, "final": 3, "final_policy": 3}
        assert all(len(s) == 2 for s in c["heldout"]["final"])
    # the base held-out texts were generated once (first cell) and reused by the second
    assert system["heldout"]["base"] == choice["heldout"]["base"]
    assert choice["heldout"]["final_policy"] == choice["heldout"]["base"]  # no policy: the base itself
    assert L.BASE_CACHE  # the base model's seeded requests were remembered for the next cell
    for c in cells:  # every rated request is recorded, and the base was asked the same requests
        assert sum(len(q["stars"]) for q in c["requests"]) == 8
        assert all(q["texts"] and isinstance(q["seed"], int) for q in c["requests"])
        ctrl = c["stars_control"]
        assert set(ctrl) == {"first_shown", "first_base", "last_shown", "last_base"}
        assert all(1.0 <= v <= 5.0 for v in ctrl.values())
        # the first request, before any policy or reward model, is the base model's: the control
        # asked the same request (prompt, seed) and got the same texts
        assert c["requests"][0]["policy_version"] == 0
        assert ctrl["first_shown"] == pytest.approx(ctrl["first_base"])
    rows = L.table_rows(L.load_cells(tmp_path), n_boot=100)
    assert [r["row"] for r in rows] == ["whole system", "policy alone", "choice alone"]
    for r in rows:
        assert r["n"] == 6 and r["wins"] + r["ties"] + r["losses"] == 6
        assert r["decided_lo"] <= r["decided_hi"] or np.isnan(r["decided"])
    L.print_table(rows)
    assert time.perf_counter() - t0 < 60


def test_learner_compute_is_rationed(tiny_tokenizer, embedder, tmp_path, one_thread):
    """With almost no CPU-seconds per rating the learner runs its first cycle and then stays in debt:
    every later due cycle is postponed."""
    from assistant.lm.tiny import build_tiny_lm
    from reward.config import RewardTrainConfig

    L = _bench()
    cfg = L.LearningBenchConfig(raters=("concise",), seeds=(0,), budget=12, k=2, draw=4, heldout_limit=1,
                                heldout_samples=1, max_new_tokens=6, out=str(tmp_path),
                                learner_seconds_per_rating=1e-4)

    def small(learner):
        learner.min_new_feedback = 3
        learner.rm = RewardTrainConfig(epochs=2, shuffled_control=False, ensemble=2, hidden=8)
        return learner

    model, _ = build_tiny_lm(seed=0, tokenizer=tiny_tokenizer)
    cell = L.run_cell(cfg, "concise", 0, "choice", model, tiny_tokenizer, embedder, tmp_path, learner_overrides=small)
    assert len(cell["cycles"]) == 1 and cell["postponed"] >= 2 and cell["learner_cpu_s"] > 0


def test_sim_config_carries_the_cells_settings():
    """What a cell is run with reaches simulate: the run kind, the seed, varied angles, the learner's settings."""
    L = _bench()
    sim = L.sim_config(L.LearningBenchConfig(variety=True, tie_pick_weight=0.5, emb_features="s,words",
                                             algo="a2c", distill_coef=0.5), 1, "system")
    assert sim.variety and sim.seed == 1 and sim.learner.seed == 1 and sim.learner.train_policy
    assert sim.learner.rl.algo == "a2c" and sim.learner.rl.distill_coef == 0.5
    assert sim.learner.rm.tie_pick_weight == 0.5 and sim.learner.rm.emb_features == ("s", "words")
    plain = L.sim_config(L.LearningBenchConfig(), 0, "choice")
    assert not plain.variety and not plain.learner.train_policy
