"""Where the server's memory goes under load (issue 17): is RSS growth a leak?

Runs benchmarks/faults.py's mixed load against `inkloop serve --api-only` on the tiny model, the
server started through a probe that samples, every `--every` seconds: RSS, glibc's malloc
statistics (mallinfo2: bytes in use, free bytes it keeps, mmapped), Python's allocated blocks and,
with --tracemalloc, the Python heap allocated since the end of the warm-up (tracing slows it down). After the load it asks the
server (SIGUSR1) for a last sample, a `malloc_trim(0)` and the sample after it, and, with
--tracemalloc, the biggest Python allocation growths since the end of the warm-up.

Growing RSS with flat bytes-in-use and flat Python heap is memory the allocator keeps (arenas,
fragmentation); returned by malloc_trim, it is not a leak. Growing bytes-in-use is.

    PYTHONPATH=. python benchmarks/memory.py [--clients 4] [--seconds 600] [--every 30] [--tracemalloc]
        [--arena-max N] [--no-fast-path]   # MALLOC_ARENA_MAX for the server; no compiled decode
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "benchmarks")) if p not in sys.path]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        return libc
    except (OSError, AttributeError):
        return None


def sample(t0: float, label: str = "") -> dict:
    """RSS, malloc's statistics, the Python heap (and its allocated blocks) of this process, in MB.
    (Not gc.get_objects(): holding every object from another thread breaks C code that resizes a
    tuple it thinks it owns, e.g. torch.compile's.)"""
    import faults

    out = {"t": round(time.monotonic() - t0, 1), "label": label, "rss": round(faults.proc_rss_mb(os.getpid()), 1),
           "threads": threading.active_count(), "py_blocks": sys.getallocatedblocks()}
    libc = _libc()
    if libc is not None:
        m = libc.mallinfo2()
        out.update(in_use=round(m.uordblks / 2**20, 1), kept_free=round(m.fordblks / 2**20, 1),
                   mmapped=round(m.hblkhd / 2**20, 1), arena=round(m.arena / 2**20, 1))
    import tracemalloc

    if tracemalloc.is_tracing():
        out["python_heap"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 1)
    return out


def serve_probed(argv: list[str], probe_path: str, every_s: float, warmup_s: float, trace: bool) -> int:
    """In the server's process: the sampler thread and the SIGUSR1 handler, then `inkloop ARGV`."""
    import tracemalloc

    import app

    t0 = time.monotonic()
    state: dict = {}

    def write(rec: dict) -> None:
        with open(probe_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def loop() -> None:
        while True:
            time.sleep(every_s)
            if trace and "warm" not in state and time.monotonic() - t0 >= warmup_s:
                tracemalloc.start(8)  # from the end of the warm-up: only what is allocated since
                state["warm"] = tracemalloc.take_snapshot()
            write(sample(t0))

    def on_usr1(signum, frame) -> None:
        threading.Thread(target=finish, daemon=True).start()  # not inside the handler's frame

    def finish() -> None:
        gc.collect()
        write(sample(t0, "end"))
        libc = _libc()
        if libc is not None:
            libc.malloc_trim(0)
        write(sample(t0, "after malloc_trim"))
        if trace and "warm" in state:
            top = tracemalloc.take_snapshot().compare_to(state["warm"], "traceback")[:8]
            write({"label": "python growth since warm-up",
                   "top": [{"kb": round(s.size_diff / 1024), "count": s.count_diff,
                            "where": [f"{fr.filename}:{fr.lineno}" for fr in s.traceback[-4:]]} for s in top]})

    signal.signal(signal.SIGUSR1, on_usr1)
    threading.Thread(target=loop, daemon=True, name="memory-probe").start()
    return app.main(argv)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--every", type=float, default=30.0)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--arena-max", type=int, default=None)
    ap.add_argument("--no-fast-path", action="store_true", help="serve without the compiled decode path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child is not None:  # the server's side: probe_path every warmup trace -- serve argv
        probe, every, warmup, trace, *rest = a.child
        return serve_probed(rest, probe, float(every), float(warmup), trace == "1")

    import faults

    print(f"# inkloop server memory under load (cpu load average {os.getloadavg()[0]:.1f})")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.jsonl"

        def finish(proc) -> None:  # the server's last samples, around a malloc_trim
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(15 if a.tracemalloc else 5)

        rep = faults.live_load(
            a.clients, a.seconds, a.seed, a.max_new_tokens, before_stop=finish,
            launcher=(str(Path(__file__).resolve()), "--child", str(probe), str(a.every), str(0.2 * a.seconds + 30),
                      "1" if a.tracemalloc else "0"),
            extra_args=("--no-fast-path",) if a.no_fast_path else (),
            extra_env={"OMP_NUM_THREADS": "1", **({"MALLOC_ARENA_MAX": str(a.arena_max)} if a.arena_max else {})})
        recs = [json.loads(x) for x in probe.read_text().splitlines()]
    served = sum(rep.served.values())
    print(f"\n{a.clients} clients x {rep.seconds:.0f} s: {served} requests, {rep.statuses[('suggest', 200)]} "
          f"suggestions; fast path {'off' if a.no_fast_path else 'on'}; MALLOC_ARENA_MAX={a.arena_max or 'unset'}; "
          f"tracemalloc {'on' if a.tracemalloc else 'off'}\n")
    cols = [c for c in ("t", "label", "rss", "in_use", "kept_free", "mmapped", "arena", "python_heap", "py_blocks",
                        "threads") if any(c in r for r in recs)]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in recs:
        if "top" in r:
            continue
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    for r in recs:
        for s in r.get("top", []):
            print(f"  python growth {s['kb']:+} KB ({s['count']:+} blocks) at {' <- '.join(reversed(s['where']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
