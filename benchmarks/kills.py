"""Kill campaigns (issue 17): `kill -9` of the learner and of the server, with figures.

1. Learner: `inkloop learn` on the tiny model (saved to a directory, `--model PATH`, small
   settings: a cycle takes seconds) while a rater keeps adding ratings, killed N times: at named
   points inside publish, prune and the writing of a version (storage.killpoints: the process
   kills itself there, so the narrow windows are hit every time), in a chosen phase of its cycle
   (reward, recheck, rl, evaluate) after a random delay, and after a random delay from its start.
2. Server: `inkloop serve --api-only` killed N times while C clients suggest and rate.

After every kill, and at the end: `PRAGMA integrity_check` is ok; every acknowledged rating (the
learner's rater: add_feedback returned; the clients: HTTP 200) is there exactly once; every
published version loads (policy: adapter and value head onto the tiny model; reward: the reward
model) and so does the live one; after each restart, no learner candidate left from before it is
offered for rollback or export.

    PYTHONPATH=. python benchmarks/kills.py [--learner-kills 20] [--server-kills 20] [--clients 4]

The processes run `app.main(argv)`, forked from a forkserver that has imported the CLI's modules
(a fresh interpreter spends ~10 s on imports, a kill campaign would mostly wait for them);
`--subprocess` runs `python app.py ...` instead. tests/test_kills.py runs a few kills of each.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "benchmarks")) if p not in sys.path]
import faults  # its helpers: free_port, wait_ready

API = faults.API
PROFILE = "default"
LEARN_ARGS = ["--threads", "1", "--nice", "0", "--rl-steps", "1", "--rl-k", "2", "--rl-prompts-per-step", "2",
              "--rl-max-new-tokens", "8", "--eval-prompts", "3", "--eval-max-new-tokens", "8", "--agreement-drop",
              "1.0", "--max-length-corr", "1.01", "--max-kl", "1000", "--min-new-feedback", "1", "--poll-s", "0.5",
              "--keep-versions", "2", "--rm-ensemble", "2", "--no-publish-requires-gain", "--min-win-rate", "0"]
"""A cycle in a few seconds that publishes (loose guards, no publish gate) and prunes (keep 2) every time."""
KILL_POINTS = ("version.reward.written", "prune.reward.marked", "version.policy.written", "version.policy.recorded",
               "delete.policy.abandoned", "publish.policy.before", "publish.policy.done", "prune.policy.marking",
               "prune.policy.marked", "delete.policy.pruned")
"""storage.killpoints names, in the order a cycle passes them (delete.policy.abandoned: the
restart's clean-up of the candidate version.policy.recorded left)."""
PHASES = ("reward", "recheck", "rl", "evaluate")
PRELOAD = ["kills", "app", "assistant.app.cli.serve", "assistant.app.cli.learn", "assistant.app.cli.common",
           "assistant.app.services", "assistant.app.api.routes", "assistant.app.api.learning", "reward.loop.learner",
           "reward.rl.train", "reward.train", "assistant.lm.models", "assistant.lm.generate", "sentence_transformers",
           "peft", "uvicorn", "fastapi"]


# ----------------------------------------------------------------------------- processes
def _child(argv: list[str], log_path: str, env: dict[str, str | None]) -> None:
    """A forked `inkloop ARGV`: its own environment, output to `log_path`."""
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import app

    sys.exit(app.main(argv))


class Proc:
    """One `inkloop` process (a forked multiprocessing.Process or a Popen): poll(), wait(), kill9(), stop()."""

    def __init__(self, handle):
        self.h, self.pid = handle, handle.pid

    def poll(self) -> int | None:
        return self.h.poll() if isinstance(self.h, subprocess.Popen) else self.h.exitcode

    returncode = property(poll)

    def wait(self, timeout: float) -> int | None:
        if isinstance(self.h, subprocess.Popen):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.h.wait(timeout)
        else:
            self.h.join(timeout)
        return self.poll()

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.wait(30)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, then SIGKILL if it does not end in time."""
        if self.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            if self.wait(timeout) is None:
                self.kill9()
        return self.poll()


class Launcher:
    """Starts `inkloop` commands: forked from a preloaded forkserver, or as `python app.py` subprocesses."""

    def __init__(self, fork: bool = True):
        self.ctx = None
        if fork:
            import multiprocessing

            self.ctx = multiprocessing.get_context("forkserver")
            self.ctx.set_forkserver_preload(PRELOAD)

    def start(self, argv: list[str], log_path: Path, env: dict[str, str | None] | None = None) -> Proc:
        env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **(env or {})}
        if self.ctx is None:
            full = {k: v for k, v in {**os.environ, "PYTHONPATH": str(ROOT), **env}.items() if v is not None}
            with open(log_path, "ab") as log:
                return Proc(subprocess.Popen([sys.executable, str(ROOT / "app.py"), *argv], stdout=log,
                                             stderr=subprocess.STDOUT, env=full, cwd=ROOT))
        import kills  # the forkserver imports the child's function by this name

        p = self.ctx.Process(target=kills._child, args=(argv, str(log_path), env), daemon=False)
        p.start()
        return Proc(p)


# ----------------------------------------------------------------------------- what must hold
@dataclass
class Check:
    integrity: str = ""
    acked: int = 0
    missing: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    lost_requests: list[int] = field(default_factory=list)
    published: int = 0
    unloadable: list[str] = field(default_factory=list)
    live_loads: bool = True
    offered_stale: list[int] = field(default_factory=list)

    def faults(self) -> list[str]:
        out = [] if self.integrity == "ok" else [f"integrity_check: {self.integrity}"]
        out += [f"acknowledged rating {f} is missing" for f in self.missing[:5]]
        out += [f"rating of suggestion {s} is there more than once" for s in self.duplicated[:5]]
        out += [f"acknowledged request {q} is missing" for q in self.lost_requests[:5]]
        out += self.unloadable[:5] + ([] if self.live_loads else ["the live version does not load"])
        return out + [f"stale candidate {v} is offered for rollback or export" for v in self.offered_stale[:5]]

    @property
    def ok(self) -> bool:
        return not self.faults()

    def verdict(self) -> str:
        return "ok" if self.ok else "FAULT " + "; ".join(self.faults())


def _files(path: str) -> tuple:
    """A version directory's files and sizes (what a loaded version was; its files never change)."""
    return tuple(sorted((str(p), p.stat().st_size) for p in Path(path).rglob("*") if p.is_file()))


class Verifier:
    """Checks a data directory while no inkloop process writes to it (see the module docstring)."""

    def __init__(self, data_dir: Path, model_dir: Path, embedder):
        self.data_dir, self.model_dir, self.embedder = Path(data_dir), Path(model_dir), embedder
        self._loaded: set[tuple] = set()  # (version id, its files) that loaded

    def _loads(self, store, v) -> str | None:
        """None when version `v` loads, else why not."""
        key = (v.id, _files(v.path))
        if key in self._loaded:
            return None
        try:
            if v.kind == "policy":
                from transformers import AutoModelForCausalLM

                from reward.rl.policy import Policy

                Policy.load(AutoModelForCausalLM.from_pretrained(str(self.model_dir)), None, v.path)
            else:
                from reward.model import load_reward_model

                load_reward_model(v.path, self.embedder, store)
        except Exception as e:  # noqa: BLE001 - a version that fails to load is the finding
            return f"published {v.kind} version {v.id} ({v.rel_path}) does not load: {type(e).__name__}: {e}"[:300]
        self._loaded.add(key)
        return None

    @property
    def versions_loaded(self) -> int:
        return len({k[0] for k in self._loaded})

    def stale_offered(self, started: float) -> list[int]:
        """Learner candidates made before a restart at `started` that are still offered for rollback
        or export (call it once the restart's start-up clean-up has run, before its first cycle)."""
        from assistant.app.export import ExportError, resolve_version
        from storage import artifacts
        from storage.store import Store

        store = Store(self.data_dir / "inkloop.db")
        try:
            offered, out = {v.id for v in artifacts.rollback_targets(store, PROFILE)}, []
            for v in store.versions(PROFILE, "policy"):
                if v.status == "candidate" and v.created_at < started and v.config.get("created_by") == "learner":
                    with contextlib.suppress(ExportError):
                        resolve_version(store, PROFILE, "policy", v.id)
                        offered.add(v.id)  # exportable
                    if v.id in offered:
                        out.append(v.id)
            return out
        finally:
            store.close()

    def check(self, acked: dict[int, int], requests: list[int] = ()) -> Check:
        """acked: feedback id -> suggestion id (each suggestion is rated once); requests: acknowledged
        request ids."""
        from storage.store import Store

        c = Check(acked=len(acked))
        con = sqlite3.connect(str(self.data_dir / "inkloop.db"), timeout=60)
        try:
            c.integrity = con.execute("pragma integrity_check").fetchone()[0]
            rows = dict(con.execute("select id, suggestion_id from feedback").fetchall())
            per = collections.Counter(r[0] for r in con.execute("select suggestion_id from feedback"))
            have = {r[0] for r in con.execute("select id from requests")}
        finally:
            con.close()
        c.missing = [f for f, s in acked.items() if rows.get(f) != s]
        c.duplicated = sorted({s for s in acked.values() if per[s] > 1})
        c.lost_requests = [q for q in requests if q not in have]
        store = Store(self.data_dir / "inkloop.db")
        try:
            for kind in ("policy", "reward"):
                live = store.live_version(PROFILE, kind)
                for v in store.published_versions(PROFILE, kind):
                    c.published += 1
                    if why := self._loads(store, v):
                        c.unloadable.append(why)
                        c.live_loads &= live is None or v.id != live.id
        finally:
            store.close()
        return c


# ----------------------------------------------------------------------------- 1. the learner
@dataclass
class KillReport:
    what: str
    kills: int = 0
    survived: int = 0
    by_how: collections.Counter = field(default_factory=collections.Counter)
    not_reached: list[str] = field(default_factory=list)
    served: int = 0
    acked: int = 0
    present: int = 0
    write_errors: list[str] = field(default_factory=list)
    published: int = 0
    cycles_done: int = 0
    faults: list[str] = field(default_factory=list)
    seconds: float = 0.0
    acked_ids: dict[int, int] = field(default_factory=dict)
    acked_earlier: int = 0


class Rater(threading.Thread):
    """Adds a rated request every `every_s` through the Store, as the app would: acknowledged ratings."""

    def __init__(self, data_dir: Path, every_s: float = 1.0, seed: int = 0):
        super().__init__(daemon=True)
        from storage.store import Store

        self.store, self.every_s, self.rng = Store(Path(data_dir) / "inkloop.db"), every_s, random.Random(seed)
        self.acked: dict[int, int] = {}
        self.errors: list[str] = []
        self.halt = threading.Event()
        self.n = 0

    def rate_one(self) -> None:
        self.n += 1
        t = f"The rain had not stopped for {self.n} days, and the river {self.rng.choice(['rose', 'fell', 'waited'])}."
        req = self.store.record_request(profile_id=PROFILE, mode="continue", text=t, options={}, policy_version=0,
                                        prompt=f"<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n",
                                        suggestions=[f"a long and vivid reply, number {self.n}", f"meh {self.n}"])
        for s, v in zip(req.suggestions, (1, -1)):
            self.acked[self.store.add_feedback(s.id, "thumb", v, source="ui")] = s.id

    def run(self) -> None:
        while not self.halt.wait(self.every_s):
            try:
                self.rate_one()
            except Exception as e:  # noqa: BLE001 - a failed rating is a finding, not a crash
                self.errors.append(f"{type(e).__name__}: {e}"[:200])

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        self.store.close()


def _learner_plan(kills: int, rng: random.Random) -> list[tuple[str, str, float]]:
    """(how, point or phase, delay): every kill point once (the abandoned candidate's clean-up right
    after the kill that leaves one), then phases and random delays."""
    plan = [("point", p, 0.0) for p in KILL_POINTS]
    rest = [("phase", rng.choice(PHASES), rng.uniform(0, 1.5)) if i % 2 == 0 else ("random", "", rng.uniform(2, 14))
            for i in range(max(0, kills - len(plan)))]
    return (plan + rest)[:kills] if kills >= len(plan) else [plan[i] for i in sorted(rng.sample(range(len(plan)), kills))]


def _wait_state(store, pred, proc: Proc, timeout: float) -> bool:
    """Poll the learner's state until pred(state) holds; False when the process died or time ran out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if pred(store.learner_state(PROFILE) or {}):
            return True
        time.sleep(0.02)
    return False


def learner_campaign(kills: int, data_dir: Path, model_dir: Path, launcher: Launcher, verifier: Verifier,
                     seed: int = 0, plan: list[tuple[str, str, float]] | None = None, extra_args: tuple[str, ...] = (),
                     say=print) -> KillReport:
    """`kills` kills of `inkloop learn` (by `plan`, default _learner_plan), then a final restart."""
    from storage.killpoints import KILL_AT_ENV
    from storage.store import Store

    rep = KillReport("learner")
    rng = random.Random(seed)
    plan = plan if plan is not None else _learner_plan(kills, rng)
    rater = Rater(data_dir, seed=seed)
    for _ in range(8):
        rater.rate_one()  # something to learn from at once
    rater.start()
    store = Store(data_dir / "inkloop.db")
    log = data_dir / "learner-campaign.log"
    t_start = time.perf_counter()
    try:
        for i, (how, what, delay) in enumerate([*plan, ("final", "", 0.0)]):
            started = time.time()
            proc = launcher.start(["learn", "--data-dir", str(data_dir), "--model", str(model_dir), *LEARN_ARGS,
                                   *extra_args],
                                  log, {KILL_AT_ENV: what if how == "point" else None})
            up = _wait_state(store, lambda s, t=started: (s.get("heartbeat") or 0) > t and s.get("phase") != "stopped",
                             proc, 120)
            # its start-up clean-up has run, its first cycle has not pruned anything yet
            stale = verifier.stale_offered(started) if up else []
            if how == "final":
                proc.stop()
            elif how == "point":
                rc = proc.wait(150)  # it kills itself there
                if rc != -signal.SIGKILL:
                    rep.not_reached.append(f"{what} (exit {rc})")
                    proc.kill9()
            elif how == "phase":
                if not _wait_state(store, lambda s, w=what: s.get("phase") == w, proc, 120):
                    rep.not_reached.append(f"phase {what}")
                time.sleep(delay)
                proc.kill9()
            else:
                time.sleep(max(0.0, delay - (time.time() - started)))
                proc.kill9()
            if how != "final":
                rep.kills += 1
                rep.by_how[how] += 1
            c = verifier.check(dict(rater.acked))
            c.offered_stale = stale
            rep.survived += c.ok and how != "final"
            rep.faults += [f"after kill {i + 1} ({how} {what}): {x}" for x in c.faults()]
            rep.published = verifier.versions_loaded
            say(f"  learner kill {i + 1}/{len(plan)} {how} {what} {delay:.1f}s: {c.verdict()}" if how != "final"
                else f"  final restart: {c.verdict()}")
    finally:
        rater.stop()
        rep.cycles_done = int((store.learner_state(PROFILE) or {}).get("metrics", {}).get("learner/cycles", 0))
        store.close()
    rep.acked_ids = dict(rater.acked)
    c = verifier.check(rep.acked_ids)
    rep.acked, rep.present = c.acked, c.acked - len(c.missing)
    rep.write_errors = rater.errors
    rep.seconds = time.perf_counter() - t_start
    return rep


# ----------------------------------------------------------------------------- 2. the server
class Client(threading.Thread):
    """Suggests, then rates each suggestion once (so a rating twice would show); rides out the kills."""

    def __init__(self, base: str, i: int, halt: threading.Event, seed: int = 0):
        super().__init__(daemon=True)
        self.base, self.halt, self.rng = base, halt, random.Random(seed * 100 + i)
        self.acked: dict[int, int] = {}
        self.requests: list[int] = []
        self.served = 0
        self.errors: list[str] = []

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.base, timeout=30) as c:
            while not self.halt.is_set():
                try:
                    r = c.post(f"{API}/suggest", json={"mode": "continue", "k": 2, "max_new_tokens": 12,
                                                       "text": f"The door opened slowly {self.rng.randrange(10**6)}."})
                    self._served(r)
                    if r.status_code != 200:
                        continue
                    self.requests.append(r.json()["request_id"])
                    for s in r.json()["suggestions"]:
                        body = {"suggestion_id": s["id"], "kind": "stars", "value": self.rng.randint(1, 5)}
                        r = c.post(f"{API}/feedback", json=body)
                        self._served(r)
                        if r.status_code == 200:
                            self.acked[r.json()["feedback_id"]] = s["id"]
                except httpx.HTTPError:  # the server is being killed or restarted
                    time.sleep(0.1)

    def _served(self, r) -> None:
        self.served += 1
        if r.status_code not in (200, 429):
            self.errors.append(f"{r.request.url.path} -> {r.status_code}: {r.text[:120]}")
        elif r.status_code == 429:
            time.sleep(min(1.0, float(r.headers.get("retry-after", 1))))


def server_campaign(kills: int, data_dir: Path, model_dir: Path, launcher: Launcher, verifier: Verifier,
                    clients: int = 4, seed: int = 0, acked_before: dict[int, int] | None = None,
                    say=print) -> KillReport:
    """`kills` kills of `inkloop serve` under `clients` clients, then a final restart.
    acked_before: ratings acknowledged earlier on this data (checked too)."""
    rep = KillReport("server", acked_earlier=len(acked_before or {}))
    rng = random.Random(seed + 1)
    port = faults.free_port()
    base = f"http://127.0.0.1:{port}"
    argv = ["serve", "--api-only", "--no-learner", "--no-fast-path", "--host", "127.0.0.1", "--port", str(port),
            "--model", str(model_dir), "--data-dir", str(data_dir), "--device", "cpu", "--threads", "1"]
    log = data_dir / "server-campaign.log"
    halt = threading.Event()
    workers = [Client(base, i, halt, seed) for i in range(clients)]
    t_start = time.perf_counter()

    def acked() -> dict[int, int]:
        return {**(acked_before or {}), **{f: s for w in workers for f, s in list(w.acked.items())}}

    def requests() -> list[int]:
        return [q for w in workers for q in list(w.requests)]

    try:
        for w in workers:
            w.start()
        for i in range(kills + 1):
            proc = launcher.start(argv, log)
            faults.wait_ready(base, proc, timeout=180)
            if i == kills:  # the final restart: it came up on what the kills left
                served, end = sum(w.served for w in workers), time.monotonic() + 60
                while sum(w.served for w in workers) < served + 2 * clients and time.monotonic() < end:
                    time.sleep(0.1)
                halt.set()
                for w in workers:
                    w.join(60)
                proc.stop()
            else:
                time.sleep(rng.uniform(0.5, 4.0))
                proc.kill9()
                rep.kills += 1
            c = verifier.check(acked(), requests())
            rep.survived += c.ok and i < kills
            rep.faults += [f"after kill {i + 1}: {x}" for x in c.faults()]
            rep.published = verifier.versions_loaded
            say(f"  server kill {i + 1}/{kills}: {c.verdict()}" if i < kills else f"  final restart: {c.verdict()}")
    finally:
        halt.set()
    rep.acked_ids = acked()
    c = verifier.check(rep.acked_ids, requests())
    rep.acked, rep.present = c.acked, c.acked - len(c.missing)
    rep.served = sum(w.served for w in workers)
    rep.write_errors = [e for w in workers for e in w.errors]
    rep.by_how["requests acknowledged"] = len(requests())
    rep.seconds = time.perf_counter() - t_start
    return rep


# ----------------------------------------------------------------------------- report
def print_report(rep: KillReport) -> None:
    print(f"\n## kill -9 of the {rep.what} ({rep.seconds:.0f} s)\n")
    print("| kills | survived | ratings acknowledged | present once | requests served | published versions "
          "loaded | write errors | faults |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {rep.kills} | {rep.survived} | {rep.acked} | {rep.present} | {rep.served or '-'} | {rep.published} | "
          f"{len(rep.write_errors)} | {len(rep.faults)} |")
    print("\nkills: " + ", ".join(f"{k} {n}" for k, n in sorted(rep.by_how.items())) +
          (f"; of the acknowledged ratings {rep.acked_earlier} came before this campaign" if rep.acked_earlier else "") +
          (f"; learner cycles completed {rep.cycles_done}" if rep.what == "learner" else ""))
    for x in rep.not_reached:
        print(f"  not reached: {x}")
    for x in rep.faults[:10] + rep.write_errors[:5]:
        print(f"  fault: {x}")


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--learner-kills", type=int, default=20)
    ap.add_argument("--server-kills", type=int, default=20)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subprocess", action="store_true", help="run `python app.py` processes instead of forking")
    ap.add_argument("--keep", default=None, help="keep the data directory here (default: a temporary one)")
    a = ap.parse_args(argv)
    from assistant.lm.config import ModelSettings
    from assistant.lm.models import load_embedder
    from assistant.lm.tiny import save_tiny_lm

    print(f"# inkloop kill campaign (cpu load average {os.getloadavg()[0]:.1f})")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.keep) if a.keep else Path(tmp)
        model_dir = save_tiny_lm(root / "tiny-lm")
        data_dir = root / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        verifier = Verifier(data_dir, model_dir, load_embedder(ModelSettings(device="cpu")))
        launcher = Launcher(fork=not a.subprocess)
        reps = []
        if a.learner_kills:
            reps.append(learner_campaign(a.learner_kills, data_dir, model_dir, launcher, verifier, a.seed))
            print_report(reps[-1])
        if a.server_kills:  # on the same data: the server serves what the learner published
            before = reps[0].acked_ids if reps else None
            reps.append(server_campaign(a.server_kills, data_dir, model_dir, launcher, verifier, a.clients, a.seed,
                                        acked_before=before))
            print_report(reps[-1])
    return 1 if any(r.faults or r.write_errors or r.survived < r.kills for r in reps) else 0


if __name__ == "__main__":
    sys.exit(main())
