"""Store reliability: transactions, paths, connections, pruning, locks, bounded growth, bad ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.records import StoreError
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
    from storage.records import NotFound

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
    from storage.records import as_dict

    v = save_version(store, tmp_path, kind="policy", profile_id="p", writer=_writer("x"))
    assert not Path(v.rel_path).is_absolute() and as_dict(v)["rel_path"] == v.rel_path
    assert store.resolve_path(v.rel_path) == Path(v.path)
    import shutil
    shutil.rmtree(v.path)
    with pytest.raises(VersionError) as ei:
        rollback(store, "p", v.id)
    assert str(tmp_path) not in str(ei.value)


def test_api_version_listing_shows_the_relative_path(store, tmp_path):
    from assistant.app.api.learning import _version_out
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
    from assistant.app.export import ExportError, _prepare_out
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
    from assistant.app.export import ExportError, resolve_version

    vs = _published(store, tmp_path, 2)
    for status in ("deleting", "abandoned", "discarded"):
        store.set_version_status(vs[0].id, status)
        with pytest.raises(ExportError):
            resolve_version(store, "p", "policy", vs[0].id)
    assert resolve_version(store, "p", "policy", None).id == vs[1].id


# ----------------------------------------------------------------------------- one learner per profile (17.9)
def test_a_second_learner_lock_fails_clearly_and_the_first_releases(tmp_path):
    from storage.locks import LockHeld, learner_lock

    with learner_lock(tmp_path, "alice"):
        with pytest.raises(LockHeld, match=r"another learner .*pid \d+.* profile 'alice'"):
            learner_lock(tmp_path, "alice").acquire()
        with learner_lock(tmp_path, "bob"):  # each profile has its own
            pass
    with learner_lock(tmp_path, "alice"):  # released on exit
        pass
    with learner_lock(tmp_path, "../../x"):  # a profile name never escapes the data directory
        assert [p.parent for p in tmp_path.rglob("*.lock")] == [tmp_path / "locks"] * 3


def test_the_learner_lock_dies_with_its_holder(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from storage.locks import LockHeld, learner_lock

    code = ("import sys, time; from storage.locks import learner_lock\n"
            f"lock = learner_lock({str(tmp_path)!r}, 'p').acquire()\n"
            "print('held', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=str(Path(__file__).resolve().parents[1]))
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"pid {child.pid}"):
            learner_lock(tmp_path, "p").acquire()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 5
        while True:  # the kernel drops the lock with the process: no stale lock to clean up
            try:
                lock = learner_lock(tmp_path, "p").acquire()
                break
            except LockHeld:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        lock.release()
    finally:
        child.kill()
        child.wait()


# ----------------------------------------------------------------------------- bounded growth (17.10)
def test_trim_history_keeps_the_newest_events_and_metrics_per_profile(store, tmp_path):
    va = store.add_version(profile_id="a", kind="policy", path=tmp_path / "va")
    vb = store.add_version(profile_id="b", kind="policy", path=tmp_path / "vb")
    for i in range(30):
        store.add_event("guard", f"a{i}", profile_id="a")
        store.log_metrics(va.id, {"rl/kl": float(i)}, step=i)
    for i in range(5):
        store.add_event("guard", f"b{i}", profile_id="b")
        store.log_metrics(vb.id, {"rl/kl": float(i)}, step=i)
    assert store.trim_history("a", keep_events=10, keep_metrics=7, chunk=4) == {"events": 20, "metrics": 23}
    assert [e["reason"] for e in store.events("a")] == [f"a{i}" for i in range(29, 19, -1)]
    assert [m["value"] for m in store.metric_series("rl/kl", va.id)] == [float(i) for i in range(23, 30)]
    assert len(store.events("b")) == 5 and len(store.metric_series("rl/kl", vb.id)) == 5  # other profiles untouched
    assert store.trim_history("a", keep_events=10, keep_metrics=7) == {"events": 0, "metrics": 0}
    with pytest.raises(StoreError):
        store.trim_history("a", keep_events=-1)


# ----------------------------------------------------------------------------- what the learner does at start
def test_learn_refuses_to_start_beside_a_running_learner(tmp_path, capsys):
    import app
    from storage.locks import learner_lock

    with learner_lock(tmp_path, "default"):
        rc = app.main(["learn", "--data-dir", str(tmp_path), "--once"])
    err = capsys.readouterr().err
    assert rc == 2 and "another learner" in err and "Traceback" not in err


def test_learner_start_cleans_candidates_history_and_garbage(tmp_path, monkeypatch):
    import app
    from assistant.app.cli import learn as cli_learn
    from storage import artifacts
    from storage.artifacts import LEARNER_CANDIDATE, save_version
    from storage.locks import LockHeld, learner_lock

    s = Store(tmp_path / "inkloop.db")
    left = save_version(s, tmp_path, kind="policy", profile_id="default", writer=_writer("k"), config=LEARNER_CANDIDATE)
    for i in range(3):
        s.add_event("guard", str(i))
    s.close()
    seen = {}

    def fake_build(args, store, cfg):  # stop before loading any model: we only check the start
        seen["status"] = store.get_version(left.id).status
        with pytest.raises(LockHeld):  # held while the learner runs
            learner_lock(tmp_path, "default").acquire()
        raise SystemExit(0)

    monkeypatch.setattr(cli_learn, "learner_factory", fake_build)
    monkeypatch.setattr("storage.learning.KEEP_EVENTS", 1)
    with pytest.raises(SystemExit):
        app.main(["learn", "--data-dir", str(tmp_path), "--once"])
    assert seen["status"] == "abandoned" and not Path(left.path).exists()
    s = Store(tmp_path / "inkloop.db")
    assert len(s.events("default", "guard")) == 1
    s.close()
    with learner_lock(tmp_path, "default"):  # and released when the command ends
        pass
    assert artifacts.rollback_targets(Store(tmp_path / "inkloop.db"), "default") == []


# ----------------------------------------------------------------------------- imports interleave with live ratings (17.10)
def _ratings_file(tmp_path, n, per_prompt=10):
    import json
    f = tmp_path / "big.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"p{i // per_prompt}", "completion": f"c{i}", "rating": 1 + i % 5}) + "\n"
                         for i in range(n)))
    return f


def test_a_live_rating_succeeds_during_a_large_import(tmp_path):
    """Live ratings interleave with a large import (short transactions): each waits for one
    chunk at most, never for the whole file. Judged against the import's own duration, not a
    fixed busy timeout, so a loaded machine slows both sides alike instead of failing the test."""
    import threading
    import time

    from storage.jsonl import import_into_store, parse_file

    importer = Store(tmp_path / "inkloop.db")
    sid = _request(importer).suggestions[0].id
    parsed = parse_file(_ratings_file(tmp_path, 6000))
    live = Store(tmp_path / "inkloop.db")
    done, spans, errors = threading.Event(), [], []

    def rate():
        while not done.is_set():
            t = time.monotonic()
            try:
                live.add_feedback(sid, "thumb", 1, source="ui")
                spans.append((t, time.monotonic()))
            except Exception as e:  # noqa: BLE001
                errors.append(e)
            time.sleep(0.01)

    t = threading.Thread(target=rate)
    t.start()
    t0 = time.monotonic()
    try:
        summary = import_into_store(importer, parsed)
    finally:
        t1 = time.monotonic()
        done.set()
        t.join()
    assert errors == []
    # one long transaction would hold every rating until its commit, at the end: instead they
    # complete all along, and none waits anywhere near the whole import
    early = [e for s, e in spans if t0 < e < t0 + (t1 - t0) * 2 / 3]
    assert len(early) >= 3, (len(spans), t1 - t0)
    assert max(e - s for s, e in spans if t0 < s < t1) < (t1 - t0) / 2
    assert summary == {"requests": 600, "feedback": 6000, "records": 6000, "skipped": 0}
    assert importer.counts()["feedback"] == 6000 + len(spans)
    importer.close()
    live.close()


def test_an_interrupted_import_run_again_writes_only_what_is_missing(store, tmp_path, monkeypatch):
    from storage.jsonl import import_into_store, parse_file

    parsed = parse_file(_ratings_file(tmp_path, 500))
    real = store.add_feedback
    calls = []

    def dies_at_250(*a, **kw):
        calls.append(1)
        if len(calls) == 250:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr(store, "add_feedback", dies_at_250)
    with pytest.raises(KeyboardInterrupt):
        import_into_store(store, parsed, chunk=100, pause_s=0)
    monkeypatch.undo()
    assert 0 < store.counts()["feedback"] < 500 and store.counts()["feedback"] % 10 == 0  # whole prompts only
    summary = import_into_store(store, parsed, chunk=100, pause_s=0)
    assert summary["skipped"] == store.counts()["requests"] - summary["requests"] > 0
    assert store.counts()["feedback"] == 500 and store.counts()["requests"] == 50  # nothing twice, nothing lost
    again = import_into_store(store, parsed)
    assert again == {"requests": 0, "feedback": 0, "records": 500, "skipped": 50}
