"""Atomic version directories, publish/discard/rollback, pruning and crash leftovers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage import artifacts
from storage.artifacts import (
    VersionError,
    collect_garbage,
    discard_version,
    prune_versions,
    publish_version,
    rollback,
    save_version,
    versions_root,
)


def _writer(payload: str):
    def write(d: Path) -> None:
        (d / "adapter").mkdir()
        (d / "adapter" / "weights.txt").write_text(payload)

    return write


def _tree(data_dir: Path) -> list[str]:
    root = versions_root(data_dir)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_save_version_writes_dir_then_row(store, tmp_path):
    v = save_version(store, tmp_path, kind="policy", profile_id="p", writer=_writer("a"),
                     metrics={"rl/kl": 0.1}, config={"lr": 1e-4})
    assert v.status == "candidate"
    d = Path(v.path)
    assert (d / "adapter" / "weights.txt").read_text() == "a"
    assert (d / "metrics.json").exists() and (d / "config.json").exists()
    assert store.live_version("p") is None  # a candidate is not live
    assert store.metric_series("rl/kl", v.id)[0]["value"] == pytest.approx(0.1)
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".tmp-")]


def test_failure_between_write_and_rename_leaves_nothing(store, tmp_path, monkeypatch):
    """A crash injected after the files are written but before the rename: no directory, no row."""
    before_versions = store.versions()

    def boom(src, dst):
        raise OSError("injected failure before rename")

    monkeypatch.setattr(artifacts.os, "rename", boom)
    with pytest.raises(OSError, match="injected"):
        save_version(store, tmp_path, kind="policy", profile_id="p", writer=_writer("x"), publish=True)
    monkeypatch.undo()
    assert store.versions() == before_versions
    assert store.live_version("p") is None
    assert _tree(tmp_path) in ([], ["p"])  # at most the empty profile folder
    # the database still works and the next save succeeds
    v = save_version(store, tmp_path, kind="policy", profile_id="p", writer=_writer("y"), publish=True)
    assert store.live_version("p").id == v.id


def test_failure_in_writer_and_in_row_insert_leave_nothing(store, tmp_path, monkeypatch):
    def bad_writer(d: Path) -> None:
        (d / "half.bin").write_bytes(b"12")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError):
        save_version(store, tmp_path, kind="policy", profile_id="p", writer=bad_writer)
    assert _tree(tmp_path) in ([], ["p"])

    def bad_add_version(**kw):
        raise RuntimeError("db died after rename")

    monkeypatch.setattr(store, "add_version", bad_add_version)
    with pytest.raises(RuntimeError, match="db died"):
        save_version(store, tmp_path, kind="policy", profile_id="p", writer=_writer("z"))
    assert _tree(tmp_path) in ([], ["p"])  # the renamed directory was removed again
    assert store.versions() == []


def test_publish_discard_and_rollback(store, tmp_path):
    v1 = save_version(store, tmp_path, kind="policy", profile_id="p", writer=_writer("1"), publish=True)
    v2 = save_version(store, tmp_path, kind="policy", profile_id="p", writer=_writer("2"))
    assert store.live_version("p").id == v1.id
    publish_version(store, v2.id)
    assert store.live_version("p").id == v2.id
    v3 = save_version(store, tmp_path, kind="policy", profile_id="p", writer=_writer("3"))
    discard_version(store, v3.id)
    assert store.get_version(v3.id).status == "discarded" and not Path(v3.path).exists()
    with pytest.raises(VersionError):
        publish_version(store, v3.id)
    with pytest.raises(VersionError):
        rollback(store, "p", v3.id)

    # rollback without target: previous published one is live again
    now = rollback(store, "p")
    assert now.id == v1.id and store.get_version(v2.id).status == "rolled_back"
    # roll "forward" to v2 by naming it
    now = rollback(store, "p", v2.id)
    assert now.id == v2.id and store.live_version("p").id == v2.id
    assert store.get_version(v1.id).status == "rolled_back"  # it was live; still a valid target
    assert [t.id for t in artifacts.rollback_targets(store, "p")] == [v1.id]
    # back to the base model
    assert rollback(store, "p", 0) is None
    assert store.live_version("p") is None
    with pytest.raises(VersionError, match="nothing to roll back"):
        rollback(store, "p")
    # a version from another kind/profile is refused
    r = save_version(store, tmp_path, kind="reward", profile_id="p", writer=_writer("r"), publish=True)
    with pytest.raises(VersionError):
        rollback(store, "p", r.id)


def test_prune_keeps_newest_and_live(store, tmp_path):
    vs = [save_version(store, tmp_path, kind="policy", profile_id="p", writer=_writer(str(i)), publish=True)
          for i in range(5)]
    rollback(store, "p", vs[0].id)  # make the oldest live
    removed = prune_versions(store, "p", "policy", keep=2)
    assert sorted(removed) == sorted([vs[1].id, vs[2].id])
    assert Path(vs[0].path).exists() and Path(vs[3].path).exists() and Path(vs[4].path).exists()
    assert store.live_version("p").id == vs[0].id
    assert store.get_version(vs[1].id).status == "discarded"
    # pruning again counts only versions that still exist
    assert prune_versions(store, "p", "policy", keep=2) == []


def test_collect_garbage_removes_only_old_orphans(store, tmp_path):
    v = save_version(store, tmp_path, kind="policy", profile_id="p", writer=_writer("1"), publish=True)
    root = versions_root(tmp_path) / "p"
    orphan = root / "policy-orphan"
    orphan.mkdir()
    tmp = root / ".tmp-policy-x-1234"
    tmp.mkdir()
    young = root / ".tmp-policy-young"
    young.mkdir()
    old = 1_000_000_000
    os.utime(orphan, (old, old))
    os.utime(tmp, (old, old))
    removed = collect_garbage(store, tmp_path)
    assert sorted(Path(p).name for p in removed) == sorted([orphan.name, tmp.name])
    assert Path(v.path).exists() and young.exists()


def test_profile_names_never_leave_the_versions_folder(store, tmp_path):
    root = versions_root(tmp_path).resolve()
    for profile in ("../../escape", "a/b", "/abs", "..", "p-lookalike"):
        v = save_version(store, tmp_path, kind="policy", profile_id=profile, writer=_writer("x"), publish=True)
        d = Path(v.path).resolve()
        assert d.parent.parent == root, (profile, d)  # versions/<one folder>/<version>
        assert store.live_version(profile).id == v.id
    assert Path(save_version(store, tmp_path, kind="policy", profile_id="alice", writer=_writer("y")).path
                ).parent.name == "alice"
    assert not (tmp_path.parent / "escape").exists()
    # nothing of it looks like an orphan to the garbage collector
    old = 1_000_000_000
    for d in root.rglob("*"):
        os.utime(d, (old, old))
    assert collect_garbage(store, tmp_path) == []
