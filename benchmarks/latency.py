"""Latency of suggestions on the real bundled model.

1. Cold start: a fresh process runs `inkloop suggest` (process start -> suggestions printed and
   recorded), with the converted safetensors already cached. Also `inkloop serve` from process
   start -> listening, and -> first suggestion answered over HTTP.
2. Warm: wall time of one request of K candidates x N new tokens per mode, with the model loaded
   (what a person waits for in the UI after the first request): first with the base model, then
   with a published LoRA policy version hot-swapped in (every request after the first learning
   round runs through the adapter).
3. Reward-guided choice: with a published reward model (a 4-head bootstrap ensemble, the
   learner's default), K=4 shown out of N drawn in the one batched call and scored, side by side
   with today's K=4 request (no choice), interleaved rep by rep so machine load hits all rows alike.
   The ratio to the K=4 row is what ChoiceConfig.draw's default is chosen by (the largest N within
   1.5x).

    PYTHONPATH=. python benchmarks/latency.py [--k 4] [--max-new-tokens 64] [--reps 3] [--threads N]

The CPU load average is printed with the figures: on a shared machine they move with it. The
process CPU time of each warm request is printed too; with --threads 1 it approximates the wall time
the same request takes on an idle core.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXTS = {
    "continue": dict(mode="continue", text="The rain had not stopped for three days."),
    "restyle": dict(mode="restyle", text="I am really tired and I want to go home now.", style="formal"),
    "inspire": dict(mode="inspire", text="", keywords="lighthouse, storm", inspire_kind="ideas"),
}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cold_cli(k: int, max_new_tokens: int, threads: int | None) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, str(ROOT / "app.py"), "suggest", "--mode", "continue", "--text",
               TEXTS["continue"]["text"], "-k", str(k), "--max-new-tokens", str(max_new_tokens), "--json",
               "--data-dir", d]
        if threads:
            cmd += ["--threads", str(threads)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(p.stderr)
        return dt, len(json.loads(p.stdout)["suggestions"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_serve(k: int, max_new_tokens: int, threads: int | None) -> tuple[float, float]:
    """(seconds to listening, seconds to the first suggestion answered), from process start."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, str(ROOT / "app.py"), "serve", "--data-dir", d, "--port", str(port), "--no-learner"]
        if threads:
            cmd += ["--threads", str(threads)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            base = f"http://127.0.0.1:{port}"
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("serve exited")
                try:
                    urllib.request.urlopen(f"{base}/api/v1/status", timeout=5).read()
                    break
                except OSError:
                    time.sleep(0.2)
            ready = time.perf_counter() - t0
            body = json.dumps({**TEXTS["continue"], "k": k, "max_new_tokens": max_new_tokens}).encode()
            req = urllib.request.Request(f"{base}/api/v1/suggest", data=body,
                                         headers={"content-type": "application/json"})
            json.loads(urllib.request.urlopen(req, timeout=600).read())
            first = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return ready, first


def publish_fresh_policy(services, data_dir: str) -> None:
    """Publish a LoRA policy version (the learner's shape: adapter + value head) so that the
    generator hot-swaps it: after the first learning round every suggestion runs through it."""
    import copy

    from reward.rl.policy import Policy
    from storage.artifacts import save_version

    gen = services.generator
    pol = Policy.from_base(copy.deepcopy(gen.base_model), gen.tokenizer)
    save_version(services.store, data_dir, kind="policy", profile_id=services.default_profile,
                 writer=pol.save, publish=True)


def warm(k: int, max_new_tokens: int, reps: int, threads: int | None, draws: list[int],
         row_buckets: tuple[int, ...] | None = None):
    """Warm rows (generate path) and the choice rows; with `row_buckets` the choice rows run on
    the compiled fast decode path with those row buckets, as `inkloop serve` does."""
    from assistant.app.cli.common import build_services

    with tempfile.TemporaryDirectory() as d:
        args = argparse.Namespace(model=None, data_dir=d, profile="default", device="auto", dtype="auto",
                                  threads=threads)
        services = build_services(args, with_embedder=bool(draws))
        rows = measure_modes(services, k, max_new_tokens, reps, "base model", choice=False)
        publish_fresh_policy(services, d)
        rows += measure_modes(services, k, max_new_tokens, reps, "live LoRA policy", choice=False)
        choice_rows = []
        if draws:
            publish_reward_model(services, d)
            if row_buckets:
                compile_fast_path(services, k, draws, max_new_tokens, row_buckets)
            choice_rows = measure_choice(services, k, draws, max_new_tokens, reps)
        device = str(services.generator.device)
        services.store.close()
    return rows, choice_rows, device


def publish_reward_model(services, data_dir: str) -> None:
    """A reward model as the learner publishes it (4-head bootstrap ensemble) from a few ratings."""
    from assistant.app.services import SuggestRequest
    from reward.config import RewardTrainConfig
    from reward.train import save_reward_version, train_from_store

    for i, fields in enumerate(list(TEXTS.values()) * 2):
        res = services.suggest(SuggestRequest(**fields, k=4, max_new_tokens=16, seed=100 + i, choice=False))
        for j, s in enumerate(res.suggestions):
            services.feedback(s["id"], "stars", 1 + (i + j) % 5, source="simulated")
    cfg = RewardTrainConfig(ensemble=4, shuffled_control=False, eval_frac=0.0)
    rm, metrics = train_from_store(services.store, services.default_profile, services.embedder, cfg)
    save_reward_version(services.store, data_dir, services.default_profile, rm, metrics, cfg)


def compile_fast_path(services, k: int, draws: list[int], max_new_tokens: int, row_buckets: tuple[int, ...]) -> None:
    """Attach the fast decode path (as serve does) and compile every (rows, length) bucket the
    choice rows need: one pass of every row and mode queues them (that pass runs on generate),
    then wait until the background compiles are done."""
    from assistant.app.services import SuggestRequest
    from assistant.lm.decode import DecodeSettings

    fd = services.generator.start_fast_path(DecodeSettings(row_buckets=row_buckets, warmup=(),
                                                           after_first_request=False, quiet_seconds=0.5))
    t0 = time.perf_counter()
    for n in [None, *draws]:
        for fields in TEXTS.values():
            services.suggest(SuggestRequest(**fields, k=k, max_new_tokens=max_new_tokens, seed=0,
                                            choice=n is not None, draw=n))
    fd.wait_idle()
    failed = [r for r in fd.warm_log if not r.ok]
    print(f"\n(fast path: {sum(r.ok for r in fd.warm_log)} buckets compiled in {time.perf_counter() - t0:.0f} s, "
          f"row buckets {row_buckets}{'; FAILED: ' + str(failed) if failed else ''})")


def measure_choice(services, k: int, draws: list[int], max_new_tokens: int, reps: int) -> list[dict]:
    """Median wall / CPU seconds of K shown without choice (draw K) and with choice for each N,
    interleaved (every rep runs every row on every mode), live LoRA policy."""
    from assistant.app.services import SuggestRequest

    configs = [("K=%d, no choice (today)" % k, None)] + [(f"K={k} of N={n}, reward-guided", n) for n in draws]
    times: dict[str, list[float]] = {name: [] for name, _ in configs}
    cpu: dict[str, list[float]] = {name: [] for name, _ in configs}
    drawn: dict[str, list[int]] = {name: [] for name, _ in configs}
    services.suggest(SuggestRequest(**TEXTS["continue"], k=k, max_new_tokens=8, draw=max(draws)))  # warm-up
    for r in range(reps):
        for mode, fields in TEXTS.items():
            for name, n in configs:
                c0 = time.process_time()
                res = services.suggest(SuggestRequest(**fields, k=k, max_new_tokens=max_new_tokens, seed=r,
                                                      choice=n is not None, draw=n))
                cpu[name].append(time.process_time() - c0)
                times[name].append(res.seconds)
                drawn[name].append(res.choice["drawn"] if res.choice else len(res.suggestions))
    base = statistics.median(times[configs[0][0]])
    base_cpu = statistics.median(cpu[configs[0][0]])
    return [dict(name=name, median=statistics.median(times[name]), cpu=statistics.median(cpu[name]),
                 ratio=statistics.median(times[name]) / base, cpu_ratio=statistics.median(cpu[name]) / base_cpu,
                 drawn=statistics.mean(drawn[name]), n=len(times[name])) for name, _ in configs]


def measure_modes(services, k: int, max_new_tokens: int, reps: int, policy: str, choice: bool = False) -> list[dict]:
    from assistant.app.services import SuggestRequest

    services.suggest(SuggestRequest(**TEXTS["continue"], k=1, max_new_tokens=8))  # warm-up (and hot-swap)
    rows = []
    for mode, fields in TEXTS.items():
        times, cpu, n_out, chars = [], [], [], []
        for r in range(reps):
            c0 = time.process_time()
            res = services.suggest(SuggestRequest(**fields, k=k, max_new_tokens=max_new_tokens, seed=r, choice=choice))
            cpu.append(time.process_time() - c0)
            times.append(res.seconds)
            n_out.append(len(res.suggestions))
            chars.append(statistics.mean(len(s["text"]) for s in res.suggestions) if res.suggestions else 0)
        rows.append(dict(mode=mode, policy=policy, median=statistics.median(times), min=min(times),
                         max=max(times), cpu=statistics.median(cpu),
                         k_out=min(n_out), chars=statistics.mean(chars)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--draws", default="8,12", help="N values for the reward-guided choice rows ('' skips them)")
    ap.add_argument("--fast-path", default=None, metavar="ROWS",
                    help="run the choice rows on the compiled fast decode path (as serve does) with these row "
                         "buckets, e.g. 4,8,12,16 (default: generate, as the CLI does)")
    a = ap.parse_args()
    draws = [int(x) for x in a.draws.split(",") if x.strip()]

    print(f"# inkloop latency  (K={a.k}, max_new_tokens={a.max_new_tokens}, reps={a.reps}, "
          f"threads={a.threads or 'default'}, cpus={os.cpu_count()}, load avg at start {loadavg()})")
    if not a.skip_cold:
        dt, n = cold_cli(3, a.max_new_tokens, a.threads)
        print("\n## cold start (fresh process, cached safetensors)")
        print("| what | seconds |\n|---|---|")
        print(f"| `inkloop suggest --mode continue -k 3` process start -> {n} suggestions printed | {dt:.1f} |")
        if not a.skip_serve:
            ready, first = cold_serve(a.k, a.max_new_tokens, a.threads)
            print(f"| `inkloop serve` process start -> listening (UI + API) | {ready:.1f} |")
            print(f"| `inkloop serve` process start -> first K={a.k} suggestion answered | {first:.1f} |")
    buckets = tuple(int(x) for x in a.fast_path.split(",")) if a.fast_path else None
    rows, choice_rows, device = warm(a.k, a.max_new_tokens, a.reps, a.threads, draws, buckets)
    print(f"\n## warm: one request of K={a.k} x up to {a.max_new_tokens} new tokens ({device}, bundled SmolLM2-135M)")
    print("| policy | mode | median wall s | min s | max s | median CPU s | candidates | mean chars |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['mode']} | {r['median']:.2f} | {r['min']:.2f} | {r['max']:.2f} | {r['cpu']:.2f} | {r['k_out']} "
              f"| {r['chars']:.0f} |")
    print("\n(CPU s = process CPU time of the request; with --threads 1 it approximates the wall time on an idle core)")
    if choice_rows:
        print(f"\n## reward-guided choice: K={a.k} shown, live LoRA policy + 4-head reward model, median over "
              f"{a.reps} reps x 3 modes, interleaved, "
              + (f"fast decode path (row buckets {a.fast_path})" if a.fast_path else "generate path"))
        print("| request | median wall s | x K=4 wall | median CPU s | x K=4 CPU | distinct drawn |")
        print("|---|---|---|---|---|---|")
        for r in choice_rows:
            print(f"| {r['name']} | {r['median']:.2f} | {r['ratio']:.2f} | {r['cpu']:.2f} | {r['cpu_ratio']:.2f} "
                  f"| {r['drawn']:.1f} |")
    print(f"\nload avg at end {loadavg()}")


if __name__ == "__main__":
    main()
