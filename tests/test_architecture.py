"""The tree is the import graph: import-linter's contracts (pyproject.toml) run inside the suite, so
an import that runs up a layer, or a cycle inside one, fails pytest; and the CLI's flags mean the
same wherever they are written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint(root: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or pytest.fail("import-linter is not installed: pip install -e '.[test]'")
    return subprocess.run([exe, "--config", str(root / "pyproject.toml")], cwd=root, capture_output=True, text=True,
                          env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root)})


def test_layer_contracts_hold():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 kept, 0 broken" in res.stdout


def test_an_import_up_a_layer_breaks_the_contract(tmp_path):
    """The same contracts on a copy of the tree with one back-edge (storage -> reward) fail."""
    for name in ("assistant", "reward", "storage"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "storage" / "sneaky.py").write_text("from reward.feedback import RewardData\n")
    res = _lint(tmp_path)
    assert res.returncode != 0 and "storage is not allowed to import reward" in res.stdout


def test_common_flags_mean_the_same_before_and_after_the_sub_command(tmp_path):
    import app

    parser = app.build_parser()
    for argv in (["--data-dir", str(tmp_path), "--profile", "p1", "simulate", "--rl-lr", "0.01"],
                 ["simulate", "--data-dir", str(tmp_path), "--profile", "p1", "--rl-lr", "0.01"],
                 ["--data-dir", "/elsewhere", "simulate", "--data-dir", str(tmp_path), "--profile", "p1",
                  "--rl-lr", "0.01"]):
        a = parser.parse_args(argv)
        assert (a.data_dir, a.profile, a.rl_lr) == (str(tmp_path), "p1", 0.01), argv
    # nested sub-commands too (`versions list` under `versions`)
    for argv in (["--data-dir", str(tmp_path), "versions", "list"], ["versions", "list", "--data-dir", str(tmp_path)],
                 ["versions", "--data-dir", str(tmp_path), "list"]):
        assert parser.parse_args(argv).data_dir == str(tmp_path), argv
    # a flag left out keeps the dataclass default, not a retyped literal
    from assistant.app.cli.rl import sim_config
    from reward.rl.config import RLConfig

    cfg = sim_config(parser.parse_args(["simulate", "--budget", "12"]))
    assert cfg.budget == 12 and cfg.learner.rl == RLConfig()
