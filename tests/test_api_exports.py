"""Exports bounded (issue 17, item 8) and no absolute paths in answers (item 10, API part)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from assistant.app.api.learning import learning_router
from assistant.app.api.routes import build_api
from storage.artifacts import exports_root, save_version

API = "/api/v1"


def _client(services):
    return TestClient(build_api(services, extra_routers=[learning_router(services, services.store.path.parent)]))


def _feedback(services):
    st = services.store
    rec = st.record_request(profile_id="default", mode="continue", text="t", options={}, prompt="p",
                            policy_version=0, suggestions=["a", "b"])
    st.add_feedback(rec.suggestions[0].id, "thumb", 1)


def test_versions_and_errors_name_no_absolute_path(tiny_services, tmp_path):
    st = tiny_services.store
    data_dir = st.path.parent
    v = save_version(st, data_dir, kind="policy", profile_id="default", writer=lambda d: None, publish=True)
    gone = save_version(st, data_dir, kind="policy", profile_id="default", writer=lambda d: None)
    import shutil

    shutil.rmtree(gone.path)
    with _client(tiny_services) as c:
        r = c.get(f"{API}/versions")
        assert r.status_code == 200
        text = r.text
        assert str(data_dir) not in text and str(data_dir.resolve()) not in text and str(Path.home()) not in text
        shown = {x["id"]: x for x in r.json()["versions"]}
        assert not Path(shown[v.id]["path"]).is_absolute() and shown[v.id]["path"].startswith("versions")
        assert (data_dir / shown[v.id]["path"]).resolve() == Path(v.path).resolve()
        for method, url, body in [("POST", f"{API}/export", {"what": "adapter", "version": gone.id}),
                                  ("POST", f"{API}/export", {"what": "adapter", "version": v.id}),
                                  ("POST", f"{API}/versions/{gone.id}/rollback", {})]:
            r = c.request(method, url, json=body)
            assert 400 <= r.status_code < 500, r.text
            assert str(data_dir) not in r.text and str(tmp_path) not in r.text, r.text


def test_one_export_at_a_time_off_the_request_thread(tiny_services, monkeypatch):
    _feedback(tiny_services)
    import assistant.app.export as export_mod

    started, release = threading.Event(), threading.Event()
    real = export_mod.export_feedback
    threads = []

    def slow_export(*a, **kw):
        threads.append(threading.current_thread().name)
        started.set()
        release.wait(10)
        return real(*a, **kw)

    monkeypatch.setattr(export_mod, "export_feedback", slow_export)
    with _client(tiny_services) as c:
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("r", c.post(f"{API}/export", json={"what": "feedback"})))
        t.start()
        assert started.wait(10)
        r = c.post(f"{API}/export", json={"what": "feedback"})
        assert r.status_code == 409 and "another export" in r.json()["error"] and r.headers["retry-after"]
        assert c.get(f"{API}/status").status_code == 200  # the server answers meanwhile
        release.set()
        t.join(10)
        assert box["r"].status_code == 200, box["r"].text
        assert threads == ["inkloop-export_0"] or threads[0].startswith("inkloop-export")
        assert c.post(f"{API}/export", json={"what": "feedback"}).status_code == 200  # free again


def test_exports_are_cleaned_keeping_the_newest(tiny_services):
    _feedback(tiny_services)
    tiny_services.limits.keep_exports = 3
    root = exports_root(tiny_services.store.path.parent)
    root.mkdir(parents=True)
    (root / ".tmp-feedback-old.zip").write_bytes(b"half a zip")
    (root / "feedback-default-all-orphan").mkdir()  # a folder whose zip never got written
    names = []
    with _client(tiny_services) as c:
        for _ in range(6):
            r = c.post(f"{API}/export", json={"what": "feedback"})
            assert r.status_code == 200, r.text
            names.append(r.json()["name"])
            time.sleep(0.02)
        listed = [e["name"] for e in c.get(f"{API}/exports").json()["exports"]]
    assert listed == names[::-1][:3]
    left = sorted(p.name for p in root.iterdir())
    assert left == sorted([*names[-3:], *(n[:-4] for n in names[-3:])])  # zip + folder of the newest 3


def test_a_rejected_export_removes_no_earlier_export(tiny_services):
    """Found by benchmarks/faults.py: a failing export had already pruned older zips."""
    _feedback(tiny_services)
    tiny_services.limits.keep_exports = 2
    with _client(tiny_services) as c:
        for _ in range(2):
            assert c.post(f"{API}/export", json={"what": "feedback"}).status_code == 200
            time.sleep(0.02)
        before = c.get(f"{API}/exports").json()["exports"]
        r = c.post(f"{API}/export", json={"what": "adapter", "version": 123456})
        assert r.status_code == 404
        r = c.post(f"{API}/export", json={"what": "merged"})
        assert r.status_code == 400
        assert c.get(f"{API}/exports").json()["exports"] == before
