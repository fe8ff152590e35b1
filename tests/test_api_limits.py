"""Bounded input and bounded generation (issue 17, item 3): every field bounded, ids to int64, a
streaming body limit, a bounded generation queue (429 + Retry-After), a per-request time limit,
a dropped stream stops its generation, and cheap routes answer while the model works."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from assistant.app.api.routes import MAX_BODY_BYTES, build_api
from assistant.app.limits import GenerationGate, ServeLimits
from assistant.lm.config import MAX_KEYWORD_CHARS, MAX_KEYWORDS

API = "/api/v1"
FAST = {"max_new_tokens": 8, "seed": 1}
BIG = 2**63


def _snapshot(services) -> tuple:
    st = services.store
    return st.counts(), st.feedback_counts_by_kind(), st.styles("default"), st.profiles(), len(st.events())


def _app(services, **limits):
    if limits:
        services.limits = ServeLimits(**limits)
        services.gate = GenerationGate(services.limits)
    from assistant.app.api.learning import learning_router

    return build_api(services, extra_routers=[learning_router(services, services.store.path.parent)])


@pytest.fixture
def client(tiny_services):
    with TestClient(_app(tiny_services)) as c:
        yield c


def _slow_forward(model, seconds: float):
    """Make every decoding step take `seconds` (a stand-in for a big model on a slow CPU)."""
    orig = model.forward

    def forward(*a, **kw):
        time.sleep(seconds)
        return orig(*a, **kw)

    model.forward = forward


# ----------------------------------------------------------------------------- bounded fields
@pytest.mark.parametrize("body, words", [
    ({"mode": "inspire", "keywords": ["w"] * 100_000}, "keywords"),
    ({"mode": "inspire", "keywords": ["w"] * (MAX_KEYWORDS + 1)}, "keywords"),
    ({"mode": "inspire", "keywords": ["x" * (MAX_KEYWORD_CHARS + 1)]}, "keywords"),
    ({"mode": "inspire", "keywords": ",".join(["w"] * 100_000)}, "keywords"),
    ({"mode": "inspire", "keywords": ",".join(["w"] * (MAX_KEYWORDS + 1))}, "keywords"),
    ({"mode": "inspire", "keywords": "x" * (MAX_KEYWORD_CHARS + 1)}, "keyword"),
    ({"mode": "continue", "text": "x", "document_id": BIG}, "document_id"),
    ({"mode": "continue", "text": "x", "document_id": 0}, "document_id"),
    ({"mode": "continue", "text": "x", "seed": BIG}, "seed"),
    ({"mode": "continue", "text": "x", "temperature": float("nan")}, "temperature"),
])
def test_unbounded_suggest_fields_are_4xx_and_write_nothing(client, tiny_services, body, words):
    before = _snapshot(tiny_services)
    r = client.post(f"{API}/suggest", content=json.dumps({**FAST, **body}), headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert words in r.json()["error"]
    assert _snapshot(tiny_services) == before


def test_ids_past_int64_are_4xx_not_500(client, tiny_services):
    before = _snapshot(tiny_services)
    for method, url, body in [
        ("GET", f"{API}/requests/{BIG}", None),
        ("GET", f"{API}/requests/{10**30}", None),
        ("GET", f"{API}/requests/-1", None),
        ("POST", f"{API}/versions/{BIG}/rollback", {}),
        ("POST", f"{API}/versions/{10**30}/rollback", None),
        ("POST", f"{API}/feedback", {"suggestion_id": BIG, "kind": "thumb", "value": 1}),
        ("POST", f"{API}/feedback", {"suggestion_id": 1, "kind": "rank", "ranking": [1, BIG]}),
        ("POST", f"{API}/feedback", {"suggestion_id": 1, "kind": "accept", "value": 1e308}),
        ("POST", f"{API}/export", {"what": "adapter", "version": BIG}),
        ("GET", f"{API}/metrics/rm/accuracy?version={BIG}", None),
    ]:
        r = client.request(method, url, json=body)
        assert 400 <= r.status_code < 500, (url, body, r.status_code, r.text)
        assert r.json()["error"], (url, r.text)
    assert _snapshot(tiny_services) == before


def test_chunked_body_over_the_limit_is_413_and_writes_nothing(client, tiny_services):
    before = _snapshot(tiny_services)

    def chunks():  # no Content-Length: only counting the bytes as they arrive can stop it
        yield b'{"mode": "continue", "text": "'
        for _ in range(MAX_BODY_BYTES // 50_000 + 2):
            yield b"x" * 50_000
        yield b'"}'

    r = client.post(f"{API}/suggest", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["error"]
    r = client.post(f"{API}/library", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert _snapshot(tiny_services) == before


# ----------------------------------------------------------------------------- bounded generation
def test_sample_stops_when_told(tiny_lm):
    from assistant.lm.config import GenerationSettings
    from assistant.lm.generate import sample

    model, tok = tiny_lm
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= 5

    gen = GenerationSettings(max_new_tokens=200, temperature=1.0, min_new_tokens=1)
    out = sample(model, tok, ["once upon a time", "the sea"], gen, should_stop=stop)
    assert out.tokens.shape[1] <= 6 and not any(out.finished)


def test_a_full_queue_answers_429_with_retry_after_and_cheap_routes_keep_answering(tiny_services):
    app = _app(tiny_services, max_waiting=2, retry_after_seconds=7)
    gen = tiny_services.generator
    with TestClient(app) as c:
        sid = c.post(f"{API}/suggest", json={**FAST, "mode": "continue", "text": "A.", "k": 1}).json()["suggestions"][0]["id"]
        gen.lock.acquire()  # the model is "busy": admitted requests wait
        results: list[httpx.Response] = []
        body = {**FAST, "mode": "continue", "text": "Waiting.", "k": 1}
        threads = [threading.Thread(target=lambda: results.append(c.post(f"{API}/suggest", json=body)))
                   for _ in range(20)]
        try:
            for t in threads:
                t.start()
            deadline = time.time() + 10
            while sum(r.status_code == 429 for r in results) < 17 and time.time() < deadline:
                time.sleep(0.05)
            refused = [r for r in results if r.status_code == 429]
            assert len(refused) == 17  # 1 running + 2 waiting admitted, the rest refused at once
            assert all(r.headers["retry-after"] == "7" and "busy" in r.json()["error"] for r in refused)
            t0 = time.perf_counter()  # the threadpool is not starved: cheap routes answer at once
            for _ in range(10):
                assert c.get(f"{API}/status").status_code == 200
                assert c.post(f"{API}/feedback", json={"suggestion_id": sid, "kind": "thumb", "value": 1}).status_code == 200
            assert time.perf_counter() - t0 < 5
        finally:
            gen.lock.release()
        for t in threads:
            t.join(timeout=60)
        assert sorted(r.status_code for r in results) == [200] * 3 + [429] * 17
        assert tiny_services.gate.admitted == 0
        assert tiny_services.store.counts()["requests"] == 4  # the first + the 3 admitted; refused wrote nothing


def test_generation_stops_at_its_time_limit(tiny_services):
    _slow_forward(tiny_services.generator.model, 0.02)  # 512 tokens would take > 10 s
    with TestClient(_app(tiny_services, generation_seconds=0.5)) as c:
        t0 = time.perf_counter()
        r = c.post(f"{API}/suggest", json={"mode": "inspire", "keywords": ["sea"], "k": 2, "max_new_tokens": 512,
                                           "temperature": 1.5, "seed": 3})
        took = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    assert took < 4, took
    assert tiny_services.store.get_request(r.json()["request_id"])  # what it wrote in time is recorded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(tiny_services):
    """The app on a real uvicorn at 127.0.0.1 (disconnects are only real there)."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(_app(tiny_services), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    t.join(timeout=10)


def test_a_dropped_stream_stops_its_generation_and_records_nothing(tiny_services, live_server):
    _slow_forward(tiny_services.generator.model, 0.03)  # the whole answer would take > 30 s
    before = _snapshot(tiny_services)
    body = {"mode": "inspire", "keywords": ["sea"], "k": 2, "max_new_tokens": 512, "temperature": 1.5, "seed": 3}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{live_server}{API}/suggest/stream", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert json.loads(next(lines))["done"] is False
            assert json.loads(next(lines))["done"] is False
        t0 = time.perf_counter()  # the client left
        while tiny_services.gate.admitted and time.perf_counter() - t0 < 10:
            time.sleep(0.05)
        assert tiny_services.gate.admitted == 0, "generation went on after the client left"
        assert time.perf_counter() - t0 < 5
        assert tiny_services.generator.lock.acquire(timeout=1)
        tiny_services.generator.lock.release()
        assert _snapshot(tiny_services) == before
        assert http.get(f"{live_server}{API}/status").status_code == 200


def test_the_ui_says_busy_when_the_queue_is_full(tiny_services):
    import gradio as gr

    from assistant.app.services import SuggestRequest
    from assistant.app.ui.handlers import run_suggest

    tiny_services.gate = GenerationGate(ServeLimits(max_waiting=0))
    ticket = tiny_services.gate.admit()  # someone else is generating
    before = _snapshot(tiny_services)
    try:
        with pytest.raises(gr.Error, match="busy"):
            list(run_suggest(tiny_services, SuggestRequest(mode="continue", text="Hello.", k=1, max_new_tokens=4), ""))
    finally:
        ticket.release()
    assert _snapshot(tiny_services) == before
    assert list(run_suggest(tiny_services, SuggestRequest(mode="continue", text="Hello.", k=1, max_new_tokens=4), ""))


def test_bad_input_is_answered_at_once_even_while_the_model_is_busy(client, tiny_services):
    gen = tiny_services.generator
    gen.lock.acquire()
    try:
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("r", client.post(
            f"{API}/suggest", json={**FAST, "mode": "continue", "text": "Busy.", "k": 1})))
        t.start()
        time.sleep(0.3)
        t0 = time.perf_counter()
        r = client.post(f"{API}/suggest", json={"mode": "continue", "text": "   "})
        assert r.status_code == 400 and time.perf_counter() - t0 < 3  # not queued behind the model
        with client.stream("POST", f"{API}/suggest/stream", json={"mode": "restyle", "text": "x"}) as r:
            assert r.status_code == 400
    finally:
        gen.lock.release()
    t.join(30)
    assert box["r"].status_code == 200


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-9])
def test_a_vanishing_temperature_is_greedy_not_a_crash(client, tiny_services, temperature):
    """Found by benchmarks/faults.py: logits / 1e-300 overflow to inf and sampling raised (500)."""
    r = client.post(f"{API}/suggest", json={**FAST, "mode": "continue", "text": "The sea.", "k": 2,
                                            "temperature": temperature})
    assert r.status_code == 200, r.text
