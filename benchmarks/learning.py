"""Does a person feel the suggestions get better within 150 ratings? Measured through the real learner cycle.

Each cell is one `simulate` run (reward.loop.simulate.simulate over assistant.app.simulation's
ServicesAssistant, composed as `inkloop simulate` composes them): a simulated rater asks for K=4
suggestions per request, stars each and picks the best through Services.feedback; the shipped
Learner.run_once retrains the reward model (a 4-head bootstrap ensemble), runs RL, its guards,
evaluates and publishes; the app serves each request with the live policy and, once a reward
model exists, the reward-guided choice (K shown of N drawn, one exploration slot).

Two kinds of run per (rater, seed):
- ``system``: the product as shipped (RL + reward-guided choice). It gives two rows: the whole
  system (final policy + choice, as shown, the exploration slot included) vs base, and the policy
  alone (final policy, choice off) vs base.
- ``choice``: the learner retrains only the reward model (LearnerConfig.train_policy off), so the
  policy stays the base model: the choice alone vs base.

The learner's compute is rationed honestly (``--learner-seconds-per-rating S``, default 5): a person
reads and rates a request of four candidates in about 20 s, and during that time the app is idle,
so the learner has one core for those 20 s: 5 CPU-seconds per rating. Each learner cycle spends its
measured process CPU time; a cycle that falls due while the learner has spent more than it earned
waits (see SimConfig.learner_seconds_per_rating). S = 0 runs every due cycle at once (unrationed).

Held-out comparison: every held-out prompt of assets/prompts.json (52; never rated in training) x
``--heldout-samples`` (4) = 208 pairs per cell: sample i of the system against sample i of the base
model (drawn before any rating, same seeds), judged by the rater's hidden utility plus pick noise
(a separate judge seed); equal utilities are ties. Reported: wins / ties / losses, win-rate over the
decided pairs W/(W+L), (W + T/2)/N, and the mean gain in hidden utility, each with a 95% bootstrap
interval that resamples prompts (and seeds, pooled); plus the mean stars shown in the first 16
requests against the last 16 and, since those compare different prompts, a stars control: the base
model is asked the very same first and last 16 requests (prompt and seed; ``--stars-control``) and
the rater's expected stars (noise averaged out) of what was shown are set against the base's on
the same requests; and the share of the base's held-out suggestions the rater gives any
utility at all (how often the base shows the taste).

Cells are saved as JSON under ``--out`` as they finish; ``--report`` prints the table from whatever
cells are there (so a long run can be assembled from several processes).

    PYTHONPATH=. python benchmarks/learning.py [--raters concise,vivid] [--seeds 0,1,2] [--runs system,choice]
        [--budget 150] [--learner-seconds-per-rating 5] [--threads 1] [--out benchmarks/.learning] [--quick]
    PYTHONPATH=. python benchmarks/learning.py --report --out benchmarks/.learning

Measured here: see the README ("Learning within 150 ratings") and the closing note of issue 14.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import pickle
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from reward.config import RewardTrainConfig  # noqa: E402
from reward.features import parse_feature_blocks  # noqa: E402
from reward.loop.config import LearnerConfig  # noqa: E402
from reward.rl.config import RLConfig  # noqa: E402

RUNS = ("system", "choice")
ROWS = (("whole system", "system", "final"), ("policy alone", "system", "final_policy"),
        ("choice alone", "choice", "final"))
"""(row label, run kind, held-out texts) for each row of the table."""


@dataclass
class LearningBenchConfig:
    """One benchmark invocation: which cells, their budgets, and the learner's compute."""

    raters: tuple[str, ...] = ("concise", "vivid", "upbeat", "keywords", "dialogue", "firstperson", "alliteration")
    """Simulated raters (reward.eval.raters.RATERS)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds per rater (prompt order, sampling, the rater's noise, the learner)."""
    runs: tuple[str, ...] = RUNS
    """system (RL + choice: the whole-system and policy-alone rows) and/or choice (reward model only:
    the choice-alone row)."""
    budget: int = 150
    """Star ratings per run."""
    k: int = 4
    """Suggestions shown per request (and compared per held-out prompt)."""
    draw: int = 8
    """N drawn for the reward-guided choice (ChoiceConfig.draw)."""
    min_win_rate: float = LearnerConfig.min_win_rate
    """LearnerConfig.min_win_rate of the cells (the publish gate's held-out win-rate vs live)."""
    publish_requires_gain: bool = LearnerConfig.publish_requires_gain
    """LearnerConfig.publish_requires_gain of the cells."""
    pref_pairs: int = RLConfig.pref_pairs
    """RLConfig.pref_pairs of the cells (DPO steps on the rater's own pairs before each RL update; 0: off)."""
    pref_beta: float = RLConfig.pref_beta
    """RLConfig.pref_beta of the cells."""
    served_pairs: int = RLConfig.served_pairs
    """RLConfig.served_pairs of the cells (the reward model's best over worst of served draws; 0: off)."""
    algo: str = RLConfig.algo
    """RLConfig.algo of the cells' learner: reinforce | a2c | ppo | distill (the comparison in the loop)."""
    distill_coef: float = RLConfig.distill_coef
    """RLConfig.distill_coef of the cells: > 0 adds that times the distillation loss to reinforce / a2c /
    ppo (the mix; session 14's comparison: --algo reinforce / a2c / ppo / distill, and --algo ppo
    --distill-coef 0.5)."""
    tie_pick_weight: float = RewardTrainConfig.tie_pick_weight
    """RewardTrainConfig.tie_pick_weight of the cells' learner (a best pick among equal stars)."""
    carry_cycles: int = LearnerConfig.carry_cycles
    """LearnerConfig.carry_cycles of the cells (0: every cycle's RL starts from the live version)."""
    emb_features: str = ",".join(RewardTrainConfig.emb_features)
    """RewardTrainConfig.emb_features of the cells' learner, comma-separated (e.g. s,sc,words)."""
    variety: bool = False
    """SimConfig.variety of the cells: the requests the rater rates are written from varied angles
    (GenerationSettings.variety); held-out comparisons always use the prompt as asked."""
    stars_control: int = 16
    """Requests at each end of a run (the first and the last N) that the base model is also asked,
    same prompt and seed, for the stars control (0: skip it; it costs 2N base requests)."""
    learner_seconds_per_rating: float = 5.0
    """Learner CPU-seconds per rating: a person reads and rates four candidates in ~20 s, a core's time."""
    heldout_samples: int = 4
    """Samples per held-out prompt from base and from the system (52 prompts x 4 = 208 pairs)."""
    heldout_limit: int = 0
    """Only the first N held-out prompts (0: all)."""
    max_new_tokens: int = 32
    """Length limit of the suggestions shown (as simulate)."""
    n_boot: int = 2000
    """Bootstrap resamples for the intervals."""
    out: str = str(ROOT / "benchmarks" / ".learning")
    """Where each cell's JSON (and its store) goes."""


QUICK = {"budget": 24, "heldout_limit": 9, "heldout_samples": 2, "seeds": (0,), "raters": ("concise",)}
"""--quick: a tiny budget to check the pipeline on the real model in a few minutes."""


# ----------------------------------------------------------------------------- statistics (pure)
def summarise(outcomes: Sequence[float], gains: Sequence[float], clusters: Sequence[Any], n_boot: int = 2000,
              seed: int = 0) -> dict[str, float]:
    """W/T/L of pairwise outcomes (1 win, 0.5 tie, 0 loss), the win-rate over decided pairs
    W/(W+L), (W+T/2)/N and the mean utility gain, each with a 95% bootstrap interval that resamples
    clusters (held-out prompts) with replacement."""
    o = np.asarray(outcomes, np.float64)
    g = np.asarray(gains, np.float64)
    keys = list(dict.fromkeys(clusters))
    idx = {k: i for i, k in enumerate(keys)}
    cl = np.array([idx[c] for c in clusters], np.int64)

    def stats(w: np.ndarray) -> tuple[float, float, float]:
        wins, losses = float((w * (o == 1.0)).sum()), float((w * (o == 0.0)).sum())
        n = float(w.sum())
        decided = wins / (wins + losses) if wins + losses > 0 else float("nan")
        return decided, float((w * o).sum() / n) if n else float("nan"), float((w * g).sum() / n) if n else float("nan")

    point = stats(np.ones(len(o)))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, len(keys), len(keys)), minlength=len(keys)).astype(np.float64)
        draws.append(stats(counts[cl]))
    d = np.array(draws)

    def ci(j: int) -> tuple[float, float]:
        col = d[:, j][np.isfinite(d[:, j])]
        if not len(col):
            return float("nan"), float("nan")
        lo, hi = np.quantile(col, [0.025, 0.975])
        return float(lo), float(hi)

    w, t = int((o == 1.0).sum()), int((o == 0.5).sum())
    out = {"wins": w, "ties": t, "losses": int(len(o) - w - t), "n": len(o),
           "decided": point[0], "half": point[1], "gain": point[2]}
    for j, name in enumerate(("decided", "half", "gain")):
        out[name + "_lo"], out[name + "_hi"] = ci(j)
    return out


def judge(rater_name: str, seed: int, prompts: Sequence[Any], system: Sequence[Sequence[str]],
          base: Sequence[Sequence[str]]) -> tuple[list[float], list[float], list[Any]]:
    """Sample i of the system against sample i of the base, per prompt, by a judge with its own
    noise seed: (outcomes, utility gains, cluster = (seed, prompt index))."""
    from reward.eval.raters import make_rater

    j = make_rater(rater_name, seed=10_000 + seed)
    outcomes, gains, clusters = [], [], []
    for pi, (p, sys_texts, base_texts) in enumerate(zip(prompts, system, base)):
        f = p.fields()
        for a, b in zip(sys_texts, base_texts):
            outcomes.append(j.judge(a, b, f))
            gains.append(j.utility(a, f) - j.utility(b, f))
            clusters.append((seed, pi))
    return outcomes, gains, clusters


def stars_control(requests: Sequence[dict[str, Any]], rater: Any, base_texts: Callable[[dict[str, Any]], list[str]],
                  n: int = 16) -> dict[str, float]:
    """The shown stars of the first and last n requests against what the base model shows for the
    very same requests (prompt and seed), both as the rater's expected stars (Rater.expected_stars:
    the star noise averaged out). ``last_shown - last_base`` is what the loop adds by its end with
    the prompt mix held fixed; first -> last of the shown stars alone also moves with the prompts.
    ``base_texts(request)`` gives the base model's suggestions for one recorded request."""
    from reward.eval.prompts import EvalPrompt

    def mean_expected(reqs: Sequence[dict[str, Any]], texts_of: Callable[[dict[str, Any]], list[str]]) -> float:
        vals = [float(np.mean(rater.expected_stars(t, EvalPrompt(**r["prompt"]).fields())))
                for r in reqs if (t := texts_of(r))]
        return float(np.mean(vals)) if vals else float("nan")

    first, last = list(requests[:n]), list(requests[-n:])
    return {"first_shown": mean_expected(first, lambda r: r["texts"]), "first_base": mean_expected(first, base_texts),
            "last_shown": mean_expected(last, lambda r: r["texts"]), "last_base": mean_expected(last, base_texts)}


def first_last_stars(curve: Sequence[Sequence[float]], n: int = 16) -> tuple[float, float]:
    """Mean stars shown in the first n requests and in the last n (curve: (ratings, mean stars) per request)."""
    s = [float(v) for _, v in curve]
    if not s:
        return float("nan"), float("nan")
    return float(np.mean(s[:n])), float(np.mean(s[-n:]))


# ----------------------------------------------------------------------------- one cell
BASE_CACHE: dict[str, Any] = {}
"""Base-model suggestions by (rendered prompt, source text, settings incl. seed), shared by the
cells of one process (see cached_generator) and kept on disk between processes (base_cache_file)."""


def base_cache_file(out_dir: Path, model_name: str) -> Path:
    """Where BASE_CACHE is kept for one model (a pickle of SuggestResults, benchmark-only)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in (model_name or "model"))
    return out_dir / f"base-cache-{safe}.pkl"


def load_base_cache(path: Path) -> None:
    if path.exists() and not BASE_CACHE:
        BASE_CACHE.update(pickle.loads(path.read_bytes()))


def save_base_cache(path: Path) -> None:
    """Write BASE_CACHE, merged with what another process wrote there meanwhile."""
    if path.exists():
        BASE_CACHE.update({k: v for k, v in pickle.loads(path.read_bytes()).items() if k not in BASE_CACHE})
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(pickle.dumps(BASE_CACHE))
    os.replace(tmp, path)


def cached_generator(model, tokenizer, version_source):
    """The app's Generator, except that what the *base* model (no adapter) writes for a seeded
    request is remembered and reused. Sampling is seeded per request (GenerationSettings.seed), so
    the base model's candidates are a pure function of the prompt, the settings and the seed: every
    rater's choice-alone run, and each run's requests before its first published policy, draw the
    very same candidates; only which K are shown (and the ratings) differ. A benchmark-only
    saving: the app itself never caches."""
    from assistant.lm.generate import Generator
    from assistant.lm.prompts import render

    class CachingGenerator(Generator):
        def suggest(self, prompt, source_text, gen, on_update=None, should_stop=None, profile="default"):
            self.refresh_policy(profile)
            if self.policy_version != 0 or gen.seed is None or on_update is not None or should_stop is not None:
                return super().suggest(prompt, source_text, gen, on_update, should_stop, profile=profile)
            key = json.dumps([render(prompt, self.tokenizer), source_text, asdict(gen)], sort_keys=True)
            if key not in BASE_CACHE:
                BASE_CACHE[key] = super().suggest(prompt, source_text, gen, profile=profile)
            return copy.deepcopy(BASE_CACHE[key])

    return CachingGenerator(model, tokenizer, version_source=version_source)


def sim_config(cfg: LearningBenchConfig, seed: int, run: str, learner_overrides: Callable | None = None):
    from reward.loop.config import SimConfig

    learner = LearnerConfig(seed=seed, train_policy=run == "system", min_win_rate=cfg.min_win_rate,
                            publish_requires_gain=cfg.publish_requires_gain, carry_cycles=cfg.carry_cycles,
                            rl=RLConfig(algo=cfg.algo, distill_coef=cfg.distill_coef, pref_pairs=cfg.pref_pairs,
                                        pref_beta=cfg.pref_beta, served_pairs=cfg.served_pairs))
    learner = dataclasses.replace(learner, rm=dataclasses.replace(
        learner.rm, tie_pick_weight=cfg.tie_pick_weight, emb_features=parse_feature_blocks(cfg.emb_features)))
    if learner_overrides is not None:
        learner = learner_overrides(learner)
    return SimConfig(budget=cfg.budget, k=cfg.k, max_new_tokens=cfg.max_new_tokens, heldout_samples=cfg.heldout_samples,
                     seed=seed, learner_seconds_per_rating=cfg.learner_seconds_per_rating,
                     heldout_limit=cfg.heldout_limit, variety=cfg.variety, learner=learner)


def run_cell(cfg: LearningBenchConfig, rater: str, seed: int, run: str, model, tokenizer, embedder, out_dir: Path,
             learner_overrides: Callable | None = None, progress: Callable[[str], None] | None = None,
             model_name: str = "") -> dict[str, Any]:
    """One simulate run through the real learner cycle; returns (and saves) the cell's record."""
    from assistant.app.cli.common import policy_source
    from assistant.app.services import Services
    from assistant.app.simulation import ServicesAssistant
    from assistant.lm.library import Library
    from reward.eval.prompts import EvalPrompt
    from reward.eval.raters import make_rater
    from reward.loop.learner import Learner
    from reward.loop.simulate import simulate
    from reward.select import ChoiceConfig
    from storage.store import Store

    sim = sim_config(cfg, seed, run, learner_overrides)
    ddir = out_dir / f"{rater}-{run}-s{seed}"
    ddir.mkdir(parents=True, exist_ok=True)
    profile = "bench"
    store = Store(ddir / "inkloop.db")
    t0 = time.perf_counter()
    try:
        base = model
        base.requires_grad_(False)
        gen = cached_generator(copy.deepcopy(base), tokenizer, policy_source(store))
        services = Services(store, gen, Library(store, embedder), model_name=model_name, default_profile=profile,
                            choice=ChoiceConfig(draw=cfg.draw))
        learner = Learner(store, ddir, profile, lambda: (copy.deepcopy(base), tokenizer), embedder, sim.learner)
        person = ServicesAssistant(services, profile, sim.max_new_tokens, sim.temperature, draw=cfg.draw)
        # the base model's held-out texts depend on the seed and the prompts only: generated once per seed
        base_file = out_dir / f"base-s{seed}-h{cfg.heldout_limit}x{cfg.heldout_samples}-t{cfg.max_new_tokens}.json"
        base_texts = json.loads(base_file.read_text()) if base_file.exists() else None
        cache_file = base_cache_file(out_dir, model_name)
        load_base_cache(cache_file)
        res = simulate(person, learner, make_rater(rater, seed=seed), sim, progress=progress, base_heldout=base_texts)
        control = None
        if cfg.stars_control > 0:
            # a profile with no versions and no reward model: the base model, K drawn and shown
            base_person = ServicesAssistant(services, "stars-control", sim.max_new_tokens, sim.temperature)

            def base_of(r: dict[str, Any]) -> list[str]:
                return base_person.suggest(EvalPrompt(**r["prompt"]), cfg.k, seed=r["seed"], variety=sim.variety,
                                           record=False, choice=False).texts

            control = stars_control(res.requests, make_rater(rater, seed=seed), base_of, cfg.stars_control)
        save_base_cache(cache_file)
        if base_texts is None:
            base_file.write_text(json.dumps(res.heldout["base"]))
    finally:
        store.close()
    from reward.eval.prompts import load_prompts

    held = load_prompts(sim.prompts_path, split="heldout")
    held = held[: sim.heldout_limit] if sim.heldout_limit else held
    cell = {"rater": rater, "seed": seed, "run": run, "seconds": time.perf_counter() - t0,
            "config": asdict(cfg), "budget": res.ratings, "heldout": res.heldout,
            "heldout_prompts": [asdict(p) for p in held], "stars": res.curves["sim/stars"],
            "cycles": res.cycles, "published": res.policy_versions, "learner_cpu_s": res.learner_cpu_s,
            "postponed": res.postponed, "kl": res.kl, "requests": res.requests, "stars_control": control}
    (out_dir / f"cell-{rater}-{run}-s{seed}.json").write_text(json.dumps(cell, default=float))
    return cell


# ----------------------------------------------------------------------------- the table
def table_rows(cells: Sequence[dict[str, Any]], n_boot: int = 2000) -> list[dict[str, Any]]:
    """Per rater and row (whole system / policy alone / choice alone): per seed and pooled over seeds."""
    from reward.eval.prompts import EvalPrompt
    from reward.eval.raters import make_rater

    rows = []
    raters = list(dict.fromkeys(c["rater"] for c in cells))
    for rater in raters:
        for label, run, key in ROWS:
            group = sorted((c for c in cells if c["rater"] == rater and c["run"] == run), key=lambda c: c["seed"])
            if not group:
                continue
            pooled: tuple[list, list, list] = ([], [], [])
            firsts, lasts, seeds, base_pos = [], [], [], []
            for c in group:
                prompts = [EvalPrompt(**p) for p in c["heldout_prompts"]]
                o, g, cl = judge(rater, c["seed"], prompts, c["heldout"][key], c["heldout"]["base"])
                for acc, x in zip(pooled, (o, g, cl)):
                    acc.extend(x)
                f, last = first_last_stars(c["stars"])
                firsts.append(f)
                lasts.append(last)
                seeds.append(c["seed"])
                r = make_rater(rater)
                us = [r.utility(t, p.fields()) for p, ts in zip(prompts, c["heldout"]["base"]) for t in ts]
                base_pos.append(float(np.mean(np.array(us) > 0)) if us else float("nan"))
            s = summarise(*pooled, n_boot=n_boot, seed=0)
            ctrl = [c["stars_control"] for c in group if c.get("stars_control")]
            s.update({f"ctrl_{k}": float(np.mean([x[k] for x in ctrl])) if ctrl else float("nan")
                      for k in ("first_shown", "first_base", "last_shown", "last_base")})
            rows.append({"rater": rater, "row": label, "seeds": seeds, **s,
                         "stars_first16": float(np.mean(firsts)), "stars_last16": float(np.mean(lasts)),
                         "base_nonzero": float(np.mean(base_pos)), "budget": group[0]["budget"],
                         "published": float(np.mean([len(c["published"]) for c in group])),
                         "learner_cpu_s": float(np.mean([c["learner_cpu_s"] for c in group])),
                         "postponed": float(np.mean([c["postponed"] for c in group])),
                         "cycles": float(np.mean([len(c["cycles"]) for c in group]))})
    return rows


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    print("| rater | row | seeds | ratings | W / T / L | win-rate decided [95% CI] | (W+T/2)/N [95% CI] "
          "| utility gain [95% CI] | stars first 16 -> last 16 | expected stars, last 16: shown / base "
          "(first 16) | base u>0 | cycles (published, postponed) | learner CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rater']} | {r['row']} | {','.join(map(str, r['seeds']))} | {r['budget']} | "
              f"{r['wins']} / {r['ties']} / {r['losses']} | {r['decided']:.3f} [{r['decided_lo']:.3f}, "
              f"{r['decided_hi']:.3f}] | {r['half']:.3f} [{r['half_lo']:.3f}, {r['half_hi']:.3f}] | "
              f"{r['gain']:+.3f} [{r['gain_lo']:+.3f}, {r['gain_hi']:+.3f}] | {r['stars_first16']:.2f} -> "
              f"{r['stars_last16']:.2f} | {r['ctrl_last_shown']:.2f} / {r['ctrl_last_base']:.2f} "
              f"({r['ctrl_first_shown']:.2f} / {r['ctrl_first_base']:.2f}) | "
              f"{r['base_nonzero']:.2f} | {r['cycles']:.0f} ({r['published']:.0f}, "
              f"{r['postponed']:.0f}) | {r['learner_cpu_s']:.0f} |")


def load_cells(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out_dir.glob("cell-*.json"))]


def main() -> None:
    from assistant.app.cli.flags import add_flags, from_args

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(ap, LearningBenchConfig)
    ap.add_argument("--quick", action="store_true", help=f"tiny budget: {QUICK}")
    ap.add_argument("--report", action="store_true", help="only print the table of the cells under --out")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    ap.add_argument("--model", default=None, help="a local HF model directory (default: the bundled SmolLM2-135M)")
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON")
    a = ap.parse_args()
    cfg = from_args(LearningBenchConfig, a)
    if a.quick:
        cfg = from_args(LearningBenchConfig, a, base=LearningBenchConfig(**{**asdict(cfg), **QUICK}))
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not a.report:
        import torch

        from assistant.lm.config import ModelSettings
        from assistant.lm.models import load_embedder, load_lm

        torch.set_num_threads(a.threads)
        lm = load_lm(ModelSettings(model_path=a.model, device="cpu"))
        embedder = load_embedder(ModelSettings(device="cpu"))
        for rater in cfg.raters:
            for run in cfg.runs:
                for seed in cfg.seeds:
                    t0 = time.perf_counter()
                    say = lambda m, tag=f"[{rater} {run} s{seed}]": print(tag, m, file=sys.stderr, flush=True)  # noqa: E731
                    run_cell(cfg, rater, seed, run, lm.model, lm.tokenizer, embedder, out_dir, progress=say,
                             model_name=lm.name)
                    print(f"[{rater} {run} s{seed}] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    cells = load_cells(out_dir)
    rows = table_rows(cells, n_boot=cfg.n_boot)
    print(f"# learning within {cfg.budget} ratings: {len(cells)} cells under {out_dir}\n")
    print_table(rows)
    if a.json:
        print(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
