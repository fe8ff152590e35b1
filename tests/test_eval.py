"""Evaluation: prompt loading, report folders, and `inkloop eval --version` end to end on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from reward.eval import prompts as E
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
    # the win-rate is the judge's over the 3 prompts x 2 candidates, with its Wilson interval
    from reward.eval.quality import wilson_interval

    assert m["eval/win_n"] == 6
    lo, hi = wilson_interval(m["eval/win_rate"] * 6, 6)
    assert (m["eval/win_ci_low"], m["eval/win_ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
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
