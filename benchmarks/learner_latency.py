"""Suggestion latency with the learner idle vs while it trains, side by side in one run.

The app process (this script) serves suggestions with the Generator; the learner runs as
`inkloop learn --train-now` in its own process, exactly as `inkloop serve` starts it (niced, one
torch thread). Once it is in its RL phase, reps alternate: one with the learner frozen (SIGSTOP),
one with it running, so outside load (other programs) hits both columns alike. Target: latency
while learning <= 1.5x idle.

    PYTHONPATH=. python benchmarks/learner_latency.py [--model DIR] [--reps 5] [--k 3]
        [--max-new-tokens 32] [--uncapped] [--window-s 60]

Then requests come back to back for --window-s seconds (the learner yielding as serve runs it),
and the learner's CPU-seconds in that window are set against an equal window with no requests:
how much of its time a person who keeps asking leaves it (it waits at most Hold.max_wait_s at
each safe point, so it is slowed, never stopped).

--uncapped adds a third column: the learner with no nice and the default torch threads, to show
what the caps buy. The CPU load average is printed: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.latency import loadavg  # noqa: E402 - after the path set-up

DRAFTS = [
    "The rain had not stopped for three days, and the river was rising.",
    "She opened the letter slowly, afraid of what it might say.",
    "The old lighthouse keeper climbed the stairs one last time.",
    "Nobody in the village remembered who had planted the orchard.",
    "The train was late again, and Maria had run out of patience.",
    "At the edge of the forest, the path split in two.",
    "He found the key under a loose stone by the gate.",
    "The storm arrived at midnight, bright and loud.",
]


def seed_feedback(services, n: int) -> None:
    """Stored requests with ratings (long, complete replies preferred), so the learner has work."""
    from assistant.lm.prompts import build_prompt, render

    store, tok = services.store, services.generator.tokenizer
    for i in range(n):
        d = DRAFTS[i % len(DRAFTS)]
        req = store.record_request(
            profile_id="default", mode="continue", text=d, options={}, prompt=render(build_prompt("continue", d, {}), tok),
            policy_version=0, suggestions=[f"It was late, and slowly the light came back over the hills ({i}).",
                                           "ok.", f"Something happened ({i})."])
        a, b, c = req.suggestions
        store.add_feedback(a.id, "thumb", 1)
        store.add_feedback(b.id, "thumb", -1)
        store.add_feedback(a.id, "rank", ranking=[a.id, c.id, b.id])


def measure(services, reps: int, k: int, max_new_tokens: int, offset: int = 0) -> list[float]:
    from assistant.app.services import SuggestRequest

    out = []
    for i in range(offset, offset + reps):
        req = SuggestRequest(mode="continue", text=DRAFTS[i % len(DRAFTS)], k=k, max_new_tokens=max_new_tokens, seed=i)
        t0 = time.perf_counter()
        services.suggest(req)
        out.append(time.perf_counter() - t0)
    return out


def learner_busy(store) -> str | None:
    st = store.learner_state("default") or {}
    return st.get("phase") if st.get("phase") in ("reward", "recheck", "rl", "evaluate", "publish") else None


def run_with_learner(services, args, data_dir: Path, capped: bool):
    """Start the learner; once it trains, cycle through the same request with the learner frozen
    by hand (SIGSTOP: the "idle" figure), with it running, and with it running but paused during
    generation as `inkloop serve` does (the Generator's busy hook, LearnerSupervisor.busy), so all see the same outside
    load. Returns (idle, learning, learning with yield, learner phases seen)."""
    import signal

    from assistant.app.supervisor import LearnerSupervisor

    extra = ["--train-now", "--min-new-feedback", "1", "--rl-steps", "50", "--rl-max-new-tokens", "32",
             "--poll-s", "0.5", "--threads", "1" if capped else str(os.cpu_count() or 2),
             "--nice", "10" if capped else "0"]
    argv = LearnerSupervisor.learn_argv(data_dir, args.model, "default", extra)
    sup = LearnerSupervisor(argv, data_dir, store=services.store, log_path=data_dir / "learner.log")
    services.store.set_learner_state("default", phase="idle", command=None)
    sup.start()
    try:
        deadline = time.time() + 900
        while learner_busy(services.store) not in ("rl",) and time.time() < deadline:
            time.sleep(0.5)  # model loading and the reward model come first; measure during RL
        if learner_busy(services.store) is None:
            raise RuntimeError(f"the learner never started training; see {data_dir / 'learner.log'}")
        idle, busy, yielded, phases = [], [], [], []
        for i in range(args.reps):
            pid = sup.proc.pid
            os.kill(pid, signal.SIGSTOP)
            try:
                idle += measure(services, 1, args.k, args.max_new_tokens, offset=i)
            finally:
                os.kill(pid, signal.SIGCONT)
            time.sleep(0.5)  # let it get going again
            phases.append(learner_busy(services.store) or "idle")
            busy += measure(services, 1, args.k, args.max_new_tokens, offset=i)  # the same request
            with as_serve_runs_it(services, sup):
                yielded += measure(services, 1, args.k, args.max_new_tokens, offset=i)
            time.sleep(0.5)
        return idle, busy, yielded, phases, back_to_back(services, sup, args)
    finally:
        sup.stop()


@contextlib.contextmanager
def as_serve_runs_it(services, sup):
    """Generations inside hold the learner off the CPU, as `inkloop serve` composes the Generator's
    busy hook (LearnerSupervisor.busy)."""
    services.generator.busy = sup.busy
    try:
        yield
    finally:
        services.generator.busy = contextlib.nullcontext


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def back_to_back(services, sup, args) -> dict[str, float]:
    """Requests one after another for --window-s seconds, the learner yielding as serve runs it,
    against a window of the same length with no requests: the learner's CPU-seconds in each (is it
    starved while a person keeps asking?) and the latency of the back-to-back requests."""
    pid = sup.proc.pid
    c0, t0 = cpu_seconds(pid), time.monotonic()
    lat, i = [], 0
    with as_serve_runs_it(services, sup):
        while time.monotonic() - t0 < args.window_s:
            lat += measure(services, 1, args.k, args.max_new_tokens, offset=100 + i)
            i += 1
    busy_cpu, busy_s = cpu_seconds(pid) - c0, time.monotonic() - t0
    c1, t1 = cpu_seconds(pid), time.monotonic()
    time.sleep(busy_s)
    quiet_cpu, quiet_s = cpu_seconds(pid) - c1, time.monotonic() - t1
    return {"requests": len(lat), "latency_median": statistics.median(lat), "window_s": busy_s,
            "learner_cpu_back_to_back": busy_cpu, "learner_cpu_quiet": quiet_cpu, "quiet_s": quiet_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="local HF model dir (default: the bundled SmolLM2)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the app process")
    ap.add_argument("--uncapped", action="store_true", help="also measure with an uncapped learner")
    ap.add_argument("--window-s", type=float, default=60.0,
                    help="length of the back-to-back window and of the quiet one after it (default %(default)s)")
    args = ap.parse_args()

    from assistant.app.cli.common import build_services

    with tempfile.TemporaryDirectory(prefix="inkloop-bench-") as d:
        data_dir = Path(d)
        ns = argparse.Namespace(model=args.model, data_dir=str(data_dir), profile="default", device="cpu",
                                dtype="auto", threads=args.threads)
        services = build_services(ns, with_embedder=False)
        seed_feedback(services, 12)
        measure(services, 1, args.k, args.max_new_tokens)  # warm-up
        la0 = loadavg()
        before = measure(services, args.reps, args.k, args.max_new_tokens)
        cols = [("idle, before the learner", before, ["-"], la0)]
        idle, busy, yielded, ph, b2b = run_with_learner(services, args, data_dir, capped=True)
        la = loadavg()
        cols += [("idle (learner frozen)", idle, ["stopped"], la),
                 ("learning, no yield (nice 10, 1 th)", busy, ph, la),
                 ("learning, yields (as serve runs)", yielded, ph, la)]
        if args.uncapped:
            idle_u, busy_u, _y, ph_u, _b = run_with_learner(services, args, data_dir, capped=False)
            cols += [("idle (frozen, uncapped run)", idle_u, ["stopped"], loadavg()),
                     ("learning, no yield, uncapped", busy_u, ph_u, loadavg())]

    base = statistics.median(idle)
    print(f"\nsuggestion latency, K={args.k} x {args.max_new_tokens} new tokens, {args.reps} reps, "
          f"model {services.model_name}, torch threads {__import__('torch').get_num_threads()}")
    print("idle and learning reps alternate (the learner is frozen with SIGSTOP for the idle ones), so both "
          "see the same outside load")
    print(f"{'':36}{'median s':>10}{'p90 s':>10}{'ratio':>8}  {'load avg':<16} learner phases")
    for name, times, phases, la in cols:
        med = statistics.median(times)
        p90 = sorted(times)[max(0, int(round(0.9 * len(times))) - 1)]
        print(f"{name:36}{med:>10.2f}{p90:>10.2f}{med / base:>7.2f}x  {la:<16} {','.join(sorted(set(phases)))}")
    for name, times in (("as serve runs it", yielded), ("without yielding", busy)):
        ratio = statistics.median(times) / base
        print(f"target: learning <= 1.5x idle, {name}: {'met' if ratio <= 1.5 else 'NOT met'} ({ratio:.2f}x)")
    share = b2b["learner_cpu_back_to_back"] / max(b2b["learner_cpu_quiet"], 1e-9)
    print(f"\nback to back, as serve runs it: {b2b['requests']} requests in {b2b['window_s']:.0f} s, median "
          f"{b2b['latency_median']:.2f} s ({b2b['latency_median'] / base:.2f}x idle); the learner's CPU-seconds "
          f"{b2b['learner_cpu_back_to_back']:.1f} against {b2b['learner_cpu_quiet']:.1f} in {b2b['quiet_s']:.0f} s "
          f"with no requests ({share:.2f} of its quiet rate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
