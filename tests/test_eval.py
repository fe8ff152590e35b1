"""Evaluation: prompt loading, sweep grids, report folders, and the eval commands end to end on
the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from assistant.app.cli import eval as E
from reward.eval import report as R


# ----------------------------------------------------------------------------- prompts and params
def test_parse_prompts_forms(tmp_path):
    by_mode = {"continue": ["It was late."], "restyle": [{"text": "We must go.", "style": "formal"}],
               "inspire": [{"keywords": "storm, ship", "theme": "", "kind": "openings"}]}
    ps = E.parse_prompts(by_mode)
    assert [p.mode for p in ps] == ["continue", "restyle", "inspire"]
    assert ps[1].options == {"style": "formal"}
    assert ps[2].options == {"keywords": "storm, ship", "inspire_kind": "openings"}
    assert [p.mode for p in E.parse_prompts({"held_out": by_mode})] == ["continue", "restyle", "inspire"]
    f = tmp_path / "p.jsonl"
    f.write_text('{"mode": "continue", "text": "a"}\n\n{"mode": "inspire", "text": "b"}\n')
    assert [(p.mode, p.text) for p in E.load_prompts(f)] == [("continue", "a"), ("inspire", "b")]
    with pytest.raises(ValueError, match="mode"):
        E.parse_prompts([{"text": "no mode"}])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="neither JSON nor JSONL"):
        E.load_prompts(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        E.load_prompts(tmp_path / "missing.json")
    assert len(E.load_prompts()) >= 3  # the bundled assets


def test_parse_param_and_grid():
    assert E.parse_param("lr=1e-5,5e-5") == ("lr", [1e-5, 5e-5])
    assert E.parse_param("kl_coef=0.1") == ("kl", [0.1])
    assert E.parse_param("rank=4,8") == ("rank", [4, 8])
    with pytest.raises(ValueError, match="unknown sweep parameter"):
        E.parse_param("beta=1")
    with pytest.raises(ValueError, match="NAME=V1"):
        E.parse_param("lr")
    grid = E.sweep_grid({"lr": [1, 2], "kl": [3, 4, 5]})
    assert len(grid) == 6 and grid[0] == {"lr": 1, "kl": 3} and grid[-1] == {"lr": 2, "kl": 5}
    rnd = E.sweep_grid({"lr": [1, 2], "kl": [3, 4, 5]}, random_n=4, seed=0)
    assert len(rnd) == 4 and len({tuple(sorted(d.items())) for d in rnd}) == 4
    assert all(d in grid for d in rnd)


# ----------------------------------------------------------------------------- report folder
def _runs():
    return [
        {"name": "a", "config": {"lr": 1e-5}, "metrics": {"eval/win_rate": 0.4, "eval/win_ci_low": 0.2,
                                                         "eval/win_ci_high": 0.6, "eval/kl": 0.01,
                                                         "eval/reward": 0.1, "eval/distinct_2": 0.8},
         "curves": {"step": [1, 2, 3], "reward": [0.0, 0.1, 0.2], "kl": [0.0, 0.01, 0.02]}},
        {"name": "b", "config": {"lr": 1e-4}, "metrics": {"eval/win_rate": 0.7, "eval/kl": 0.05,
                                                         "eval/reward": 0.3, "eval/distinct_2": 0.6,
                                                         "eval/perplexity": float("nan")},
         "curves": {"step": [1, 2], "reward": [0.0, 0.3]}},
    ]


def test_results_table_and_best():
    t = R.results_table(_runs())
    lines = t.splitlines()
    assert lines[0].startswith("| run | setting | win-rate |")
    assert "| a | lr=1e-05 | 0.40 |" in lines[2]
    assert "ref. PPL" in lines[0] and lines[3].split("|")[-2].strip() == "–"  # nan shows as a dash
    assert R.best_run(_runs())["name"] == "b"
    assert R.best_run(_runs(), "eval/kl", higher=False)["name"] == "a"
    assert R.best_run([{"name": "x", "metrics": {}}]) is None


def test_write_report_and_latest(tmp_path):
    assert R.latest_report(tmp_path) is None
    folder = R.write_report(tmp_path, "sweep", _runs(), title="T", settings={"budget": 4}, notes=["n1"])
    assert folder.parent == tmp_path / "reports" and folder.name.endswith("-sweep")
    md = (folder / "summary.md").read_text()
    assert "# T" in md and "**Best by eval/win_rate:** b" in md and "n1" in md
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert {"curve_reward.png", "curve_kl.png", "winrate_vs_kl.png", "diversity_vs_reward.png"} <= set(pngs)
    assert all((folder / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    raw = json.loads((folder / "results.json").read_text())
    assert raw["best"] == "b" and raw["runs"][1]["metrics"]["eval/perplexity"] is None
    latest = R.latest_report(tmp_path)
    assert latest["path"] == str(folder) and latest["kind"] == "sweep"
    assert latest["summary"] == md and len(latest["plots"]) == len(pngs)
    # no leftovers from the atomic write
    assert not [p for p in (tmp_path / "reports").iterdir() if p.name.startswith(".")]


def test_prompts_split_and_spread():
    data = {"prompts": [{"mode": "continue", "text": "a", "split": "train"},
                        {"mode": "continue", "text": "b", "split": "heldout"},
                        {"mode": "continue", "text": "c", "split": "heldout"},
                        {"mode": "inspire", "text": "d", "keywords": ["x"], "split": "heldout"}]}
    assert [p.text for p in E.parse_prompts(data)] == ["b", "c", "d"]
    assert [p.text for p in E.parse_prompts(data, split="train")] == ["a"]
    assert len(E.parse_prompts(data, split=None)) == 4
    assert [p.text for p in E.spread(E.parse_prompts(data), 2)] == ["b", "d"]  # one per mode first
    held = E.load_prompts()  # assets/prompts.json: held-out prompts of all three modes
    assert {p.mode for p in held} == {"continue", "restyle", "inspire"}


# ----------------------------------------------------------------------------- eval --version end to end
def _publish_perturbed_policy(model_dir: Path, data_dir: Path) -> int:
    """A real policy version of the tiny model whose LoRA B weights are non-zero."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assistant.lm.models import prepare_tokenizer
    from reward.rl.policy import Policy
    from storage.artifacts import save_version
    from storage.store import Store

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prepare_tokenizer(tok)
    pol = Policy.from_base(model, tok)
    torch.manual_seed(3)
    for n, p in pol.model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.3)
    store = Store(data_dir / "inkloop.db")
    try:
        v = save_version(store, data_dir, kind="policy", profile_id="default", writer=pol.save, publish=True)
    finally:
        store.close()
    return v.id


def test_eval_version_cli(tiny_model_dir, tmp_path, capsys):
    import app

    vid = _publish_perturbed_policy(tiny_model_dir, tmp_path)
    rc = app.main(["eval", "--version", str(vid), "--model", str(tiny_model_dir), "--data-dir", str(tmp_path),
                   "--limit", "3", "-k", "2", "--max-new-tokens", "8", "--threads", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    m, b = out["metrics"], out["base_metrics"]
    assert out["version"] == vid
    assert m["eval/kl"] > 0 and b["eval/kl"] == pytest.approx(0.0, abs=1e-6)  # perturbed LoRA vs base
    assert 0 <= m["eval/win_ci_low"] <= m["eval/win_rate"] <= m["eval/win_ci_high"] <= 1 and m["eval/win_n"] > 0
    assert math.isfinite(m["eval/perplexity"]) and m["eval/perplexity"] > 1
    for key in ("eval/distinct_1", "eval/distinct_2", "eval/self_bleu", "eval/repetition", "eval/length_words",
                "eval/reward", "eval/reward/repetition"):
        assert key in m and key in b
    folder = Path(out["report"])
    assert (folder / "summary.md").is_file() and (folder / "results.json").is_file()
    assert f"v{vid}" in (folder / "summary.md").read_text()
    # bad input: an unknown version is a clear error, exit code 2
    assert app.main(["eval", "--version", "999", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path)]) == 2
    assert "999" in capsys.readouterr().err


def test_best_run_tiebreak():
    runs = [{"name": "a", "metrics": {"w": 0.5, "u": 0.1}}, {"name": "b", "metrics": {"w": 0.5, "u": 0.3}},
            {"name": "c", "metrics": {"w": 0.4, "u": 0.9}}]
    assert R.best_run(runs, "w")["name"] == "a"
    assert R.best_run(runs, "w", tiebreak="u")["name"] == "b"


def test_verdict_readings():
    base = {"eval/distinct_2": 0.8, "eval/length_words": 20.0}
    gamed = {"eval/win_ci_low": 0.3, "eval/win_ci_high": 0.6, "eval/win_rate": 0.45, "eval/reward_gain": 0.4,
             "eval/rater_utility_gain": -0.1, "eval/distinct_2": 0.5, "eval/length_words": 35.0}
    v = E.verdict(gamed, base)
    assert "no clear preference" in v and "GAMED" in v and "diversity collapsed" in v and "length inflated" in v
    good = {"eval/win_ci_low": 0.6, "eval/win_ci_high": 0.9, "eval/win_rate": 0.75, "eval/reward_gain": 0.4,
            "eval/rater_utility_gain": 0.2, "eval/distinct_2": 0.78, "eval/length_words": 18.0}
    assert E.verdict(good, base) == "rater prefers it"


# ----------------------------------------------------------------------------- compare-rewards and sweep end to end
CYCLE = ["--budget", "4", "--rm-every", "4", "--rl-steps", "1", "--prompts-per-step", "2", "--limit", "3", "-k", "2",
         "--max-new-tokens", "8", "--heldout-samples", "1", "--threads", "1", "--json"]


def _check_report(folder: Path, names: list[str]) -> dict:
    assert (folder / "summary.md").is_file()
    md = (folder / "summary.md").read_text()
    assert all(f"| {n} |" in md for n in names)
    pngs = list(folder.glob("*.png"))
    assert pngs and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    raw = json.loads((folder / "results.json").read_text())
    assert [r["name"] for r in raw["runs"]] == ["base"] + names
    return raw


def test_compare_rewards_end_to_end(tiny_model_dir, tmp_path, capsys):
    import app

    rc = app.main(["eval", "compare-rewards", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path),
                   "--rater", "concise", "--designs", "rm-only,heuristics", *CYCLE])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    raw = _check_report(Path(out["report"]), ["rm-only", "heuristics"])
    for r in raw["runs"][1:]:
        m = r["metrics"]
        assert 0 <= m["eval/win_ci_low"] <= m["eval/win_rate"] <= m["eval/win_ci_high"] <= 1
        assert m["eval/kl"] > 0  # one RL update moved the LoRA policy off the base
        assert m["eval/ratings"] == 4 and r["curves"]["rl/reward"]
        assert {"eval/distinct_2", "eval/length_words", "eval/reward", "eval/verdict"} <= set(m)
    # the heuristics design has no learned-RM term; rm-only has nothing else
    h = raw["runs"][2]["metrics"]
    assert "eval/reward/rm" not in h and "eval/reward/repetition" in h
    assert set(k for k in raw["runs"][1]["metrics"] if k.startswith("eval/reward/")) == {"eval/reward/rm"}
    assert R.latest_report(tmp_path)["path"] == out["report"]


def test_sweep_end_to_end(tiny_model_dir, tmp_path, capsys):
    import app

    rc = app.main(["eval", "sweep", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path), "--rater", "vivid",
                   "--param", "lr=1e-4,1e-2", "--param", "rank=2", *CYCLE])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    raw = _check_report(Path(out["report"]), ["run1", "run2"])
    assert [r["config"] for r in raw["runs"][1:]] == [{"lr": 1e-4, "rank": 2}, {"lr": 1e-2, "rank": 2}]
    # a 100x larger learning rate moves the policy further from the base
    assert raw["runs"][2]["metrics"]["eval/kl"] > raw["runs"][1]["metrics"]["eval/kl"]
    assert out["best"] in ("run1", "run2") and "Best by eval/win_rate" in (Path(out["report"]) / "summary.md").read_text()
    # bad input fails before any model loads: exit code 2, a clear message
    assert app.main(["eval", "sweep", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path), "--rater", "vivid",
                     "--budget", "4", "--param", "beta=1"]) == 2
    assert "unknown sweep parameter" in capsys.readouterr().err
