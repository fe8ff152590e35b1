"""Store reliability: transactions, paths, connections, pruning, locks, bounded growth, bad ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.store import Store


def _request(store: Store, n: int = 3, profile: str = "default", prompt: str = "<prompt>"):
    return store.record_request(profile_id=profile, mode="continue", text="t", options={}, prompt=prompt,
                                policy_version=0, suggestions=[f"c{i}" for i in range(n)])


# ----------------------------------------------------------------------------- sqlite-utils semantics
def test_a_failed_grouped_write_leaves_nothing(store):
    """What the pinned sqlite-utils must give: its inserts join our BEGIN IMMEDIATE transaction
    (sqlite-utils 3.x wrapped each insert in `with conn:`, which commits it on the spot)."""
    with pytest.raises(RuntimeError):
        with store.transaction():
            _request(store)
            _request(store)
            raise RuntimeError("crash in the middle")
    assert store.counts()["requests"] == 0 and store.counts()["suggestions"] == 0
    assert not store.db.conn.in_transaction
    _request(store)  # and the store still writes
    assert store.counts()["requests"] == 1


# ----------------------------------------------------------------------------- ids out of SQLite's range
@pytest.mark.parametrize("bad", [2**63, 2**64 + 5, -(2**63) - 1, "12x", None])
def test_ids_out_of_range_or_malformed_are_not_found(store, bad):
    from storage.store import NotFound

    req = _request(store)
    store.add_feedback(req.suggestions[0].id, "thumb", 1)
    for call in (store.get_request, store.get_suggestion, store.get_feedback, store.get_version,
                 store.get_document, lambda i: store.set_version_status(i, "published"),
                 lambda i: store.update_version_metrics(i, {"a": 1.0}),
                 lambda i: store.add_feedback(i, "thumb", 1), lambda i: store.set_snippet_embedding(i, [1.0], "e"),
                 *([lambda i: store.save_document("default", "x", document_id=i)] if bad is not None else [])):
        with pytest.raises(NotFound):
            call(bad)
    if isinstance(bad, int):  # list queries answer "nothing there", never OverflowError
        assert store.feedback(request_id=bad) == []
        assert store.feedback(since_id=bad) == ([] if bad > 0 else store.feedback())
        assert store.requests_with_feedback(since_id=bad) == ([] if bad > 0 else store.requests_with_feedback())
        assert store.metric_series("x", version_id=bad) == []
    assert store.counts()["feedback"] == 1


# ----------------------------------------------------------------------------- a constant number of queries
def _count_selects(store, fn):
    n = []
    store.db.conn.set_trace_callback(  # data queries (not sqlite-utils' own look-ups of sqlite_master)
        lambda sql: n.append(sql) if sql.lstrip().lower().startswith("select") and "sqlite_master" not in sql else None)
    try:
        out = fn()
    finally:
        store.db.conn.set_trace_callback(None)
    return out, len(n)


def test_requests_with_feedback_uses_a_constant_number_of_queries(store):
    def rate(k):
        for _ in range(k):
            r = _request(store, n=2)
            store.add_feedback(r.suggestions[0].id, "best")
    rate(2)
    few, q_few = _count_selects(store, store.requests_with_feedback)
    rate(30)
    many, q_many = _count_selects(store, store.requests_with_feedback)
    assert len(few) == 2 and len(many) == 32
    assert q_many == q_few <= 4
    g = many[-1]
    assert [s.idx for s in g["suggestions"]] == [0, 1] and g["request"].suggestions == g["suggestions"]
    assert [f.kind for f in g["feedback"]] == ["best"]
    recent, q_recent = _count_selects(store, lambda: store.recent_requests(limit=20))
    assert len(recent) == 20 and all(len(r.suggestions) == 2 for r in recent) and q_recent <= 2


# ----------------------------------------------------------------------------- version paths (17.1)
def _writer(payload: str):
    def write(d):
        (d / "adapter").mkdir()
        (d / "adapter" / "weights.txt").write_text(payload)
    return write


def _age_everything(root):
    import os
    for d in root.rglob("*"):
        os.utime(d, (1_000_000_000, 1_000_000_000))


def test_moved_data_dir_keeps_its_versions_through_gc(tmp_path):
    from pathlib import Path

    from storage.artifacts import collect_garbage, save_version, versions_root

    old = tmp_path / "old"
    s = Store(old / "inkloop.db")
    v = save_version(s, old, kind="policy", profile_id="p", writer=_writer("live"), publish=True)
    assert v.rel_path == f"versions/p/{Path(v.path).name}"  # stored relative to the data directory
    assert s.db["model_versions"].get(v.id)["path"] == v.rel_path
    s.close()
    new = tmp_path / "moved"
    old.rename(new)
    s = Store(new / "inkloop.db")
    _age_everything(versions_root(new))
    assert collect_garbage(s, new) == []
    live = s.live_version("p")
    assert Path(live.path) == new / live.rel_path and (Path(live.path) / "adapter" / "weights.txt").read_text() == "live"
    s.close()


def test_relative_data_dir_from_another_cwd_keeps_its_versions(tmp_path, monkeypatch):
    from pathlib import Path

    from storage.artifacts import collect_garbage, save_version, versions_root

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    s = Store(Path("data") / "inkloop.db")  # `--data-dir data` run from a/
    v = save_version(s, Path("data"), kind="policy", profile_id="p", writer=_writer("x"), publish=True)
    s.close()
    monkeypatch.chdir(tmp_path / "b")  # the same data opened from b/ (absolute) and GC'd with a relative dir
    s = Store(tmp_path / "a" / "data" / "inkloop.db")
    _age_everything(versions_root(tmp_path / "a" / "data"))
    assert collect_garbage(s, Path("../a/data")) == []
    assert Path(s.live_version("p").path).is_dir() and s.live_version("p").id == v.id
    s.close()


def test_migration_rewrites_absolute_and_cwd_relative_rows(tmp_path, monkeypatch):
    """Rows as the old code wrote them (absolute; relative to the cwd of the run; of a data dir that
    was since moved) become relative to the data directory; nothing any row names is collected."""
    import sqlite3

    import sqlite_utils

    from storage import schema
    from storage.artifacts import collect_garbage, versions_root

    data = tmp_path / "data"
    names = ["policy-abs", "policy-cwdrel", "policy-moved", "policy-elsewhere"]
    for n in names[:3]:
        (data / "versions" / "p" / n).mkdir(parents=True)
    outside = tmp_path / "outside" / "policy-elsewhere"
    outside.mkdir(parents=True)
    db = sqlite_utils.Database(sqlite3.connect(str(data / "inkloop.db")))
    db["_migrations"].create({"name": str, "applied_at": float}, pk="name")
    for name, fn in schema.MIGRATIONS[:3]:
        fn(db)
        db["_migrations"].insert({"name": name, "applied_at": 0.0})
    paths = [str(data / "versions/p/policy-abs"), "data/versions/p/policy-cwdrel",
             "/gone/old-data/versions/p/policy-moved", str(outside)]
    for i, p in enumerate(paths, 1):
        db["model_versions"].insert({"id": i, "profile_id": "p", "kind": "policy", "path": p, "status": "published",
                                     "metrics": "{}", "config": "{}", "created_at": float(i), "published_at": float(i)})
    db.conn.commit()
    db.conn.close()
    monkeypatch.chdir(tmp_path / "outside")  # not the cwd the relative row was written from
    s = Store(data / "inkloop.db")
    stored = [r["path"] for r in s.db["model_versions"].rows_where(order_by="id")]
    assert stored == ["versions/p/policy-abs", "versions/p/policy-cwdrel", "versions/p/policy-moved", str(outside)]
    _age_everything(versions_root(data))
    assert collect_garbage(s, data) == []
    assert all((data / "versions" / "p" / n).is_dir() for n in names[:3]) and outside.is_dir()
    s.close()


def test_gc_never_deletes_a_directory_a_row_names_however_it_was_written(tmp_path, monkeypatch):
    from storage.artifacts import collect_garbage, versions_root

    data = tmp_path / "data"
    s = Store(data / "inkloop.db")
    d = versions_root(data) / "p" / "policy-odd"
    d.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    # a path written through a symlinked or dotted spelling of the data dir still names that directory
    (tmp_path / "link").symlink_to(data)
    s.add_version(profile_id="p", kind="policy", path="link/versions/./p/policy-odd", status="published")
    orphan = versions_root(data) / "p" / "policy-orphan"
    orphan.mkdir()
    _age_everything(versions_root(data))
    assert [Path(p).name for p in collect_garbage(s, data)] == ["policy-orphan"]
    assert d.is_dir() and not orphan.exists()
    s.close()


def test_listings_and_errors_carry_relative_paths(store, tmp_path):
    from storage.artifacts import VersionError, rollback, save_version
    from storage.store import as_dict

    v = save_version(store, tmp_path, kind="policy", profile_id="p", writer=_writer("x"))
    assert not Path(v.rel_path).is_absolute() and as_dict(v)["rel_path"] == v.rel_path
    assert store.resolve_path(v.rel_path) == Path(v.path)
    import shutil
    shutil.rmtree(v.path)
    with pytest.raises(VersionError) as ei:
        rollback(store, "p", v.id)
    assert str(tmp_path) not in str(ei.value)


def test_api_version_listing_shows_the_relative_path(store, tmp_path):
    from assistant.api_learning import _version_out
    from storage.artifacts import save_version

    v = save_version(store, tmp_path, kind="policy", profile_id="p", writer=_writer("x"), publish=True)
    out = _version_out(v, v.id)
    assert out["path"] == v.rel_path and not Path(out["path"]).is_absolute() and "rel_path" not in out
    assert out["available"] is True and out["live"] is True


# ----------------------------------------------------------------------------- connections (17.2)
def _open_fds() -> int:
    import os
    return len(os.listdir("/proc/self/fd"))


def test_short_threads_do_not_leak_connections(store):
    import gc
    import threading

    req = _request(store)
    errors = []

    def read():
        try:
            assert store.get_request(req.id).suggestions[0].text == "c0"
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def batches(n):  # ten threads at a time, as a streamed suggestion per request would
        for _ in range(n):
            ts = [threading.Thread(target=read) for _ in range(10)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        gc.collect()

    batches(1)
    before = _open_fds()
    batches(50)  # 500 threads
    assert errors == []
    # flat: SQLite keeps the descriptors of closed connections for reuse (while another connection
    # of the process holds a lock on the file), so at most one per thread that ran at once (10)
    assert _open_fds() - before <= 12
    assert len(store._conns) <= 2  # the main thread's (and at most one still being finalised)


def test_a_long_lived_thread_keeps_one_connection(store):
    import threading

    seen = []

    def work():
        for _ in range(5):
            store.counts()
            seen.append(id(store.db.conn))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert len(set(seen)) == 1
    main = store.db.conn
    store.counts()
    assert store.db.conn is main


# ----------------------------------------------------------------------------- pruning, fallback (17.5)
def _published(store, data_dir, n, profile="p"):
    from storage.artifacts import save_version
    return [save_version(store, data_dir, kind="policy", profile_id=profile, writer=_writer(str(i)), publish=True)
            for i in range(n)]


def test_a_kill_inside_pruning_leaves_a_marked_row_never_offered(store, tmp_path, monkeypatch):
    import shutil

    from storage import artifacts

    vs = _published(store, tmp_path, 3)
    real_rmtree = shutil.rmtree

    def killed_half_way(path, ignore_errors=False):
        (Path(path) / "adapter" / "weights.txt").unlink()  # half of the directory is gone...
        raise KeyboardInterrupt("SIGKILL")  # ...when the process dies

    monkeypatch.setattr(artifacts.shutil, "rmtree", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        artifacts.prune_versions(store, "p", "policy", keep=2)
    monkeypatch.setattr(artifacts.shutil, "rmtree", real_rmtree)
    half = store.get_version(vs[0].id)
    assert half.status == "deleting" and Path(half.path).is_dir()  # marked before a byte was deleted
    assert vs[0].id not in [t.id for t in artifacts.rollback_targets(store, "p")]
    assert not artifacts.available(half)
    with pytest.raises(artifacts.VersionError):
        artifacts.rollback(store, "p", vs[0].id)
    with pytest.raises(artifacts.VersionError):
        artifacts.publish_version(store, vs[0].id)
    assert artifacts.fallback_version(store, "p", exclude={vs[2].id}).id == vs[1].id
    # the next start finishes the deletion
    artifacts.collect_garbage(store, tmp_path)
    assert store.get_version(vs[0].id).status == "discarded" and not Path(vs[0].path).exists()
    assert store.live_version("p").id == vs[2].id and Path(vs[2].path).is_dir()


def test_prune_racing_a_rollback_never_deletes_the_restored_version(tmp_path):
    import threading
    import time

    from storage import artifacts

    a, b = Store(tmp_path / "inkloop.db"), Store(tmp_path / "inkloop.db")  # the API and the learner
    vs = _published(a, tmp_path, 3)
    inside = threading.Event()

    def restore_oldest():
        with a.transaction():
            artifacts._rollback(a, "p", vs[0].id, "policy")
            inside.set()
            time.sleep(0.5)  # the prune starts while this rollback is not yet committed

    t = threading.Thread(target=restore_oldest)
    t.start()
    inside.wait(5)
    artifacts.prune_versions(b, "p", "policy", keep=1)
    t.join()
    live = b.live_version("p")
    assert live.id == vs[0].id and live.status == "published"
    assert (Path(live.path) / "adapter" / "weights.txt").read_text() == "0"
    assert b.get_version(vs[1].id).status == "discarded"  # and the others were pruned
    a.close()
    b.close()


def test_fallback_version_is_the_newest_loadable_published_one(store, tmp_path):
    import shutil

    from storage import artifacts

    assert artifacts.fallback_version(store, "p") is None  # nothing published: the base model
    vs = _published(store, tmp_path, 4)
    assert artifacts.fallback_version(store, "p").id == vs[3].id  # the live one, when it loads
    shutil.rmtree(vs[2].path)  # its files are gone
    store.set_version_status(vs[1].id, "rolled_back")  # rolled back on purpose: not a fallback
    assert artifacts.fallback_version(store, "p", exclude={vs[3].id}).id == vs[0].id
    assert artifacts.fallback_version(store, "p", exclude={vs[3].id, vs[0].id}) is None
    assert artifacts.fallback_version(store, "p", kind="reward") is None


# ----------------------------------------------------------------------------- learner candidates (17.6)
def test_abandoned_learner_candidates_are_cleaned_and_never_offered(store, tmp_path):
    from storage import artifacts
    from storage.artifacts import LEARNER_CANDIDATE, save_version

    live = _published(store, tmp_path, 1)[0]
    left = save_version(store, tmp_path, kind="policy", profile_id="p", writer=_writer("k"), config=LEARNER_CANDIDATE)
    mine = save_version(store, tmp_path, kind="policy", profile_id="p", writer=_writer("u"))  # `inkloop rl`
    other = save_version(store, tmp_path, kind="policy", profile_id="q", writer=_writer("o"), config=LEARNER_CANDIDATE)
    assert left.id in [v.id for v in artifacts.rollback_targets(store, "p")]  # before: offered
    assert artifacts.abandon_candidates(store, "p") == [left.id]
    gone = store.get_version(left.id)
    assert gone.status == "abandoned" and not Path(gone.path).exists() and not artifacts.available(gone)
    assert [v.id for v in artifacts.rollback_targets(store, "p")] == [mine.id]
    with pytest.raises(artifacts.VersionError):
        artifacts.rollback(store, "p", left.id)
    assert store.get_version(mine.id).status == "candidate" and Path(mine.path).is_dir()
    assert store.get_version(other.id).status == "candidate"  # another profile's learner owns that one
    assert store.live_version("p").id == live.id
    assert artifacts.abandon_candidates(store, "p") == []


# ----------------------------------------------------------------------------- exports never delete versions (17.10)
def test_export_overwrite_into_the_versions_folder_is_refused(store, tmp_path):
    from assistant.export import ExportError, _prepare_out
    from storage.artifacts import exports_root, versions_root

    v = _published(store, tmp_path, 1)[0]
    for out in (versions_root(tmp_path), versions_root(tmp_path) / "p", Path(v.path), Path(v.path) / "adapter",
                tmp_path, tmp_path / "reports"):
        out.mkdir(parents=True, exist_ok=True)
        (out / "keep.txt").write_text("x")
        with pytest.raises(ExportError, match="data directory|version"):
            _prepare_out(out, True, store)
    assert (Path(v.path) / "adapter" / "weights.txt").read_text() == "0" and store.db.execute("select 1").fetchone()
    ok = exports_root(tmp_path) / "mine"
    ok.mkdir(parents=True)
    (ok / "old.txt").write_text("old")
    assert _prepare_out(ok, True, store) == ok and not (ok / "old.txt").exists()  # exports/ may be replaced


def test_export_refuses_abandoned_and_half_deleted_versions(store, tmp_path):
    from assistant.export import ExportError, resolve_version

    vs = _published(store, tmp_path, 2)
    for status in ("deleting", "abandoned", "discarded"):
        store.set_version_status(vs[0].id, status)
        with pytest.raises(ExportError):
            resolve_version(store, "p", "policy", vs[0].id)
    assert resolve_version(store, "p", "policy", None).id == vs[1].id
