"""REST API on the tiny model: every route, every bad input (4xx, JSON message, nothing written)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from assistant.app.api.routes import MAX_BODY_BYTES, build_api
from assistant.lm.config import MAX_K, MAX_TEXT_CHARS

API = "/api/v1"
FAST = {"max_new_tokens": 12, "seed": 1}


@pytest.fixture
def client(tiny_services):
    with TestClient(build_api(tiny_services)) as c:
        yield c


def _snapshot(services) -> tuple:
    st = services.store
    return st.counts(), st.feedback_counts_by_kind(), st.styles("default"), st.profiles()


def _suggest(client, **body):
    r = client.post(f"{API}/suggest", json={**FAST, **body})
    assert r.status_code == 200, r.text
    return r.json()


# ----------------------------------------------------------------------------- happy paths
@pytest.mark.parametrize("body", [
    {"mode": "continue", "text": "The rain had not stopped for three days.", "k": 3},
    {"mode": "restyle", "text": "I am tired.", "style": "vivid", "k": 2},
    {"mode": "restyle", "text": "I am tired.", "style": "sample", "sample": "Call me Ishmael.", "k": 2},
    {"mode": "inspire", "keywords": ["lighthouse", "storm"], "inspire_kind": "openings", "k": 4},
])
def test_suggest_records_request_and_suggestions(client, tiny_services, body):
    out = _suggest(client, **body)
    k = body["k"]
    assert len(out["suggestions"]) == k
    assert len({s["id"] for s in out["suggestions"]}) == k
    assert all(s["text"].strip() for s in out["suggestions"])
    assert out["policy_version"] == 0 and out["seconds"] >= 0
    req = tiny_services.store.get_request(out["request_id"])
    assert req.mode == body["mode"]
    assert [(s.id, s.text) for s in req.suggestions] == [(s["id"], s["text"]) for s in out["suggestions"]]
    assert req.options["k"] == k and req.options["seed"] == 1
    assert req.document_id is None
    got = client.get(f"{API}/requests/{out['request_id']}").json()
    assert [s["id"] for s in got["suggestions"]] == [s["id"] for s in out["suggestions"]]
    assert got["feedback"] == []


def test_suggest_with_variety_names_each_candidates_angle(client, tiny_services):
    from assistant.lm.prompts import ANGLES

    out = _suggest(client, mode="inspire", keywords="fog, lamp", k=4, variety=True)
    angles = [s.get("angle") for s in out["suggestions"]]
    assert len(angles) == 4 and set(a or "" for a in angles) <= set(ANGLES) and any(angles)
    req = tiny_services.store.get_request(out["request_id"])
    assert req.options["variety"] is True and req.options["angles"] == [a or "" for a in angles]
    assert all(s.get("angle") is None for s in _suggest(client, mode="inspire", keywords="fog", k=2)["suggestions"])


def test_feedback_every_kind_then_status_and_request_view(client, tiny_services):
    out = _suggest(client, mode="continue", text="She opened the door.", k=3)
    a, b, c = (s["id"] for s in out["suggestions"])
    bodies = [
        {"suggestion_id": a, "kind": "thumb", "value": 1},
        {"suggestion_id": b, "kind": "thumb", "value": -1},
        {"suggestion_id": a, "kind": "stars", "value": 4},
        {"suggestion_id": a, "kind": "best"},
        {"suggestion_id": c, "kind": "rank", "ranking": [c, a, b]},
        {"suggestion_id": b, "kind": "edit", "edited_text": "The door creaked open."},
        {"suggestion_id": a, "kind": "accept"},
    ]
    ids = []
    for body in bodies:
        r = client.post(f"{API}/feedback", json=body)
        assert r.status_code == 200, r.text
        ids.append(r.json()["feedback_id"])
    assert len(set(ids)) == 7
    fb = tiny_services.store.feedback()
    assert [f.kind for f in fb] == [b["kind"] for b in bodies]
    assert all(f.source == "api" for f in fb)
    assert fb[4].ranking == [c, a, b]

    st = client.get(f"{API}/status").json()
    assert st["model"] == "tiny" and st["policy_version"] == 0 and st["learner"] is None
    assert st["counts"]["requests"] == 1 and st["counts"]["suggestions"] == 3 and st["counts"]["feedback"] == 7
    assert st["feedback_by_kind"]["thumb"] == 2

    view = client.get(f"{API}/requests/{out['request_id']}").json()
    assert [f["id"] for f in view["feedback"]] == ids
    assert client.get(f"{API}/requests").json()["requests"][0]["id"] == out["request_id"]


def test_suggest_stream_sends_partials_then_the_recorded_answer(client, tiny_services):
    body = {"mode": "continue", "text": "The storm is coming.", "k": 2, "max_new_tokens": 16, "seed": 4}
    with client.stream("POST", f"{API}/suggest/stream", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in r.iter_lines() if line]
    partials, final = events[:-1], events[-1]
    assert len(partials) >= 2 and all(e["done"] is False and isinstance(e["partial"], list) for e in partials)
    assert final["done"] is True and len(final["suggestions"]) == 2
    req = tiny_services.store.get_request(final["request_id"])
    assert [s.text for s in req.suggestions] == [s["text"] for s in final["suggestions"]]
    # bad input is a plain 4xx before anything streams, and writes nothing
    before = _snapshot(tiny_services)
    r = client.post(f"{API}/suggest/stream", json={"mode": "continue", "text": ""})
    assert r.status_code == 400 and "non-empty text" in r.json()["error"]
    assert _snapshot(tiny_services) == before


def test_suggest_for_a_saved_document(client, tiny_services):
    did = tiny_services.store.save_document("default", "The rain had not stopped.")
    out = _suggest(client, mode="continue", text="The rain had not stopped.", k=1, document_id=did)
    assert tiny_services.store.get_request(out["request_id"]).document_id == did


def test_status_shows_learner_state(client, tiny_services):
    tiny_services.store.set_learner_state("default", phase="rl", progress=0.4, message="step 2/5")
    learner = client.get(f"{API}/status").json()["learner"]
    assert learner["phase"] == "rl" and learner["progress"] == 0.4 and learner["message"] == "step 2/5"


def test_library_add_search_and_inspire_material(client, tiny_services):
    ids = [client.post(f"{API}/library", json={"text": t}).json()["id"] for t in (
        "An old lighthouse keeper watches the storm roll in over the sea.",
        "A recipe for lemon cake with butter and sugar.",
        "Quarterly tax forms are due in April.",
    )]
    assert len(set(ids)) == 3
    res = client.get(f"{API}/library", params={"query": "lighthouse at sea in a storm", "top_k": 2}).json()["results"]
    assert len(res) == 2 and res[0]["id"] == ids[0] and res[0]["score"] > res[1]["score"]
    assert client.get(f"{API}/library", params={"query": "x", "profile": "someone-else"}).json()["results"] == []

    out = _suggest(client, mode="inspire", keywords="lighthouse, storm", k=2)
    assert out["material"][0]["id"] == ids[0]
    req = tiny_services.store.get_request(out["request_id"])
    assert "lighthouse keeper" in req.prompt  # the material reached the prompt


def test_styles_define_list_and_use(client, tiny_services):
    r = client.post(f"{API}/styles", json={"name": "noir", "description": "hard-boiled, rain, neon"})
    assert r.status_code == 200 and r.json()["name"] == "noir"
    styles = {s["name"]: s for s in client.get(f"{API}/styles").json()["styles"]}
    assert styles["noir"]["builtin"] is False and styles["formal"]["builtin"] is True
    out = _suggest(client, mode="restyle", text="I am tired.", style="noir", k=2)
    assert "hard-boiled, rain, neon" in tiny_services.store.get_request(out["request_id"]).prompt


def test_openapi_documents_routes_and_fields(client):
    spec = client.get("/openapi.json").json()
    for path in ("suggest", "feedback", "status", "library", "styles", "requests/{request_id}"):
        assert f"{API}/{path}" in spec["paths"]
    props = spec["components"]["schemas"]["SuggestIn"]["properties"]
    assert props["k"]["maximum"] == MAX_K and "description" in props["text"]
    assert props["text"]["maxLength"] == MAX_TEXT_CHARS


def test_extra_routers_are_included(tiny_services):
    extra = APIRouter(prefix=f"{API}/learner")

    @extra.get("/ping")
    def ping():
        return {"pong": True}

    c = TestClient(build_api(tiny_services, extra_routers=[extra]))
    assert c.get(f"{API}/learner/ping").json() == {"pong": True}


def test_generation_does_not_block_the_server(client, tiny_services):
    """A suggestion waiting on the model (here: on the generator lock) leaves other routes answering."""
    gen = tiny_services.generator
    gen.lock.acquire()
    box = {}
    t = threading.Thread(target=lambda: box.setdefault(
        "r", client.post(f"{API}/suggest", json={**FAST, "mode": "continue", "text": "Waiting.", "k": 1})))
    try:
        t.start()
        time.sleep(0.3)
        assert t.is_alive()  # the suggestion is stuck behind the lock...
        t0 = time.perf_counter()
        assert client.get(f"{API}/status").status_code == 200  # ...and status still answers
        assert time.perf_counter() - t0 < 5
    finally:
        gen.lock.release()
    t.join(timeout=60)
    assert box["r"].status_code == 200


# ----------------------------------------------------------------------------- bad input
BAD_SUGGEST = [
    ({"mode": "summarise", "text": "x"}, 422, "mode"),
    ({"mode": "continue", "text": ""}, 400, "non-empty text"),
    ({"mode": "continue", "text": "   "}, 400, "non-empty text"),
    ({"mode": "continue", "text": "x", "k": 0}, 422, "k"),
    ({"mode": "continue", "text": "x", "k": MAX_K + 1}, 422, "k"),
    ({"mode": "continue", "text": "x", "k": "three"}, 422, "k"),
    ({"mode": "continue", "text": "x" * (MAX_TEXT_CHARS + 1)}, 422, "text"),
    ({"mode": "continue", "text": "x", "temperature": -1}, 422, "temperature"),
    ({"mode": "continue", "text": "x", "top_p": 0}, 422, "top_p"),
    ({"mode": "continue", "text": "x", "max_new_tokens": 100_000}, 422, "max_new_tokens"),
    ({"mode": "continue", "text": "nul\x00byte"}, 400, "NUL"),
    ({"mode": "restyle", "text": "x", "style": "gothic"}, 400, "unknown style"),
    ({"mode": "restyle", "text": "x"}, 400, "sample"),
    ({"mode": "inspire", "text": ""}, 400, "keywords"),
    ({"mode": "inspire", "keywords": "sea", "inspire_kind": "poem"}, 422, "inspire_kind"),
    ({"mode": "continue", "text": "x", "profile": "p" * 65}, 422, "profile"),
    ({"mode": "continue", "text": "x", "colour": "blue"}, 422, "colour"),
    ({"text": "x"}, 422, "mode"),
]


@pytest.mark.parametrize("body, status, words", BAD_SUGGEST)
def test_bad_suggest_is_4xx_and_writes_nothing(client, tiny_services, body, status, words):
    before = _snapshot(tiny_services)
    r = client.post(f"{API}/suggest", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert _snapshot(tiny_services) == before


@pytest.mark.parametrize("raw, words", [
    (b'{"mode": "continue", "text": "\xff\xfe broken"}', "UTF-8"),
    (b"\xff", "UTF-8"),
    (b'{"mode": "continue", "text": "lone \\ud800 surrogate"}', "text"),
    (b'{"mode": "continue", ', "not valid JSON"),
    (b"[1, 2]", "object"),
])
def test_undecodable_body_is_4xx_not_500(client, tiny_services, raw, words):
    before = _snapshot(tiny_services)
    r = client.post(f"{API}/suggest", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert words in r.json()["error"]
    assert _snapshot(tiny_services) == before


def test_oversized_body_is_413(client, tiny_services):
    before = _snapshot(tiny_services)
    r = client.post(f"{API}/suggest", content=b'{"mode": "continue", "text": "' + b"x" * MAX_BODY_BYTES + b'"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["error"]
    assert _snapshot(tiny_services) == before


def test_bad_feedback_is_4xx_and_writes_nothing(client, tiny_services):
    a, b, _ = (s["id"] for s in _suggest(client, mode="continue", text="The storm came.", k=3)["suggestions"])
    foreign = _suggest(client, mode="continue", text="Another request.", k=1)["suggestions"][0]["id"]
    before = _snapshot(tiny_services)
    cases = [
        ({"suggestion_id": 99_999, "kind": "thumb", "value": 1}, 404, "does not exist"),
        ({"suggestion_id": a, "kind": "stars", "value": 7}, 400, "stars"),
        ({"suggestion_id": a, "kind": "stars", "value": 3.5}, 400, "stars"),
        ({"suggestion_id": a, "kind": "stars"}, 400, "stars"),
        ({"suggestion_id": a, "kind": "thumb", "value": 0}, 400, "thumb"),
        ({"suggestion_id": a, "kind": "like", "value": 1}, 422, "kind"),
        ({"suggestion_id": a, "kind": "rank", "ranking": [a, foreign]}, 400, "not suggestions of request"),
        ({"suggestion_id": a, "kind": "rank", "ranking": [a]}, 400, "at least two"),
        ({"suggestion_id": a, "kind": "edit", "edited_text": ""}, 400, "edited_text"),
        ({"suggestion_id": a, "kind": "edit", "edited_text": "x" * (MAX_TEXT_CHARS + 1)}, 422, "edited_text"),
        ({"suggestion_id": "abc", "kind": "thumb", "value": 1}, 422, "suggestion_id"),
        ({"kind": "thumb", "value": 1}, 422, "suggestion_id"),
    ]
    for body, status, words in cases:
        r = client.post(f"{API}/feedback", json=body)
        assert r.status_code == status, (body, r.text)
        assert words in r.json()["error"], (body, r.json())
    assert _snapshot(tiny_services) == before
    assert b  # the valid sibling is untouched


def test_other_bad_inputs(client, tiny_services):
    before = _snapshot(tiny_services)
    r = client.post(f"{API}/suggest", json={**FAST, "mode": "continue", "text": "x", "document_id": 77})
    assert r.status_code == 404 and "document 77 does not exist" in r.json()["error"]
    r = client.get(f"{API}/requests/424242")
    assert r.status_code == 404 and "request 424242 does not exist" in r.json()["error"]
    assert client.get(f"{API}/requests/abc").status_code == 422
    assert client.post(f"{API}/library", json={"text": ""}).status_code == 422
    assert client.post(f"{API}/library", json={"text": "   "}).status_code == 400
    assert client.get(f"{API}/library", params={"query": "x", "top_k": 0}).status_code == 422
    for reserved in ("formal", " formal ", "sample", "imitate"):
        r = client.post(f"{API}/styles", json={"name": reserved, "description": "mine"})
        assert r.status_code == 400 and "built-in" in r.json()["error"], (reserved, r.text)
    assert client.post(f"{API}/styles", json={"name": "noir", "description": ""}).status_code == 422
    assert client.post(f"{API}/styles", json={"name": "   ", "description": "d"}).status_code == 400
    assert client.get(f"{API}/nothing-here").status_code == 404
    assert _snapshot(tiny_services) == before
