"""What a profile switch costs the Generator on the real model, side by side in one run.

Two profiles (a, b) each get a published policy version: a LoRA adapter with the product's
LoraSettings and random non-zero B matrices (a fresh adapter would equal the base); profile c has
none (the base model). The Generator is composed as `inkloop serve` composes it (policy_source)
and, without the fast path, the table times `refresh_policy(profile)` (what every suggestion does
first, under the generation lock):

- first adapter: the first version loaded (peft wraps the model: a new adapter structure; read from disk)
- first switch to b: b's weights read from disk, copied in place into the same modules
- a <-> b from memory: the weights are in the Generator's LRU (assistant.lm.adapters.WeightCache)
- a <-> c (base model): zeros copied in place, and back
- same profile: no switch (the store query for the live version only)

then one suggestion (K=3, 32 new tokens, the same seeded request: the same text every time for a
profile) right after a switch and again without one, in turns (a a b b ...), medians of --reps/4.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/profile_switch.py [--reps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def random_policy_writer(base, seed: int, scale: float = 0.02):
    """A writer for save_version: the product's Policy (LoRA + value head) on a copy of `base` with
    random LoRA B matrices, saved in the policy directory layout."""
    import torch

    from assistant.lm.config import LoraSettings
    from reward.rl.policy import Policy

    def write(d: Path) -> None:
        pol = Policy.from_base(copy.deepcopy(base), None, LoraSettings())
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in pol.model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * scale)
        pol.save(d)

    return write


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=20, help="switches per row (suggestions: a quarter of it)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    load_before = loadavg()
    from assistant.app.cli.common import policy_source
    from assistant.lm.config import GenerationSettings, ModelSettings
    from assistant.lm.generate import Generator
    from assistant.lm.models import load_lm
    from assistant.lm.prompts import build_prompt
    from storage.artifacts import save_version
    from storage.store import Store

    lm = load_lm(ModelSettings(device="cpu"))
    data = Path(tempfile.mkdtemp(prefix="inkloop-switch-"))
    store = Store(data / "inkloop.db")
    va, vb = (save_version(store, data, kind="policy", profile_id=p, writer=random_policy_writer(lm.model, seed),
                           publish=True) for p, seed in (("a", 1), ("b", 2)))
    box = {}
    gen = Generator(lm.model, lm.tokenizer, version_source=policy_source(store, lambda: box["g"].failed_versions),
                    device=lm.device)
    box["g"] = gen

    rows: list[tuple[str, float, int]] = []
    rows.append(("first adapter (new structure, disk)", timed(lambda: gen.refresh_policy("a")), 1))
    rows.append(("first switch to b (disk, in place)", timed(lambda: gen.refresh_policy("b")), 1))
    assert gen.policy_version == vb.id and len(gen.weights) == 2

    def alternate(p: str, q: str) -> float:
        ts = [timed(lambda x=x: gen.refresh_policy(x)) for _ in range(args.reps) for x in (p, q)]
        return statistics.median(ts)

    rows.append(("a <-> b from memory", alternate("a", "b"), 2 * args.reps))
    rows.append(("a <-> c (base: zeros in place)", alternate("a", "c"), 2 * args.reps))
    gen.refresh_policy("a")
    same = statistics.median(timed(lambda: gen.refresh_policy("a")) for _ in range(args.reps))
    rows.append(("same profile (no switch)", same, args.reps))
    assert gen.refresh_policy("a") == va.id

    prompt = build_prompt("continue", "The rain had not stopped for three days. The river rose a little each night.")
    settings = GenerationSettings(k=3, max_new_tokens=32, temperature=0.8, seed=7)
    n = max(2, args.reps // 4)

    def suggest(p: str) -> float:
        return timed(lambda: gen.suggest(prompt, "", settings, profile=p))

    suggest("a")  # first call: allocations
    switched: dict[str, list[float]] = {"a": [], "b": []}
    stayed: dict[str, list[float]] = {"a": [], "b": []}
    for _ in range(n):  # a a b b a a ...: the first of each pair switches, the second does not
        for p in ("a", "b"):
            switched[p].append(suggest(p))
            stayed[p].append(suggest(p))
    med = {(k, p): statistics.median(d[p]) for k, d in (("switched", switched), ("stayed", stayed)) for p in d}

    print(f"\nprofile switch on {lm.name} ({lm.device}, {str(lm.dtype).replace('torch.', '')}, "
          f"{args.threads} thread(s)); load average before: {load_before}")
    print(f"LoRA r={gen.model.peft_config[next(iter(gen.model.peft_config))].r}, "
          f"{gen.weights.nbytes / len(gen.weights) / 1e6:.2f} MB of weights per version in memory")
    print(f"\n| {'what':<40} | {'median ms':>10} | {'n':>4} |\n|{'-' * 42}|{'-' * 12}|{'-' * 6}|")
    for what, s, k in rows:
        print(f"| {what:<40} | {s * 1000:>10.2f} | {k:>4} |")
    for p in ("a", "b"):
        for k in ("stayed", "switched"):
            what = f"suggestion K=3 x 32 for {p}, {'just switched' if k == 'switched' else 'no switch'}"
            print(f"| {what:<40} | {med[(k, p)] * 1000:>10.1f} | {n:>4} |")
    ratio = sum(med[("switched", p)] for p in "ab") / sum(med[("stayed", p)] for p in "ab")
    print(f"\nsuggestion after a switch / without (same seeded request and profile, a and b together): "
          f"{ratio:.3f}; load average after: {loadavg()}")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
