"""CLI on the tiny model: suggest/status/rate in-process through app.main, serve in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import app
from storage.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def common(tiny_model_dir, tmp_path):
    return ["--model", str(tiny_model_dir), "--data-dir", str(tmp_path), "--threads", "1"]


def _db(tmp_path) -> Store:
    return Store(tmp_path / "inkloop.db")


def _run(capsys, argv):
    rc = app.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_suggest_json_records_what_it_prints(capsys, common, tmp_path):
    rc, out, _ = _run(capsys, ["suggest", *common, "--mode", "continue", "--text",
                               "The rain had not stopped for three days.", "-k", "3", "--max-new-tokens", "12",
                               "--seed", "2", "--json"])
    assert rc == 0
    res = json.loads(out)
    assert res["policy_version"] == 0 and len(res["suggestions"]) == 3
    assert len({s["text"] for s in res["suggestions"]}) == 3 and all(s["text"].strip() for s in res["suggestions"])
    s = _db(tmp_path)
    req = s.get_request(res["request_id"])
    assert [(x.id, x.text) for x in req.suggestions] == [(x["id"], x["text"]) for x in res["suggestions"]]
    assert req.mode == "continue" and req.options["seed"] == 2 and req.profile_id == "default"
    assert req.options["variety"] is False
    s.close()
    rc, out, _ = _run(capsys, ["suggest", *common, "--mode", "inspire", "--keywords", "fog", "-k", "2",
                               "--max-new-tokens", "8", "--variety", "--json"])
    assert rc == 0 and _db(tmp_path).get_request(json.loads(out)["request_id"]).options["variety"] is True


def test_suggest_restyle_and_inspire_plain_output(capsys, common, tmp_path):
    rc, out, _ = _run(capsys, ["suggest", *common, "--mode", "restyle", "--text", "I am tired.", "--style", "sample",
                               "--sample", "Call me Ishmael.", "-k", "2", "--max-new-tokens", "8"])
    assert rc == 0 and out.startswith("request 1 ")
    rc, out, _ = _run(capsys, ["suggest", *common, "--mode", "inspire", "--keywords", "sea, storm",
                               "--inspire-kind", "outline", "-k", "2", "--max-new-tokens", "8", "--profile", "bob"])
    assert rc == 0 and out.startswith("request 2 ")
    s = _db(tmp_path)
    assert s.counts("bob")["requests"] == 1 and s.get_request(2).options["inspire_kind"] == "outline"
    assert [x.id for x in s.get_request(2).suggestions] == [int(line.split("]")[0][1:])
                                                           for line in out.splitlines() if line.startswith("[")]
    s.close()


def test_rate_and_status(capsys, common, tmp_path):
    rc, out, _ = _run(capsys, ["suggest", *common, "--mode", "continue", "--text", "She opened the door.",
                               "-k", "2", "--max-new-tokens", "8", "--json"])
    a, b = (x["id"] for x in json.loads(out)["suggestions"])
    rc, out, _ = _run(capsys, ["rate", str(a), *common, "--kind", "stars", "--value", "5", "--json"])
    assert rc == 0 and json.loads(out)["feedback_id"] == 1
    rc, out, _ = _run(capsys, ["rate", str(b), *common, "--kind", "rank", "--ranking", f"{b},{a}"])
    assert rc == 0 and "recorded feedback 2" in out

    rc, out, _ = _run(capsys, ["status", *common, "--json"])
    st = json.loads(out)
    assert rc == 0 and st["policy_version"] == st["reward_version"] == 0 and st["learner"] is None
    assert st["counts"]["requests"] == 1 and st["counts"]["suggestions"] == 2 and st["counts"]["feedback"] == 2
    assert st["feedback_by_kind"]["stars"] == 1 and st["feedback_by_kind"]["rank"] == 1
    rc, out, _ = _run(capsys, ["status", *common])
    assert rc == 0 and "policy version: 0 (base model)" in out and "feedback 2" in out
    assert "reward model:   none yet" in out

    s = _db(tmp_path)
    fb = s.feedback()
    assert [(f.kind, f.value, f.source) for f in fb] == [("stars", 5.0, "cli"), ("rank", None, "cli")]
    assert fb[1].ranking == [b, a]
    s.close()


@pytest.mark.parametrize("argv, words", [
    (["rate", "1", "--kind", "stars", "--value", "7"], "stars needs an integer value from 1 to 5"),
    (["rate", "999", "--kind", "thumb", "--value", "1"], "suggestion 999 does not exist"),
    (["rate", "1", "--kind", "rank", "--ranking", "1,x"], "--ranking"),
    (["suggest", "--mode", "continue", "--text", ""], "continue needs non-empty text"),
    (["suggest", "--mode", "continue"], "continue needs non-empty text"),
    (["suggest", "--mode", "restyle", "--text", "x", "--style", "gothic"], "unknown style 'gothic'"),
    (["suggest", "--mode", "continue", "--text", "x" * 20_001], "the limit is 20000"),
    (["suggest", "--mode", "continue", "--text", "x", "--temperature", "9"], "temperature"),
])
def test_bad_input_is_exit_2_with_a_clear_message(capsys, common, tmp_path, argv, words):
    rc, _, _ = _run(capsys, ["suggest", *common, "--mode", "continue", "--text", "Seed text.", "-k", "1",
                             "--max-new-tokens", "4"])
    before = _db(tmp_path).counts()
    rc, out, err = _run(capsys, [*argv, *common])
    assert rc == 2
    assert words in err and "Traceback" not in err
    assert _db(tmp_path).counts() == before


def test_argparse_rejects_k_out_of_range(capsys, common):
    with pytest.raises(SystemExit) as e:
        app.main(["suggest", *common, "--mode", "continue", "--text", "x", "-k", "99"])
    assert e.value.code == 2
    assert "must be between 1 and 8" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["suggest", "--mode", "inspire", "--k", "2"],  # was read as --keywords 2
    ["suggest", "--mode", "continue", "--text", "x", "--temp", "0.5"],  # was read as --temperature
    ["rl", "train", "--st", "3"],
])
def test_abbreviated_flags_are_refused(capsys, common, tmp_path, argv):
    with pytest.raises(SystemExit) as e:
        app.main([*argv, *common])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and argv[-2] in err
    assert not (tmp_path / "inkloop.db").exists() or _db(tmp_path).counts()["requests"] == 0


def test_hub_id_fails_cleanly(capsys, tmp_path):
    rc, out, err = _run(capsys, ["suggest", "--model", "Qwen/Qwen2.5-0.5B", "--data-dir", str(tmp_path),
                                 "--mode", "continue", "--text", "Hello there."])
    assert rc == 2 and out == ""
    assert "is not a local directory" in err and "cannot download" in err and "Traceback" not in err
    assert _db(tmp_path).counts()["requests"] == 0


def test_hub_id_fails_cleanly_in_a_subprocess(tmp_path):
    p = subprocess.run(
        [sys.executable, "app.py", "serve", "--model", "Qwen/Qwen2.5-0.5B", "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.returncode == 2
    assert "is not a local directory" in p.stderr and "Traceback" not in p.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_the_api_and_reports_startup(tiny_model_dir, tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "app.py", "serve", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path),
         "--port", str(port), "--threads", "1", "--no-learner"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        status = None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/api/v1/status", timeout=5) as r:
                    status = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert status is not None, "server did not come up"
        assert status["policy_version"] == 0 and status["model"] == tiny_model_dir.name
        body = json.dumps({"mode": "continue", "text": "The rain fell.", "k": 2, "max_new_tokens": 8}).encode()
        req = urllib.request.Request(f"{base}/api/v1/suggest", data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            out = json.loads(r.read())
        assert len(out["suggestions"]) == 2
        with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as r:
            paths = json.loads(r.read())["paths"]
        assert "/api/v1/suggest" in paths
        assert "/api/v1/versions" in paths  # a router another area contributes through its serve hook
        try:  # the Gradio UI at / (404 while assistant/ui.py does not exist)
            with urllib.request.urlopen(f"{base}/", timeout=60) as r:
                ui_status = r.status
        except urllib.error.HTTPError as e:
            ui_status = e.code
        assert ui_status == (200 if (ROOT / "assistant" / "app" / "ui").exists() else 404)
    finally:
        proc.terminate()
        try:
            log, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
    assert f"http://127.0.0.1:{port}/" in log
    assert "startup took" in log
    s = Store(tmp_path / "inkloop.db")
    assert s.counts()["suggestions"] == 2
    s.close()


def test_versions_rollback_of_an_unknown_id_is_a_clear_error(capsys, tmp_path):
    rc, out, err = _run(capsys, ["versions", "rollback", "99999", "--data-dir", str(tmp_path)])
    assert rc == 2 and "version 99999 does not exist" in err and "Traceback" not in err
    rc, out, err = _run(capsys, ["versions", "rollback", "previous", "--data-dir", str(tmp_path)])
    assert rc == 2 and "nothing to roll back" in err
