"""Access control (issue 17, item 4): bound to loopback, only this server's Host and (for state
changes) no Origin or the same origin; bound elsewhere, a token or nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from assistant.app.api.security import AccessGuard, AccessSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import faults  # the routes, their bodies, the app and the snapshot: the benchmark's, one definition

API = "/api/v1"
LOCAL = "http://127.0.0.1:7860"


@pytest.fixture
def seeded(tiny_services):
    """A rating target, a published version, so that a rollback or a rating would show."""
    from storage.artifacts import save_version

    st = tiny_services.store
    rec = st.record_request(profile_id="default", mode="continue", text="t", options={}, prompt="p",
                            policy_version=0, suggestions=["a", "b"])
    save_version(st, st.path.parent, kind="policy", profile_id="default", writer=lambda d: None, publish=True)
    return tiny_services, rec


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:9999", "null",
                                    "http://localhost.evil.example:7860", "file://"])
def test_cross_origin_state_changes_are_403_and_change_nothing(seeded, origin):
    services, _ = seeded
    app = faults.full_app(services, AccessSettings(host="127.0.0.1", port=7860))
    routes = faults.state_changing_routes(app)
    assert {p for _, p in routes} == set(faults.STATE_BODIES)  # every state-changing route has a body
    before = faults.snapshot(services)
    with TestClient(app, base_url=LOCAL) as c:
        for method, path in routes:
            r = c.request(method, path, json=faults.STATE_BODIES.get(path, {}), headers={"origin": origin})
            assert r.status_code == 403, (path, r.status_code, r.text)
            assert "cross-origin" in r.json()["error"]
    assert faults.snapshot(services) == before


@pytest.mark.parametrize("host", ["evil.example", "evil.example:7860", "127.0.0.1:9999", "localhost", "10.0.0.5:7860"])
def test_wrong_host_is_403_for_every_route_and_changes_nothing(seeded, host):
    services, _ = seeded
    app = faults.full_app(services, AccessSettings(host="127.0.0.1", port=7860))
    before = faults.snapshot(services)
    with TestClient(app, base_url=LOCAL) as c:
        for method, path in [*faults.state_changing_routes(app), ("GET", f"{API}/status"), ("GET", f"{API}/requests"),
                             ("GET", "/openapi.json")]:
            r = c.request(method, path, json=faults.STATE_BODIES.get(path), headers={"host": host})
            assert r.status_code == 403, (path, host, r.text)
            assert "Host" in r.json()["error"]
    assert faults.snapshot(services) == before


@pytest.mark.parametrize("base", ["http://127.0.0.1:7860", "http://localhost:7860", "http://[::1]:7860"])
def test_same_origin_and_no_origin_are_let_in(seeded, base):
    services, rec = seeded
    app = faults.full_app(services, AccessSettings(host="127.0.0.1", port=7860))
    with TestClient(app, base_url=base) as c:
        sid = rec.suggestions[0].id
        assert c.post(f"{API}/feedback", json={"suggestion_id": sid, "kind": "thumb", "value": 1}).status_code == 200
        assert c.post(f"{API}/feedback", json={"suggestion_id": sid, "kind": "thumb", "value": -1},
                      headers={"origin": base}).status_code == 200
        assert c.get(f"{API}/status", headers={"origin": "http://evil.example"}).status_code == 200  # reads: CORS
    assert services.store.feedback_counts_by_kind()["thumb"] == 2


def test_an_exposed_bind_needs_a_token(seeded, tmp_path, monkeypatch, capsys):
    services, rec = seeded
    with pytest.raises(ValueError, match="token"):
        AccessGuard(lambda *a: None, AccessSettings(host="0.0.0.0", port=7860))
    import app as cli

    monkeypatch.delenv("INKLOOP_TOKEN", raising=False)
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        rc = cli.main(["serve", "--host", host, "--data-dir", str(tmp_path), "--model", str(tmp_path / "nope")])
        assert rc == 2
        err = capsys.readouterr().err
        assert "token" in err and "loading models" not in err  # refused before anything starts


def test_token_mode_bearer_login_page_and_cookie(seeded):
    services, rec = seeded
    app = faults.full_app(services, AccessSettings(host="0.0.0.0", port=7860, token="s3cret-token"))
    before = faults.snapshot(services)
    with TestClient(app, base_url="http://192.168.1.20:7860", follow_redirects=False) as c:
        sid = rec.suggestions[0].id
        body = {"suggestion_id": sid, "kind": "thumb", "value": 1}
        assert c.get(f"{API}/status").status_code == 401
        r = c.post(f"{API}/feedback", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["error"]
        assert c.post(f"{API}/feedback", json=body, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert faults.snapshot(services) == before
        # a browser is sent to the login page, which asks once and sets a cookie
        r = c.get("/", headers={"accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert "access token" in c.get("/login").text
        assert c.post("/login", data={"token": "nope"}).status_code == 401
        assert c.post("/login", data={"token": "s3cret-token"},
                      headers={"origin": "http://evil.example"}).status_code == 403
        r = c.post("/login", data={"token": "s3cret-token"})
        assert r.status_code == 303 and "HttpOnly" in r.headers["set-cookie"]
        assert "s3cret-token" not in r.headers["set-cookie"]
        assert c.get(f"{API}/status").status_code == 200  # the cookie now
        c.cookies.clear()
        auth = {"authorization": "Bearer s3cret-token"}
        assert c.get(f"{API}/status", headers=auth).status_code == 200
        assert c.post(f"{API}/feedback", json=body, headers=auth).status_code == 200
        assert c.post(f"{API}/feedback", json=body, headers={**auth, "origin": "http://evil.example"}).status_code == 403
    assert services.store.feedback_counts_by_kind()["thumb"] == 1


def test_the_startup_message_names_the_real_address():
    from assistant.app.cli.serve import public_urls

    assert public_urls("127.0.0.1", 7860) == ["http://127.0.0.1:7860/"]
    assert public_urls("::1", 8000) == ["http://[::1]:8000/"]
    urls = public_urls("0.0.0.0", 7860)
    assert urls[-1] == "http://127.0.0.1:7860/" and len(urls) >= 2


def test_the_ui_is_behind_the_same_guard(tiny_services):
    from assistant.app.cli.serve import build_app

    app = build_app(tiny_services, with_ui=True, access=AccessSettings(host="127.0.0.1", port=7860))
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/").status_code == 200
        assert c.get("/", headers={"host": "evil.example:7860"}).status_code == 403
        assert c.post("/gradio_api/queue/join", json={}, headers={"origin": "http://evil.example"}).status_code == 403
    app = build_app(tiny_services, with_ui=True, access=AccessSettings(host="0.0.0.0", port=7860, token="t0ken"))
    with TestClient(app, base_url="http://10.0.0.5:7860", follow_redirects=False) as c:
        assert c.get("/", headers={"accept": "text/html"}).status_code == 303
        assert c.get("/config").status_code == 401
        c.post("/login", data={"token": "t0ken"})
        assert c.get("/").status_code == 200
