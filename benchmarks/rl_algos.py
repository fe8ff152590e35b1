"""Which RL algorithm learns a rater's taste best for the same CPU-seconds? reinforce / a2c / ppo / distill / mix.

benchmarks/learning.py measures the whole loop but a cell takes 30+ minutes here; this one holds the
reward fixed and measures RL alone, in about a minute a run:

1. a rating log per (rater, seed): the base model's K=4 suggestions for ceil(ratings / K) requests
   of the train prompts (assets/prompts.json, the app's path: Services.suggest, seeded, modes
   interleaved as simulate asks them; recorded once per seed and shared by the raters), starred
   and best-picked by the rater as simulate does (reward.eval.raters.rate_suggestions);
2. two reward columns: ``rm``, the learner's composed reward (reward.functions.RewardFunction) over
   a reward model trained on that log exactly as the learner trains it (LearnerConfig().rm: a
   4-head ensemble; reward.train.train_from_store), and ``utility``, the rater's own hidden utility
   (standardised over the log's texts like the reward model's scores): the gap between the two
   is the reward model's error, what is left under ``utility`` is RL's;
3. each algorithm from the same base (a fresh LoRA, the same seed) for the same CPU-seconds
   (reward.rl.budget.StopRule(seconds=...): process time, one torch thread) with the learner's KL
   stop (rl_kl_stop x max_kl of LearnerConfig) on rollouts of the rated requests (the person's own
   requests, reward.rl.train.prompts_from_store);
4. on the held-out prompts (52 x --heldout-samples 2 = 104 pairs a seed): sample i of the trained policy
   against sample i of the base model under the same seed (so an unchanged reply is a tie), judged
   by the rater with its own noise seed (benchmarks/learning.judge): W / T / L, the win-rate over
   decided pairs with a 95% bootstrap interval over prompts (benchmarks/learning.summarise, seeds
   pooled), and the KL to the base per reply (the k1 estimate summed over a reply's tokens, on the
   policy's held-out samples, as the learner's evaluation measures eval/kl).

Algorithms (RLConfig defaults otherwise: 4 prompts x 4 samples, 32 tokens, lr 5e-4, beta 0.05):
reinforce (RLOO baseline), a2c, ppo (4 epochs x minibatches of 8), distill (best of the 4 samples
per prompt when above the prompt's mean, NLL + 0.1 x k3 KL, 2 epochs) and mix (ppo +
0.5 x the distillation loss). ``ppo_2x`` and ``mix_2x`` run for twice the budget: whether more RL
time against the same reward model pays (the learner's idle-time question).

Cells are saved as JSON under --out as they finish and reused on a rerun; --report prints the
table from the cells there.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/rl_algos.py --threads 1 [--raters concise,vivid]
        [--seeds 0,1] [--algos reinforce,a2c,ppo,distill,mix] [--rewards rm,utility] [--seconds 60]
    PYTHONPATH=. python benchmarks/rl_algos.py --report
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ALGOS: dict[str, tuple[dict[str, Any], float]] = {
    "reinforce": ({"algo": "reinforce", "distill_coef": 0.0}, 1.0),
    "a2c": ({"algo": "a2c", "distill_coef": 0.0}, 1.0),
    "ppo": ({"algo": "ppo", "distill_coef": 0.0}, 1.0),
    "distill": ({"algo": "distill"}, 1.0),
    "mix": ({"algo": "ppo", "distill_coef": 0.5}, 1.0),
    "ppo_2x": ({"algo": "ppo", "distill_coef": 0.0}, 2.0),
    "mix_2x": ({"algo": "ppo", "distill_coef": 0.5}, 2.0),
}
"""name -> (RLConfig overrides, budget multiple)."""


@dataclass
class RLAlgosConfig:
    """One invocation: which cells and their budget."""

    raters: tuple[str, ...] = ("concise", "vivid")
    """Simulated raters (reward.eval.raters)."""
    seeds: tuple[int, ...] = (0, 1)
    """Seeds: the rating log's requests and noise, RL's sampling, the held-out samples."""
    algos: tuple[str, ...] = ("reinforce", "a2c", "ppo", "distill", "mix")
    """From ALGOS."""
    rewards: tuple[str, ...] = ("rm", "utility")
    """rm: the learner's reward over a reward model trained on the log; utility: the rater's own."""
    seconds: float = 60.0
    """CPU-seconds of RL per run (times the algorithm's budget multiple); 60 = LearnerConfig.rl_seconds,
    one learner cycle."""
    ratings: int = 150
    """Star ratings in the log."""
    k: int = 4
    """Suggestions per rated request."""
    heldout_samples: int = 2
    """Samples per held-out prompt from the policy and from the base (52 x 2 = 104 pairs a seed,
    208 over two seeds)."""
    heldout_limit: int = 0
    """Only the first N held-out prompts (0: all 52)."""
    max_new_tokens: int = 32
    """Length of the rated suggestions and the held-out samples."""
    n_boot: int = 2000
    """Bootstrap resamples for the intervals."""
    out: str = str(ROOT / "benchmarks" / ".rl_algos")
    """Where the stores, the cached samples and each cell's JSON go."""


# ----------------------------------------------------------------------------- the fixed pieces
def rating_pool(store, services, seed: int, cfg: RLAlgosConfig) -> None:
    """The base model's suggestions for the log's requests under profile pool (once per seed)."""
    import random

    from assistant.app.simulation import ServicesAssistant
    from reward.eval.prompts import load_prompts
    from reward.loop.simulate import interleave_modes

    n = math.ceil(cfg.ratings / cfg.k)
    have = len(store.recent_requests("pool", limit=100_000))
    rng, order = random.Random(seed), []
    person = ServicesAssistant(services, "pool", cfg.max_new_tokens, 0.8)
    for i in range(n):
        if not order:
            order = interleave_modes(load_prompts(split="train"), rng)
        p, s = order.pop(0), rng.randrange(1 << 30)
        if i >= have:
            person.suggest(p, cfg.k, seed=s)


def rate_pool(store, rater, profile: str, ratings: int) -> None:
    """The pool's requests, in the order they were asked, copied into `profile` and rated as
    simulate rates (stars for each, a best pick), `ratings` stars in all."""
    from reward.eval.raters import rate_suggestions
    from simulated_rm import prompt_of

    n = 0
    for src in reversed(store.recent_requests("pool", limit=100_000)):
        if n >= ratings:
            break
        req = store.record_request(profile_id=profile, mode=src.mode, text=src.text, options=src.options,
                                   prompt=src.prompt, policy_version=0, suggestions=[s.text for s in src.suggestions])
        n += len(rate_suggestions(rater, prompt_of(req), [s.id for s in req.suggestions],
                                  [s.text for s in req.suggestions], ratings - n, store.add_feedback))


def heldout_prompts(tokenizer, cfg: RLAlgosConfig):
    """(EvalPrompt, RolloutPrompt) of the held-out split, rendered as the app renders a request."""
    from assistant.lm.prompts import build_prompt, render
    from reward.eval.prompts import load_prompts
    from reward.functions import RolloutPrompt

    held = load_prompts(split="heldout")
    held = held[: cfg.heldout_limit] if cfg.heldout_limit else held
    ro = [RolloutPrompt(render(build_prompt(p.mode, p.text, p.options), tokenizer), p.mode, source_text=p.text,
                        keywords=list(p.fields()["keywords"])) for p in held]
    return held, ro


def heldout_samples(policy, prompts, cfg: RLAlgosConfig, seed: int) -> tuple[list[list[str]], float]:
    """Samples per held-out prompt (the same seed for every policy: an unchanged reply is the
    same text) and the mean KL to the base per reply (k1, summed over its tokens)."""
    import torch

    from reward.rl.config import RLConfig
    from reward.rl.rollout import _policy_eval, _reference_logprobs, rollout

    rc = RLConfig(k=cfg.heldout_samples, max_new_tokens=cfg.max_new_tokens, temperature=0.8, minibatch_size=16)
    texts, kls = [], []
    for j in range(0, len(prompts), 8):
        torch.manual_seed(seed * 1000 + j)
        ro = rollout(policy, prompts[j : j + 8], rc)
        lp = _policy_eval(policy, ro, rc)[0]
        ref = _reference_logprobs(policy, ro, rc)
        kls += ((lp - ref) * ro.mask).sum(1).tolist()
        texts += [ro.texts[i : i + rc.k] for i in range(0, len(ro.texts), rc.k)]
    return texts, float(np.mean(kls))


def utility_reward(rater, log_texts: Sequence[str], log_fields: Sequence[dict]):
    """The rater's utility as a reward, standardised by its mean and spread over the log's texts."""
    u = np.array([rater.utility(t, f) for t, f in zip(log_texts, log_fields)], np.float64)
    mu, sd = float(u.mean()), float(u.std()) or 1.0

    def fn(prompts, texts):
        f = [{"mode": p.mode, "text": p.source_text, "keywords": list(p.keywords)} for p in prompts]
        return np.asarray([(rater.utility(t, x) - mu) / sd for t, x in zip(texts, f)], np.float32)

    return fn


# ----------------------------------------------------------------------------- one run
def run_one(cfg: RLAlgosConfig, name: str, reward_fn, base, tok, store, ddir: Path, profile: str, seed: int,
            held_ro) -> dict[str, Any]:
    """RL from a fresh LoRA on `base` for the algorithm's budget; its held-out samples and KL."""
    from reward.loop.config import LearnerConfig
    from reward.rl.budget import StopRule, stop_reason
    from reward.rl.config import RLConfig
    from reward.rl.policy import Policy
    from reward.rl.train import prompts_from_store, train_policy

    overrides, mult = ALGOS[name]
    lc = LearnerConfig()
    rl = replace(RLConfig(seed=seed), **overrides)
    policy = Policy.from_base(copy.deepcopy(base), tok)
    rule = StopRule(seconds=cfg.seconds * mult, max_kl=lc.rl_kl_stop * lc.max_kl)
    t0 = time.perf_counter()
    _v, m = train_policy(store, ddir, profile, None, tok, reward_fn, rl, rule, policy=policy,
                         prompts=prompts_from_store(store, profile, rl.recent_requests))
    wall, c0 = time.perf_counter() - t0, time.process_time()
    texts, kl = heldout_samples(policy, held_ro, cfg, seed)
    return {"texts": texts, "kl": kl, "steps": m["rl/steps"], "rl_seconds": m["rl/seconds"], "wall_s": wall,
            "eval_cpu_s": time.process_time() - c0,
            "stop": stop_reason(m), "train_reward": m.get("rl/reward"),
            "final_reward": m.get("rl/final_reward"), "rollout_kl": m.get("rl/final_kl")}


# ----------------------------------------------------------------------------- the table
def table_rows(cells: Sequence[dict[str, Any]], n_boot: int) -> list[dict[str, Any]]:
    from learning import judge, summarise

    from reward.eval.prompts import EvalPrompt

    rows = []
    raters = list(dict.fromkeys(c["rater"] for c in cells))
    order = {a: i for i, a in enumerate(ALGOS)}
    keys = sorted(dict.fromkeys((c["rater"], c["reward"], c["algo"]) for c in cells),
                  key=lambda x: (raters.index(x[0]), x[1] != "rm", order.get(x[2], len(order))))
    for rater, reward, algo in keys:
        group = sorted((c for c in cells if (c["rater"], c["reward"], c["algo"]) == (rater, reward, algo)),
                       key=lambda c: c["seed"])
        o, g, cl = [], [], []
        for c in group:
            prompts = [EvalPrompt(**p) for p in c["heldout_prompts"]]
            a, b, d = judge(rater, c["seed"], prompts, c["texts"], c["base_texts"])
            o, g, cl = o + a, g + b, cl + d
        s = summarise(o, g, cl, n_boot=n_boot)
        rows.append({"rater": rater, "reward": reward, "algo": algo, "seeds": [c["seed"] for c in group], **s,
                     **{k: float(np.mean([c[k] for c in group])) for k in ("kl", "steps", "rl_seconds")},
                     "stops": ",".join(c["stop"] for c in group)})
    return rows


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    print("| rater | reward | algo | seeds | W / T / L | win-rate decided [95% CI] | utility gain [95% CI] "
          "| KL/reply | updates | RL CPU-s | stopped |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rater']} | {r['reward']} | {r['algo']} | {','.join(map(str, r['seeds']))} | "
              f"{r['wins']} / {r['ties']} / {r['losses']} | {r['decided']:.3f} [{r['decided_lo']:.3f}, "
              f"{r['decided_hi']:.3f}] | {r['gain']:+.3f} [{r['gain_lo']:+.3f}, {r['gain_hi']:+.3f}] | "
              f"{r['kl']:.2f} | {r['steps']:.1f} | {r['rl_seconds']:.0f} | {r['stops']} |")


def pooled_by_algo(rows: Sequence[dict[str, Any]]) -> None:
    """Mean over raters of each algorithm's decided win-rate, per reward column."""
    print("\n| reward | algo | mean decided win-rate over raters | mean utility gain | mean KL/reply |")
    print("|---|---|---|---|---|")
    for reward in dict.fromkeys(r["reward"] for r in rows):
        for algo in dict.fromkeys(r["algo"] for r in rows):
            rs = [r for r in rows if r["reward"] == reward and r["algo"] == algo]
            if rs:
                print(f"| {reward} | {algo} | {np.nanmean([r['decided'] for r in rs]):.3f} | "
                      f"{np.mean([r['gain'] for r in rs]):+.4f} | {np.mean([r['kl'] for r in rs]):.2f} |")


def load_cells(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("cell-*.json"))]


# ----------------------------------------------------------------------------- main
def main() -> None:
    from assistant.app.cli.flags import add_flags, from_args

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(ap, RLAlgosConfig)
    ap.add_argument("--report", action="store_true", help="only print the table of the cells under --out")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=None, help="a local HF model directory (default: the bundled SmolLM2-135M)")
    a = ap.parse_args()
    cfg = from_args(RLAlgosConfig, a)
    unknown = set(cfg.algos) - set(ALGOS)
    if unknown:
        ap.error(f"unknown algos {sorted(unknown)}; choose from {', '.join(ALGOS)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not a.report:
        run_all(cfg, a, out)
    cells = [c for c in load_cells(out) if c["algo"] in cfg.algos and c["rater"] in cfg.raters
             and c["reward"] in cfg.rewards and c["seed"] in cfg.seeds]
    rows = table_rows(cells, cfg.n_boot)
    print(f"# RL algorithms for {cfg.seconds:g} CPU-s each: {len(cells)} runs under {out}\n")
    print_table(rows)
    pooled_by_algo(rows)


def run_all(cfg: RLAlgosConfig, a, out: Path) -> None:
    import torch

    from assistant.app.services import Services
    from assistant.lm.config import ModelSettings
    from assistant.lm.generate import Generator
    from assistant.lm.models import load_embedder, load_lm
    from reward.eval.raters import make_rater
    from reward.functions import RewardFunction, embed_with
    from reward.loop.config import LearnerConfig
    from reward.rl.policy import Policy
    from reward.train import train_from_store
    from simulated_rm import prompt_of
    from storage.store import Store

    torch.set_num_threads(a.threads)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    lm = load_lm(ModelSettings(model_path=a.model, device="cpu"))
    embedder = load_embedder(ModelSettings(device="cpu"))
    base = lm.model
    base.requires_grad_(False)
    held, held_ro = heldout_prompts(lm.tokenizer, cfg)
    t_all = time.perf_counter()
    for seed in cfg.seeds:
        sdir = out / f"seed{seed}"
        sdir.mkdir(exist_ok=True)
        store = Store(sdir / "inkloop.db")
        try:
            t0 = time.perf_counter()
            rating_pool(store, Services(store, Generator(copy.deepcopy(base), lm.tokenizer), None,
                                        model_name=lm.name), seed, cfg)
            say(f"[s{seed}] rating pool ready ({time.perf_counter() - t0:.0f} s)")
            base_file = sdir / f"base-h{len(held)}x{cfg.heldout_samples}-t{cfg.max_new_tokens}.json"
            if base_file.exists():
                base_texts = json.loads(base_file.read_text())
            else:  # a fresh LoRA (B = 0) is the base model
                base_texts, _ = heldout_samples(Policy.from_base(copy.deepcopy(base), lm.tokenizer), held_ro, cfg, seed)
                base_file.write_text(json.dumps(base_texts))
            say(f"[s{seed}] base held-out samples ready ({time.perf_counter() - t0:.0f} s)")
            for rater_name in cfg.raters:
                profile = f"{rater_name}-s{seed}"
                rater = make_rater(rater_name, seed=seed)
                if not store.feedback(profile):
                    rate_pool(store, rater, profile, cfg.ratings)
                reqs = store.recent_requests(profile, limit=100_000)
                rm, rm_m = train_from_store(store, profile, embedder, replace(LearnerConfig().rm, seed=seed))
                rewards = {"rm": RewardFunction(rm=rm, embed=embed_with(embedder)),
                           "utility": utility_reward(rater, [s.text for r in reqs for s in r.suggestions],
                                                     [prompt_of(r) for r in reqs for _ in r.suggestions])}
                for reward in cfg.rewards:
                    for algo in cfg.algos:
                        path = out / f"cell-{rater_name}-{reward}-{algo}-s{seed}.json"
                        if path.exists():
                            continue
                        r = run_one(cfg, algo, rewards[reward], base, lm.tokenizer, store, sdir, profile, seed, held_ro)
                        cell = {"rater": rater_name, "reward": reward, "algo": algo, "seed": seed, **r,
                                "base_texts": base_texts, "heldout_prompts": [asdict(p) for p in held],
                                "rm_accuracy": rm_m.get("rm/accuracy"), "config": asdict(cfg)}
                        path.write_text(json.dumps(cell, default=float))
                        say(f"[s{seed} {rater_name} {reward} {algo}] {r['steps']:.0f} updates in "
                            f"{r['rl_seconds']:.0f} CPU-s ({r['stop']}), KL {r['kl']:.2f}, "
                            f"run {r['wall_s']:.0f} s wall; {time.perf_counter() - t_all:.0f} s so far")
        finally:
            store.close()


if __name__ == "__main__":
    main()
