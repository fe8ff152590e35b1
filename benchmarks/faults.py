"""Hostile input, access and load against the request-facing server, with figures (issue 17).

1. Hostile input: every route of the OpenAPI schema fuzzed by schemathesis (positive and negative
   cases, in-process over ASGI, tiny model): 5xx count, rejections without a message, rejected
   requests that wrote something, answers naming an absolute path.
2. Access: cross-origin and wrong-Host requests to every state-changing route (403, nothing
   changed); `inkloop serve --host 0.0.0.0` without a token refuses to start.
3. Load: C clients x S seconds of mixed suggest / feedback / status / library calls against a live
   `inkloop serve` on 127.0.0.1 with the tiny model: requests served, lost writes, "database is
   locked", p50/p99 of each route (cheap routes counted while a suggestion was generating), 429s,
   file descriptors and RSS of the server before and after.

    PYTHONPATH=. python benchmarks/faults.py [--fuzz-cases 10000] [--clients 8] [--seconds 300]

Traffic goes to 127.0.0.1 only; every loop is bounded by a case count or a deadline.
tests/test_faults.py runs a small subset of each part in the normal suite.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

API = "/api/v1"


# ----------------------------------------------------------------------------- composition
def tiny_services(data_dir: Path, generation_seconds: float = 0.3, embedder=None):
    """Services over a fresh store in `data_dir`, the tiny random model and the bundled embedder."""
    from assistant.app.limits import ServeLimits
    from assistant.app.services import Services
    from assistant.lm.config import ModelSettings
    from assistant.lm.generate import Generator
    from assistant.lm.library import Library
    from assistant.lm.models import load_embedder
    from assistant.lm.tiny import build_tiny_lm
    from storage.store import Store

    store = Store(Path(data_dir) / "inkloop.db")
    model, tok = build_tiny_lm(seed=0)
    emb = embedder if embedder is not None else load_embedder(ModelSettings(device="cpu"))
    return Services(store, Generator(model, tok), Library(store, emb), model_name="tiny",
                    limits=ServeLimits(generation_seconds=generation_seconds))


def full_app(services, access=None):
    """The API as `serve` builds it (learning routes included), optionally behind the access guard."""
    from assistant.app.api.learning import learning_router
    from assistant.app.api.routes import build_api

    return build_api(services, extra_routers=[learning_router(services, services.store.path.parent)],
                     access=access)


def snapshot(services) -> tuple:
    """Everything a request could write: counts, ratings, styles, profiles, events, learner, live
    versions, exports."""
    from assistant.app.export import list_exports
    from storage.records import id_or_base

    st = services.store
    live = st.live_version(services.default_profile, "policy")
    return (tuple(sorted(st.counts().items())), tuple(sorted(st.feedback_counts_by_kind().items())),
            tuple(sorted(st.styles(services.default_profile).items())), tuple(st.profiles()), len(st.events(limit=10**6)),
            json.dumps(st.learner_state(services.default_profile), sort_keys=True, default=str),
            id_or_base(live), tuple(e["name"] for e in list_exports(st.path.parent)))


def seed_data(services) -> None:
    """A request with suggestions, a rating and a published version, so ids exist to hit."""
    from storage.artifacts import save_version

    st = services.store
    rec = st.record_request(profile_id="default", mode="continue", text="t", options={}, prompt="p",
                            policy_version=0, suggestions=["a", "b", "c"])
    st.add_feedback(rec.suggestions[0].id, "thumb", 1)
    save_version(st, st.path.parent, kind="policy", profile_id="default", writer=lambda d: None, publish=True)


# ----------------------------------------------------------------------------- 1. hostile input
@dataclass
class FuzzReport:
    cases: int = 0
    operations: int = 0
    by_status: collections.Counter = field(default_factory=collections.Counter)
    server_errors: list[str] = field(default_factory=list)
    no_message: list[str] = field(default_factory=list)
    wrote_when_rejected: list[str] = field(default_factory=list)
    path_leaks: list[str] = field(default_factory=list)
    nothing_to_negate: int = 0
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        return sum(n for s, n in self.by_status.items() if 400 <= s < 500)


def fuzz(services, target_cases: int, seed: int = 0, max_rounds: int = 60) -> FuzzReport:
    """Fuzz every operation of the schema until `target_cases` cases ran (or `max_rounds` rounds)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    seed_data(services)
    app = full_app(services)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = [r.ok() for r in schema.get_all_operations()]
    rep = FuzzReport(operations=len(ops))
    data_dir = str(services.store.path.parent)
    secrets = {data_dir, str(Path(data_dir).resolve()), str(Path.home()) + os.sep}
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    per = max(5, target_cases // (len(ops) * len(modes)))
    rng = random.Random(seed)
    t0 = time.perf_counter()
    for _ in range(max_rounds):
        if rep.cases >= target_cases:
            break
        for op in ops:
            for mode in modes:
                if rep.cases >= target_cases:
                    break

                @hseed(rng.randrange(2**32))
                @settings(max_examples=per, database=None, deadline=None, derandomize=False,
                          suppress_health_check=list(HealthCheck), phases=[Phase.generate])
                @given(case=op.as_strategy(generation_mode=mode))
                def run(case) -> None:
                    before = snapshot(services)
                    resp = case.call()
                    rep.cases += 1
                    rep.by_status[resp.status_code] += 1
                    label = f"{case.method} {case.formatted_path} {str(case.body)[:120]!r} -> {resp.status_code}"
                    text = resp.text or ""
                    if resp.status_code >= 500:
                        rep.server_errors.append(label + " " + text[:200])
                    elif resp.status_code >= 400:
                        try:
                            msg = json.loads(text).get("error")
                        except (ValueError, AttributeError):
                            msg = None
                        if not msg:
                            rep.no_message.append(label)
                        if snapshot(services) != before:
                            rep.wrote_when_rejected.append(label)
                    if any(s in text for s in secrets):
                        rep.path_leaks.append(label)

                try:
                    run()
                except Unsatisfiable:  # negative mode, an operation with nothing to negate (no inputs)
                    rep.nothing_to_negate += 1
                except Exception as e:  # noqa: BLE001 - a failed example is a finding, not a crash
                    rep.server_errors.append(f"{op.method} {op.path}: harness error {type(e).__name__}: {e}"[:300])
    rep.seconds = time.perf_counter() - t0
    return rep


# ----------------------------------------------------------------------------- 2. access
@dataclass
class AccessReport:
    requests: int = 0
    refused: int = 0
    let_through: list[str] = field(default_factory=list)
    changed: bool = False
    exposed_refused: bool = False
    exposed_message: str = ""


STATE_BODIES = {
    f"{API}/suggest": {"mode": "continue", "text": "Hello.", "k": 1, "max_new_tokens": 4},
    f"{API}/suggest/stream": {"mode": "continue", "text": "Hello.", "k": 1, "max_new_tokens": 4},
    f"{API}/feedback": {"suggestion_id": 1, "kind": "thumb", "value": 1},
    f"{API}/library": {"text": "a snippet"},
    f"{API}/styles": {"name": "noir", "description": "rain"},
    f"{API}/learner": {"action": "train_now"},
    f"{API}/export": {"what": "feedback"},
    f"{API}/versions/0/rollback": {},
}
"""A valid body for every state-changing route (as state_changing_routes names them), so that a
request the access guard let through would really change something (tests/test_access.py too)."""


def state_changing_routes(app) -> list[tuple[str, str]]:
    """Every POST/PUT/PATCH/DELETE route of the app's OpenAPI schema, ids filled in."""
    out = []
    for path, ops in app.openapi()["paths"].items():
        for m in ops:
            if m.upper() in ("POST", "PUT", "PATCH", "DELETE"):
                out.append((m.upper(), path.replace("{version_id}", "0").replace("{request_id}", "1")))
    return out


def access_sweep(services, port: int = 7860) -> AccessReport:
    from fastapi.testclient import TestClient

    from assistant.app.api.security import AccessSettings

    rep = AccessReport()
    app = full_app(services, AccessSettings(host="127.0.0.1", port=port))
    before = snapshot(services)
    attacks = [{"origin": o} for o in ("http://evil.example", f"http://127.0.0.1:{port + 1}", "null",
                                       f"http://localhost.evil.example:{port}")]
    attacks += [{"host": h} for h in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}",
                                      f"192.168.1.20:{port}")]
    attacks += [{"host": f"evil.example:{port}", "origin": f"http://evil.example:{port}"}]
    with TestClient(app, base_url=f"http://127.0.0.1:{port}") as c:
        for method, path in state_changing_routes(app):
            for headers in attacks:
                r = c.request(method, path, json=STATE_BODIES.get(path, {}), headers=headers)
                rep.requests += 1
                if r.status_code == 403:
                    rep.refused += 1
                else:
                    rep.let_through.append(f"{method} {path} {headers} -> {r.status_code}")
    rep.changed = snapshot(services) != before
    with tempfile.TemporaryDirectory() as d:
        env = {k: v for k, v in os.environ.items() if k != "INKLOOP_TOKEN"}
        p = subprocess.run([sys.executable, str(ROOT / "app.py"), "serve", "--host", "0.0.0.0", "--port",
                            str(free_port()), "--data-dir", d, "--no-learner"],
                           capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
        rep.exposed_refused = p.returncode == 2 and "token" in p.stderr
        rep.exposed_message = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
    return rep


# ----------------------------------------------------------------------------- 3. load
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class LoadReport:
    clients: int = 0
    seconds: float = 0.0
    served: collections.Counter = field(default_factory=collections.Counter)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    busy_latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    errors: list[str] = field(default_factory=list)
    locked: int = 0
    lost_feedback: int = 0
    duplicated_feedback: int = 0
    lost_requests: int = 0
    lost_snippets: int = 0
    acked_feedback: int = 0
    integrity: str = ""
    fds: tuple[int, int] = (0, 0)
    rss_mb: tuple[float, float] = (0.0, 0.0)
    server_log_locked: int = 0
    fds_max: int = 0
    rss_max_mb: float = 0.0
    trajectory: list[tuple[float, int, float]] = field(default_factory=list)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def start_server(data_dir: Path, model_dir: Path, port: int, log_path: Path, launcher: tuple[str, ...] = (),
                 extra_args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """`inkloop serve --api-only` on 127.0.0.1 (launcher: what runs instead of app.py, e.g. a probe
    that then calls app.main with the serve arguments)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    cmd = [sys.executable, *(launcher or [str(ROOT / "app.py")]), "serve", "--api-only", "--no-learner", "--host",
           "127.0.0.1", "--port", str(port), "--model", str(model_dir), "--data-dir", str(data_dir), "--device",
           "cpu", "--threads", "1", *extra_args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"), env=env, cwd=ROOT)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}{API}/status", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the server did not start in time")


def load(clients: int, seconds: float, base: str, pid: int | None, data_dir: Path, seed: int = 0,
         max_new_tokens: int = 256, retry_cap_s: float = 2.0) -> LoadReport:
    """`clients` threads of mixed calls for `seconds` against the server at `base` (pid: to watch)."""
    import httpx

    rep = LoadReport(clients=clients)
    lock = threading.Lock()
    suggestion_ids: list[int] = []
    acked_fb: list[int] = []
    acked_req: list[int] = []
    acked_snip: list[int] = []
    inflight = [0]
    with httpx.Client(base_url=base, timeout=60) as c:  # a first suggestion: ids to rate
        r = c.post(f"{API}/suggest", json={"mode": "continue", "text": "The rain had not stopped.", "k": 3,
                                           "max_new_tokens": 16, "seed": 1})
        r.raise_for_status()
        suggestion_ids += [s["id"] for s in r.json()["suggestions"]]
        acked_req.append(r.json()["request_id"])
    start = time.monotonic()
    deadline = start + seconds
    samples: list[tuple[float, int, float]] = []  # (t, fds, rss) of the server every second

    def monitor() -> None:
        while pid and time.monotonic() < deadline:
            try:
                samples.append((time.monotonic() - start, proc_fds(pid), proc_rss_mb(pid)))
            except OSError:
                return
            time.sleep(1.0)

    threading.Thread(target=monitor, daemon=True).start()
    words = ["lighthouse", "storm", "garden", "letter", "train", "winter", "harbour", "violin"]

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        with httpx.Client(base_url=base, timeout=60) as c:
            while time.monotonic() < deadline:
                op = rng.choices(["suggest", "feedback", "status", "library_add", "library_search"],
                                 weights=[3, 3, 2, 1, 1])[0]
                busy = inflight[0] > 0
                t0 = time.perf_counter()
                try:
                    if op == "suggest":
                        with lock:
                            inflight[0] += 1
                        try:
                            r = c.post(f"{API}/suggest", json={
                                "mode": rng.choice(["continue", "inspire"]), "text": "The door opened slowly.",
                                "keywords": rng.sample(words, 2), "k": rng.randint(1, 4),
                                "max_new_tokens": max_new_tokens, "temperature": 1.0})
                        finally:
                            with lock:
                                inflight[0] -= 1
                        if r.status_code == 200:
                            with lock:
                                suggestion_ids.extend(s["id"] for s in r.json()["suggestions"])
                                acked_req.append(r.json()["request_id"])
                        elif r.status_code == 429:  # a polite client waits as told (capped: keep the load up)
                            time.sleep(min(float(r.headers.get("retry-after", 1)), retry_cap_s,
                                           max(0.0, deadline - time.monotonic())))
                    elif op == "feedback":
                        with lock:
                            sid = rng.choice(suggestion_ids)
                        r = c.post(f"{API}/feedback", json={"suggestion_id": sid, "kind": "thumb",
                                                            "value": rng.choice([1, -1])})
                        if r.status_code == 200:
                            with lock:
                                acked_fb.append(r.json()["feedback_id"])
                    elif op == "status":
                        r = c.get(f"{API}/status")
                    elif op == "library_add":
                        r = c.post(f"{API}/library", json={"text": f"A note about the {rng.choice(words)} "
                                                                   f"number {rng.randrange(10**6)}."})
                        if r.status_code == 200:
                            with lock:
                                acked_snip.append(r.json()["id"])
                    else:
                        r = c.get(f"{API}/library", params={"query": rng.choice(words), "top_k": 3})
                except httpx.HTTPError as e:
                    with lock:
                        rep.errors.append(f"{op}: {type(e).__name__}: {e}")
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    rep.served[op] += 1
                    rep.statuses[(op, r.status_code)] += 1
                    rep.latencies[op].append(dt)
                    if busy or inflight[0] > 0:
                        rep.busy_latencies[op].append(dt)
                    if "database is locked" in r.text:
                        rep.locked += 1
                    if r.status_code >= 400 and not (op == "suggest" and r.status_code == 429):
                        rep.errors.append(f"{op} -> {r.status_code}: {r.text[:160]}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    rep.seconds = time.perf_counter() - t0
    if pid and samples:
        time.sleep(1.0)
        warm = [x for x in samples if x[0] >= 0.2 * seconds] or samples  # after the first fifth: warmed up
        rep.fds = (warm[0][1], proc_fds(pid))
        rep.rss_mb = (warm[0][2], proc_rss_mb(pid))
        rep.fds_max, rep.rss_max_mb = max(x[1] for x in samples), max(x[2] for x in samples)
        rep.trajectory = [min(samples, key=lambda x, f=f: abs(x[0] - f * seconds)) for f in (0.2, 0.4, 0.6, 0.8, 1.0)]
    # what was acknowledged is there, exactly once
    con = sqlite3.connect(f"file:{data_dir / 'inkloop.db'}?mode=ro", uri=True, timeout=30)
    try:
        fb = collections.Counter(r[0] for r in con.execute("select id from feedback"))
        rep.acked_feedback = len(acked_fb)
        rep.lost_feedback = sum(1 for f in acked_fb if fb[f] == 0)
        rep.duplicated_feedback = sum(1 for f in set(acked_fb) if acked_fb.count(f) > 1)
        reqs = {r[0] for r in con.execute("select id from requests")}
        rep.lost_requests = sum(1 for q in acked_req if q not in reqs)
        snips = {r[0] for r in con.execute("select id from library")}
        rep.lost_snippets = sum(1 for s in acked_snip if s not in snips)
        rep.integrity = con.execute("pragma integrity_check").fetchone()[0]
    finally:
        con.close()
    return rep


def live_load(clients: int, seconds: float, seed: int = 0, max_new_tokens: int = 256, before_stop=None,
              **server) -> LoadReport:
    """Start `inkloop serve` on 127.0.0.1 with the tiny model (`server`: start_server's launcher,
    extra_args, extra_env), run `load`, call before_stop(proc), stop it."""
    from assistant.lm.tiny import save_tiny_lm

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = save_tiny_lm(tmp / "tiny-lm")
        data_dir = tmp / "data"
        port = free_port()
        log_path = tmp / "server.log"
        proc = start_server(data_dir, model_dir, port, log_path, **server)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, proc)
            rep = load(clients, seconds, base, proc.pid, data_dir, seed, max_new_tokens)
            if before_stop is not None:
                before_stop(proc)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        rep.server_log_locked = log_path.read_text(errors="replace").count("database is locked")
        return rep


# ----------------------------------------------------------------------------- report
def print_fuzz(rep: FuzzReport) -> None:
    print("\n## Hostile input (schemathesis, every operation, positive + negative cases)\n")
    print("| operations | cases | 2xx | 4xx | 5xx | 4xx without message | rejected but wrote | path leaks | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    ok = sum(n for s, n in rep.by_status.items() if s < 400)
    print(f"| {rep.operations} | {rep.cases} | {ok} | {rep.rejected} | {len(rep.server_errors)} | "
          f"{len(rep.no_message)} | {len(rep.wrote_when_rejected)} | {len(rep.path_leaks)} | {rep.seconds:.0f} |")
    print("\nstatus codes: " + ", ".join(f"{s}: {n}" for s, n in sorted(rep.by_status.items())))
    for name, items in (("server errors", rep.server_errors), ("no message", rep.no_message),
                        ("rejected but wrote", rep.wrote_when_rejected), ("path leaks", rep.path_leaks)):
        for x in items[:5]:
            print(f"  {name}: {x}")


def print_access(rep: AccessReport) -> None:
    print("\n## Access (loopback bind: cross-origin and wrong-Host requests to every state-changing route)\n")
    print("| requests | 403 | let through | state changed | 0.0.0.0 without token refused |")
    print("|---|---|---|---|---|")
    print(f"| {rep.requests} | {rep.refused} | {len(rep.let_through)} | {'yes' if rep.changed else 'no'} | "
          f"{'yes' if rep.exposed_refused else 'NO'} |")
    for x in rep.let_through[:5]:
        print(f"  let through: {x}")
    if rep.exposed_message:
        print(f"  serve --host 0.0.0.0 said: {rep.exposed_message}")


def print_load(rep: LoadReport) -> None:
    print(f"\n## Load ({rep.clients} clients x {rep.seconds:.0f} s, live server on 127.0.0.1, tiny model)\n")
    print("| route | served | ok | 429 | p50 ms | p99 ms | p99 ms while generating |")
    print("|---|---|---|---|---|---|---|")
    for op in ("suggest", "feedback", "status", "library_add", "library_search"):
        ok = rep.statuses[(op, 200)]
        busy = rep.statuses[(op, 429)]
        lat = rep.latencies.get(op, [])
        print(f"| {op} | {rep.served[op]} | {ok} | {busy} | {_pct(lat, 0.5) * 1000:.0f} | {_pct(lat, 0.99) * 1000:.0f} | "
              f"{_pct(rep.busy_latencies.get(op, []), 0.99) * 1000:.0f} |")
    total = sum(rep.served.values())
    print(f"\nrequests served {total} ({total / max(rep.seconds, 1e-9):.1f}/s); acknowledged ratings "
          f"{rep.acked_feedback}, lost {rep.lost_feedback}, duplicated {rep.duplicated_feedback}; lost requests "
          f"{rep.lost_requests}, lost snippets {rep.lost_snippets}; 'database is locked' {rep.locked} in answers, "
          f"{rep.server_log_locked} in the server log; integrity_check {rep.integrity}; unexpected errors "
          f"{len(rep.errors)}")
    print(f"server file descriptors {rep.fds[0]} (after the first fifth) -> {rep.fds[1]} (end), max {rep.fds_max}; "
          f"RSS {rep.rss_mb[0]:.0f} MB -> {rep.rss_mb[1]:.0f} MB, max {rep.rss_max_mb:.0f} MB")
    if rep.trajectory:
        print("server over time: " + "; ".join(f"{t:.0f} s: {n} fds, {m:.0f} MB" for t, n, m in rep.trajectory))
    for x in rep.errors[:5]:
        print(f"  error: {x}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fuzz-cases", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--max-new-tokens", type=int, default=256, help="per load-test suggestion")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: fuzz,access,load")
    a = ap.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))
    import logging

    logging.basicConfig(level=logging.CRITICAL)  # the fuzzer's 4xx are expected; keep the table readable
    print(f"# inkloop fault campaign (cpu load average {os.getloadavg()[0]:.1f})")
    failed = False
    emb = None
    if "fuzz" not in skip or "access" not in skip:
        from assistant.lm.config import ModelSettings
        from assistant.lm.models import load_embedder

        emb = load_embedder(ModelSettings(device="cpu"))
    if "fuzz" not in skip:
        with tempfile.TemporaryDirectory() as d:
            rep = fuzz(tiny_services(Path(d), embedder=emb), a.fuzz_cases, a.seed)
        print_fuzz(rep)
        failed |= bool(rep.server_errors or rep.no_message or rep.wrote_when_rejected or rep.path_leaks)
    if "access" not in skip:
        with tempfile.TemporaryDirectory() as d:
            services = tiny_services(Path(d), embedder=emb)
            seed_data(services)
            rep = access_sweep(services)
        print_access(rep)
        failed |= bool(rep.let_through or rep.changed or not rep.exposed_refused)
    if "load" not in skip:
        rep = live_load(a.clients, a.seconds, a.seed, a.max_new_tokens)
        print_load(rep)
        failed |= bool(rep.lost_feedback or rep.lost_requests or rep.lost_snippets or rep.locked or rep.errors
                       or _pct(rep.busy_latencies.get("feedback", []), 0.99) > 1.0
                       or _pct(rep.busy_latencies.get("status", []), 0.99) > 1.0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
