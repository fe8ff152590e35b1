"""The fault campaign's fast subset (benchmarks/faults.py runs the full one with figures):
hostile input fuzzed from the OpenAPI schema, the access sweep, and a short mixed load."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import faults

pytestmark = pytest.mark.campaign


def test_fuzzing_every_route_finds_no_server_error(tmp_path, embedder):
    pytest.importorskip("schemathesis")
    rep = faults.fuzz(faults.tiny_services(tmp_path, embedder=embedder), target_cases=200, seed=1)
    assert rep.cases >= 200 and rep.operations >= 15
    assert rep.server_errors == []
    assert rep.no_message == []  # every rejection says why
    assert rep.wrote_when_rejected == []  # and wrote nothing
    assert rep.path_leaks == []
    assert rep.rejected > 50 and rep.by_status[200] > 20  # both kinds of cases really ran


def test_access_sweep_refuses_everything_and_changes_nothing(tmp_path, embedder):
    services = faults.tiny_services(tmp_path, embedder=embedder)
    faults.seed_data(services)
    rep = faults.access_sweep(services)
    assert rep.requests >= 60 and rep.let_through == [] and rep.refused == rep.requests
    assert not rep.changed
    assert rep.exposed_refused, rep.exposed_message


def test_short_mixed_load_loses_nothing_and_cheap_routes_stay_fast(tmp_path, embedder):
    import uvicorn

    from assistant.app.limits import GenerationGate, ServeLimits

    services = faults.tiny_services(tmp_path, embedder=embedder, generation_seconds=5)
    services.limits = ServeLimits(max_waiting=1, generation_seconds=5)
    services.gate = GenerationGate(services.limits)
    port = faults.free_port()
    server = uvicorn.Server(uvicorn.Config(faults.full_app(services), host="127.0.0.1", port=port,
                                           log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.02)
    try:
        rep = faults.load(8, 8.0, f"http://127.0.0.1:{port}", None, tmp_path, seed=2, max_new_tokens=128)
    finally:
        server.should_exit = True
        t.join(10)
    assert rep.errors == [] and rep.locked == 0
    assert rep.acked_feedback > 5 and rep.lost_feedback == 0 and rep.duplicated_feedback == 0
    assert rep.lost_requests == 0 and rep.lost_snippets == 0 and rep.integrity == "ok"
    assert rep.statuses[("suggest", 429)] > 0  # excess suggestions refused, not queued
    assert faults._pct(rep.busy_latencies["feedback"], 0.99) < 1.0
    assert faults._pct(rep.busy_latencies["status"], 0.99) < 1.0
