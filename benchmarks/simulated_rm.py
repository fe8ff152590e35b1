"""How well does a reward model learn a simulated rater's taste from 150 ratings? Measured offline.

`inkloop simulate` reports the reward model's held-out accuracy on the rater's *noisy* ratings of a
fifth of the requests (a few dozen pairs), which is both noisy and biased towards 0.5 by the
rater's own noise. This benchmark separates the reward model from RL and measures it against the
rater's hidden, noiseless utility instead, in minutes rather than the hour of a simulate run:

1. a pool of the base model's suggestions (K=4, 32 new tokens, temperature 0.8, through
   ``Services.suggest``) for the train prompts (``--train-reps`` requests each) and the held-out
   prompts (``--heldout-reps`` requests each) of assets/prompts.json, recorded once in
   ``--cache-dir`` and reused;
2. for each rater and seed, 150 ratings exactly as simulate gives them: requests of train
   prompts in the same interleaved order, stars for every candidate and a best pick, through
   ``Store.add_feedback``; the reward model trains with ``train_from_store`` (80/20 split by
   request, as in simulate) for each feature variant;
3. on the held-out pool:
   - ``true acc``: share of within-request candidate pairs with different utility that the
     reward model orders as the rater's utility does;
   - ``noisy acc``: the rm/accuracy simulate prints (held-out fifth of the rated requests);
   - ``BoN-4``: the rater's win-rate of the reward model's best of the four candidates against
     each of the other three (what RL could reach by re-weighting the base model's own samples),
     next to ``oracle`` (the win-rate of a policy that always had utility 1) and ``base u=0``
     (how often the base model writes nothing the rater likes).

    PYTHONPATH=. python benchmarks/simulated_rm.py [--raters concise,vivid,upbeat,keywords]
        [--variants default,words] [--train-pools plain,variety] [--seeds 3] [--threads 1]

``--train-pools plain,variety`` also records the train prompts' candidates with varied angles
(``GenerationSettings.variety``) and rates those instead, side by side with the plain pool; the
held-out pool is always plain (it is what RL's rollouts look like), so the rows say whether
rating varied candidates teaches the reward model more about the policy's own samples.

Measured here: see the README ("Simulated raters").
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

VARIANTS = {
    "default": {},
    "words": {"emb_features": ("s", "sc", "words")},
    "pairs-only": {"pointwise_weight": 0.0},
    "words+pairs-only": {"emb_features": ("s", "sc", "words"), "pointwise_weight": 0.0},
    "linear": {"hidden": 0},
    "pw-0.25": {"pointwise_weight": 0.25},
    "ensemble-4": {"ensemble": 4},
    "ensemble-4+pw-0.25": {"ensemble": 4, "pointwise_weight": 0.25},
}
"""Reward-model variants (RewardTrainConfig overrides); "default" is RewardTrainConfig()."""


def prompt_of(request) -> dict:
    """The rater's view of a recorded request (its keywords matter to the keywords rater)."""
    return {"mode": request.mode, "text": request.text, "keywords": (request.options or {}).get("keywords") or []}


def build_pool(store, threads: int | None, train_reps: int, heldout_reps: int, variety: bool = False) -> None:
    """Record the base model's suggestions for every prompt under profiles pool-train / pool-heldout
    (and, with variety, the train prompts' varied-angle candidates under pool-train-variety)."""
    import types

    from assistant.app.cli.common import build_services
    from assistant.app.simulation import ServicesAssistant
    from reward.eval.prompts import load_prompts
    from reward.loop.config import SimConfig

    args = types.SimpleNamespace(model=None, device="cpu", dtype="auto", threads=threads, profile="pool-train")
    services = build_services(args, store=store)
    train, held = load_prompts(split="train"), load_prompts(split="heldout")
    cfg = SimConfig()
    pools = [("pool-train", train, train_reps, False), ("pool-heldout", held, heldout_reps, False)]
    if variety:
        pools.append(("pool-train-variety", train, train_reps, True))
    rng = random.Random(0)
    for profile, prompts, reps, varied in pools:
        person = ServicesAssistant(services, profile, cfg.max_new_tokens, cfg.temperature)
        have = len(store.recent_requests(profile, limit=100000))
        todo = [p for _ in range(reps) for p in prompts][have:]
        t0 = time.perf_counter()
        for i, p in enumerate(todo):
            person.suggest(p, cfg.k, seed=rng.randrange(1 << 30), variety=varied)
            print(f"  {profile}: {have + i + 1}/{have + len(todo)} requests ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)


def pool(store, profile: str) -> dict[str, list]:
    """prompt -> the pool's requests of that prompt (oldest first)."""
    out: dict[str, list] = {}
    for r in reversed(store.recent_requests(profile, limit=100000)):
        o = r.options or {}
        key = (r.mode, r.text, o.get("style"), o.get("sample"), tuple(o.get("keywords") or ()), o.get("inspire_kind"))
        out.setdefault(repr(key), []).append(r)  # one prompt's requests differ only in their seed
    return out


def rate(store, rater, seed: int, train_pool: dict[str, list], budget: int, profile: str) -> None:
    """Copy pool requests into `profile` in simulate's order and rate them as simulate does."""
    import types

    from reward.eval.raters import rate_suggestions
    from reward.loop.simulate import interleave_modes

    rng = random.Random(seed)
    keys = list(train_pool)
    prompts = [types.SimpleNamespace(mode=train_pool[k][0].mode, key=k) for k in keys]
    used = dict.fromkeys(keys, 0)
    order: list[dict] = []
    n = 0
    while n < budget:
        if not order:
            order = interleave_modes(prompts, rng)
        k = order.pop(0).key
        src = train_pool[k][used[k] % len(train_pool[k])]
        used[k] += 1
        req = store.record_request(profile_id=profile, mode=src.mode, text=src.text, options=src.options,
                                   prompt=src.prompt, policy_version=0, suggestions=[s.text for s in src.suggestions])
        n += len(rate_suggestions(rater, prompt_of(req), [s.id for s in req.suggestions],
                                  [s.text for s in req.suggestions], budget - n, store.add_feedback))


def measure(model, rater, held: list) -> dict[str, float]:
    from reward.feedback import context_of
    from reward.train import pair_accuracy

    better, worse, wins = [], [], []
    for req in held:
        texts = [s.text for s in req.suggestions]
        u = rater.utilities(texts, prompt_of(req))
        r = model.score([context_of(req)] * len(texts), texts)
        for i, j in itertools.combinations(range(len(u)), 2):
            if u[i] != u[j]:  # the rater prefers one: does the reward model agree?
                hi, lo = (i, j) if u[i] > u[j] else (j, i)
                better.append(r[hi])
                worse.append(r[lo])
        b = int(np.argmax(r))
        wins += [1.0 if u[b] > u[j] else 0.5 if u[b] == u[j] else 0.0 for j in range(len(u)) if j != b]
    return {"true_acc": pair_accuracy(np.array(better), np.array(worse)), "true_pairs": len(better),
            "bon": float(np.mean(wins))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raters", default="concise,vivid,upbeat,keywords")
    ap.add_argument("--variants", default="default,words", help="comma-separated from: " + " ".join(VARIANTS))
    ap.add_argument("--train-pools", default="plain", help="comma-separated from: plain variety (default %(default)s)")
    ap.add_argument("--seeds", type=int, default=3, help="rater seeds per cell (default %(default)s)")
    ap.add_argument("--budget", type=int, default=150)
    ap.add_argument("--train-reps", type=int, default=2, help="pool requests per train prompt (default %(default)s)")
    ap.add_argument("--heldout-reps", type=int, default=4, help="pool requests per held-out prompt (default %(default)s)")
    ap.add_argument("--cache-dir", default=str(ROOT / "benchmarks" / ".cache"))
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    variants = [v for v in a.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    train_pools = [t for t in a.train_pools.split(",") if t]
    if not train_pools or set(train_pools) - {"plain", "variety"}:
        ap.error(f"--train-pools takes plain and/or variety, got {a.train_pools!r}")

    import torch

    from assistant.lm.config import ModelSettings
    from assistant.lm.models import load_embedder
    from reward.config import RewardTrainConfig
    from reward.eval.raters import make_rater
    from reward.train import train_from_store
    from storage.store import Store

    if a.threads:
        torch.set_num_threads(a.threads)
    Path(a.cache_dir).mkdir(parents=True, exist_ok=True)
    store = Store(Path(a.cache_dir) / "simulated_rm.db")
    build_pool(store, a.threads, a.train_reps, a.heldout_reps, variety="variety" in train_pools)
    train_pool_of = {t: pool(store, "pool-train" if t == "plain" else "pool-train-variety") for t in train_pools}
    train_pool = train_pool_of[train_pools[0]]
    held = [r for rs in pool(store, "pool-heldout").values() for r in rs]
    embedder = load_embedder(ModelSettings(device="cpu"))
    print(f"# simulated raters' reward models: {a.budget} ratings, {sum(map(len, train_pool.values()))} pool "
          f"requests of {len(train_pool)} train prompts, {len(held)} held-out requests, seeds 0..{a.seeds - 1}\n")
    print("(mean ± std over the seeds; base u=0: share of the held-out base suggestions the rater gives utility 0)\n")
    print("| rater | variant | train pool | true acc | noisy acc (simulate's) | BoN-4 win vs base | oracle win | base u=0 "
          "| pairs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in a.raters.split(","):
        judge = make_rater(name, seed=1000)
        us = np.concatenate([judge.utilities([s.text for s in r.suggestions], prompt_of(r)) for r in held])
        oracle = float(np.mean(us < 1) + 0.5 * np.mean(us >= 1))
        zero = float(np.mean(us <= 0))
        for v, tp in itertools.product(variants, train_pools):
            cells = []
            for seed in range(a.seeds):
                profile = f"{name}-s{seed}-{time.time_ns()}"
                rate(store, make_rater(name, seed=seed), seed, train_pool_of[tp], a.budget, profile)
                cfg = RewardTrainConfig(seed=seed, shuffled_control=False, **VARIANTS[v])
                model, m = train_from_store(store, profile, embedder, cfg)
                cells.append({**measure(model, judge, held), "noisy": m.get("rm/accuracy", float("nan"))})

            def ms(key: str) -> str:
                x = np.array([c[key] for c in cells], float)
                return f"{np.nanmean(x):.3f} ± {np.nanstd(x):.3f}"

            print(f"| {name} | {v} | {tp} | {ms('true_acc')} | {ms('noisy')} | {ms('bon')} | {oracle:.3f} | {zero:.2f} | "
                  f"{cells[0]['true_pairs']} |", flush=True)


if __name__ == "__main__":
    main()
