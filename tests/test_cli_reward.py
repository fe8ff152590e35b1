"""`inkloop feedback import/export` and `inkloop rm train/score` end to end (real MiniLM)."""

from __future__ import annotations

import json
from pathlib import Path

from app import main
from tests.test_reward_model import separable_data


def _pref_file(path, data):
    path.write_text("".join(json.dumps({"prompt": p.context, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in data.pairs))
    return path


def test_feedback_import_export_rm_train_score(tmp_path, capsys):
    dd = ["--data-dir", str(tmp_path / "data"), "--threads", "1"]
    data = separable_data(24)
    f = _pref_file(tmp_path / "pref.jsonl", data)
    assert main(["feedback", "import", str(f), "--json", *dd]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["records"] == len(data.pairs) and out["format"] == "preference"

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "x", "rejected": "y"}\n{oops\n')
    assert main(["feedback", "import", str(bad), *dd]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "nothing was imported" in err

    exp = tmp_path / "exp.jsonl"
    assert main(["feedback", "export", "--format", "preference", "--out", str(exp), *dd]) == 0
    capsys.readouterr()
    assert len(exp.read_text().splitlines()) == len(data.pairs)

    assert main(["rm", "train", "--epochs", "20", "--json", *dd]) == 0
    res = json.loads(capsys.readouterr().out)
    m = res["metrics"]
    for k in ("rm/accuracy", "rm/loss", "rm/ece", "rm/length_floor", "rm/shuffled_control", "rm/n_train",
              "rm/n_eval", "rm/seconds"):
        assert k in m, k
    assert m["rm/accuracy"] > 0.8 and res["status"] == "published"

    assert main(["rm", "train", "--epochs", "20", "--ensemble", "2", "--no-shuffled-control", "--json", *dd]) == 0
    ens = json.loads(capsys.readouterr().out)
    assert ens["metrics"]["rm/accuracy"] > 0.8
    unseen = "An unseen suggestion the store has never embedded."  # so scoring needs the embedder
    assert main(["rm", "score", "--context", "Describe a place.", "--text", unseen, "--json", *dd]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == ens["version"]
    assert main(["rm", "train", "--ensemble", "0", *dd]) == 2
    assert "must be at least 1" in capsys.readouterr().err

    good, bad_txt = data.pairs[0].chosen, data.pairs[0].rejected
    scores = []
    for text in (good, bad_txt):
        assert main(["rm", "score", "--context", data.pairs[0].context, "--text", text, "--json", *dd]) == 0
        scores.append(json.loads(capsys.readouterr().out)["reward"])
    assert scores[0] > scores[1]


def test_rm_train_from_files_with_eval_file(tmp_path, capsys):
    dd = ["--data-dir", str(tmp_path / "data"), "--threads", "1"]
    data = separable_data(32)
    from reward.train import split_by_group

    train, held = split_by_group(data, 0.25, seed=0)
    ftr, fev = _pref_file(tmp_path / "train.jsonl", train), _pref_file(tmp_path / "eval.jsonl", held)
    assert main(["rm", "train", "--from", str(ftr), "--eval", str(fev), "--epochs", "20", "--no-shuffled-control",
                 "--json", *dd]) == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert m["rm/n_train"] == len(train) and m["rm/n_eval"] == len(held)
    assert m["rm/accuracy"] > 0.9
    # --features picks the feature blocks (here with the hashed vocabulary block)
    assert main(["rm", "train", "--from", str(ftr), "--epochs", "2", "--no-shuffled-control", "--emb-features", "s,words",
                 "--json", *dd]) == 0
    out = json.loads(capsys.readouterr().out)
    assert json.loads((Path(out["path"]) / "reward_config.json").read_text())["emb_features"] == ["s", "words"]
    assert main(["rm", "train", "--emb-features", "s,nope", *dd]) == 2
    assert "unknown feature block" in capsys.readouterr().err


def test_rm_score_without_a_model_is_a_clear_error(tmp_path, capsys):
    assert main(["rm", "score", "--context", "c", "--text", "t", "--data-dir", str(tmp_path)]) == 2
    assert "rm train" in capsys.readouterr().err
