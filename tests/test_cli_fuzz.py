"""Hostile command lines and files (issue 17): what benchmarks/cli_fuzz.py found, one test each,
and a small fuzzing subset (the benchmark runs the full one)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cli_fuzz


def _run(capsys, argv):
    try:
        rc = app.main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("inkloop") and ": error: " in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv", [["status"], ["rate", "1", "--kind", "thumb", "--value", "1"],
                                  ["versions", "list"], ["learner", "pause"]])
def test_a_data_dir_that_is_not_a_directory_is_one_clear_line(capsys, tmp_path, argv):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for d in (afile, afile / "below"):
        rc, _, err = _run(capsys, [*argv, "--data-dir", str(d)])
        assert rc == 2 and "data directory" in _one_error_line(err)
    assert afile.read_text() == "x"


def test_a_database_file_that_is_not_sqlite_is_one_clear_line(capsys, tmp_path):
    (tmp_path / "inkloop.db").write_bytes(b"this is not a database" * 100)
    rc, _, err = _run(capsys, ["status", "--data-dir", str(tmp_path)])
    assert rc == 2 and "not a database" in _one_error_line(err)
    assert (tmp_path / "inkloop.db").read_bytes() == b"this is not a database" * 100


@pytest.mark.parametrize("line", [
    b'{"prompt": "p", "completion": "x", "rating": 1' + b"0" * 5000 + b"}",  # beyond Python's int digits
    b"[" * 100_000,  # nested deeper than the decoder recurses
    b'{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1' + b"0" * 400 + b"}",  # no float holds it
    b'{"prompt": "p", "completion": "x", "rating": 1' + b"0" * 400 + b"}",
], ids=["5000-digit-int", "deep-nesting", "400-digit-margin", "400-digit-rating"])
def test_an_import_with_huge_numbers_or_deep_nesting_names_the_line_and_writes_nothing(capsys, tmp_path, line):
    from storage.store import Store

    f = tmp_path / "bad.jsonl"
    first = b'{"prompt": "p", "chosen": "a", "rejected": "c"}' if b"margin" in line else \
        b'{"prompt": "p", "completion": "fine", "rating": 3}'
    f.write_bytes(first + b"\n" + line + b"\n")
    Store(tmp_path / "data" / "inkloop.db").close()
    before = cli_fuzz.fingerprint(tmp_path / "data")
    rc, _, err = _run(capsys, ["feedback", "import", str(f), "--data-dir", str(tmp_path / "data")])
    assert rc == 2 and "nothing was imported" in _one_error_line(err) and "line 2:" in err
    assert cli_fuzz.fingerprint(tmp_path / "data") == before


@pytest.mark.parametrize("content, words", [
    ('{"continue": 5}', "under 'continue' must be a list"),
    ('[{"mode": "continue", "text": "x", "options": [1]}]', "options must be an object"),
    ('[{"mode": "continue", "text": "x", "keywords": 5}]', "keywords must be text"),
    ("[" * 100_000, "nested too deeply"),
    ('[{"mode": "continue", "text": 7}]', "text must be a string"),
    (b"\xff\xfe[]", "not UTF-8"),
], ids=["mode-not-a-list", "options-not-a-dict", "keywords-a-number", "deep", "text-a-number", "not-utf8"])
def test_a_prompts_file_of_the_wrong_shape_is_one_clear_line(capsys, tmp_path, content, words):
    f = tmp_path / "prompts.json"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    rc, _, err = _run(capsys, ["eval", "--version", "0", "--prompts", str(f), "--data-dir", str(tmp_path / "d"),
                               "--model", str(tmp_path / "no-model")])
    line = _one_error_line(err)
    assert rc == 2 and f"prompts file {f}" in line and words in line


@pytest.mark.parametrize("threads", ["0", "-1", "x"])
def test_threads_must_be_a_positive_integer(capsys, tmp_path, threads):
    rc, _, err = _run(capsys, ["rm", "train", "--threads", threads, "--data-dir", str(tmp_path)])
    assert rc == 2 and "--threads" in _one_error_line(err)
    assert not (tmp_path / "inkloop.db").exists()


@pytest.mark.parametrize("port", ["70000", "-1", "65536"])
def test_serve_refuses_a_port_out_of_range_before_loading_anything(capsys, tmp_path, port):
    rc, _, err = _run(capsys, ["serve", "--port", port, "--data-dir", str(tmp_path), "--model", str(tmp_path / "x")])
    assert rc == 2 and "--port" in _one_error_line(err) and "loading models" not in err


def test_serve_refuses_a_port_in_use_before_loading_anything(capsys, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc, _, err = _run(capsys, ["serve", "--port", str(port), "--data-dir", str(tmp_path),
                                   "--model", str(tmp_path / "x")])
    line = _one_error_line(err)
    assert rc == 2 and f"127.0.0.1:{port}" in line and "loading models" not in err


def test_serve_refuses_a_host_it_cannot_listen_on(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INKLOOP_TOKEN", "a-long-enough-token")
    rc, _, err = _run(capsys, ["serve", "--host", "no-such-host.invalid", "--data-dir", str(tmp_path),
                               "--model", str(tmp_path / "x")])
    assert rc == 2 and "no-such-host.invalid" in _one_error_line(err) and "loading models" not in err


@pytest.mark.campaign
def test_fuzzing_the_cli_finds_no_traceback_and_no_write_on_rejection(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("hypothesis")
    monkeypatch.setenv("INKLOOP_DATA_DIR", str(tmp_path / "default"))
    rep = cli_fuzz.fuzz(60, tmp_path / "fuzz", tiny_model_dir, seed=1)
    assert rep.cases == 60 and rep.rejected > 20 and rep.accepted > 0  # both kinds really ran
    assert rep.tracebacks == [] and rep.no_message == [] and rep.wrote_when_rejected == []
    n, findings = cli_fuzz.subprocess_runs(tmp_path / "sub", tiny_model_dir, limit=2)
    assert n == 2 and findings == []


def test_simulate_checks_its_prompts_file_before_loading_models_or_creating_folders(capsys, tmp_path):
    bad = tmp_path / "prompts.json"
    bad.write_text('{"continue": 5}')
    out = tmp_path / "sim"
    rc, _, err = _run(capsys, ["simulate", "--prompts-path", str(bad), "--budget", "1", "--out", str(out),
                               "--model", str(tmp_path / "no-model")])
    assert rc == 2 and "must be a list" in _one_error_line(err) and not out.exists()


def _seeded(tmp_path) -> Path:
    from storage.artifacts import save_version
    from storage.store import Store

    data = tmp_path / "data"
    st = Store(data / "inkloop.db")
    req = st.record_request(profile_id="default", mode="continue", text="t", options={}, prompt="p",
                            policy_version=0, suggestions=["a", "b"])
    st.add_feedback(req.suggestions[0].id, "stars", 4)
    save_version(st, data, kind="policy", profile_id="default", writer=lambda d: (d / "w").write_text("w"),
                 publish=True)
    st.close()
    return data


def test_feedback_export_never_replaces_the_database_or_a_version(capsys, tmp_path):
    data = _seeded(tmp_path)
    vdir = next((data / "versions").rglob("policy-*"))
    before = cli_fuzz.fingerprint(data)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    for out, words in ((data / "inkloop.db", "data directory"), (data / "versions", "data directory"),
                       (vdir / "w", "data directory"), (data, "data directory"),
                       (tmp_path / "adir", "is a directory"), (tmp_path / "afile" / "x.jsonl", "cannot write")):
        rc, _, err = _run(capsys, ["feedback", "export", "--format", "ratings", "--out", str(out),
                                   "--data-dir", str(data)])
        assert rc == 2 and words in _one_error_line(err), (out, err)
        assert cli_fuzz.fingerprint(data) == before, out
    rc, out, _ = _run(capsys, ["feedback", "export", "--format", "ratings", "--out", str(data / "exports" / "f.jsonl"),
                               "--data-dir", str(data)])
    assert rc == 0 and "wrote 1 ratings rows" in out


def test_an_export_into_a_path_that_is_a_file_is_one_clear_line(capsys, tmp_path):
    data = _seeded(tmp_path)
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "below"):
        rc, _, err = _run(capsys, ["export", "--what", "feedback", "--out", str(out), "--data-dir", str(data)])
        assert rc == 2 and "not a directory" in _one_error_line(err).lower()
    assert (tmp_path / "afile").read_text() == "x"


def test_threads_beyond_what_torch_takes_is_one_clear_line(capsys, tmp_path):
    rc, _, err = _run(capsys, ["rm", "train", "--threads", "9" * 20, "--data-dir", str(tmp_path)])
    assert rc == 2 and "--threads" in _one_error_line(err)


def test_simulate_with_an_out_folder_it_cannot_create_is_one_clear_line(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    rc, _, err = _run(capsys, ["simulate", "--budget", "1", "--out", str(tmp_path / "afile" / "sim"),
                               "--model", str(tmp_path / "no-model")])
    assert rc == 2 and "cannot create" in _one_error_line(err)


def test_rm_train_checks_its_statistics_before_touching_the_store(capsys, tmp_path):
    data = _seeded(tmp_path)
    before = cli_fuzz.fingerprint(data)
    rc, _, err = _run(capsys, ["rm", "train", "--stats", "length,\udcff", "--data-dir", str(data)])
    assert rc == 2 and "unknown reward statistics" in _one_error_line(err)
    assert cli_fuzz.fingerprint(data) == before  # no embedding cached, no version


@pytest.mark.parametrize("argv", [["status", "--profile", "\udcff"], ["learner", "pause", "--profile", "caf\udce9"],
                                  ["rate", "1", "--kind", "edit", "--edited-text", "caf\udce9"]],
                         ids=["status-profile", "learner-profile", "rate-edited-text"])
def test_arguments_that_are_not_utf8_are_one_clear_line(capsys, tmp_path, argv):
    """Bytes that are not UTF-8 on the command line arrive as lone surrogates (PEP 383); SQLite
    cannot store them."""
    data = _seeded(tmp_path)
    before = cli_fuzz.fingerprint(data)
    rc, _, err = _run(capsys, [*argv, "--data-dir", str(data)])
    assert rc == 2 and "not valid UTF-8" in _one_error_line(err)
    assert cli_fuzz.fingerprint(data) == before


@pytest.mark.parametrize("flag, value", [("--lr", "-1"), ("--weight-decay", "-0.5"), ("--dropout", "1.5"),
                                         ("--lm-lr", "nan"), ("--words-dim", "0"), ("--lr", "inf")])
def test_rm_train_rejects_settings_the_optimiser_would_before_touching_the_store(capsys, tmp_path, flag, value):
    data = _seeded(tmp_path)
    before = cli_fuzz.fingerprint(data)
    rc, _, err = _run(capsys, ["rm", "train", flag, value, "--data-dir", str(data)])
    assert rc == 2 and flag[2:].replace("-", "_") in _one_error_line(err)
    assert cli_fuzz.fingerprint(data) == before
