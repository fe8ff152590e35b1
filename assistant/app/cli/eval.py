"""`inkloop eval`: quality of a policy version, reward functions compared, hyper-parameters swept.

    inkloop eval --version V [--prompts FILE] [--json]
    inkloop eval compare-rewards --rater NAME --budget N [--algo ppo]
    inkloop eval sweep --param lr=1e-5,5e-5 --param kl=0.02,0.1 --rater NAME --budget N [--random N]

Every form writes a report folder under <data-dir>/reports/ (see reward.report). The metrics are
the functions of reward.quality; the simulated-rater cycle is reward.evaluate.simulate.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from assistant.app.cli.common import say as _say
from assistant.lm.config import ASSETS
from assistant.lm.logprobs import kl_to_reference, reference, text_logprobs
from reward.eval import quality as Q


# ----------------------------------------------------------------------------- prompts
@dataclass
class EvalPrompt:
    """One evaluation request: a mode, its text, and the prompt options (style, keywords, ...)."""

    mode: str
    text: str
    options: dict[str, Any] = field(default_factory=dict)


def _one_prompt(item: Any, mode: str | None = None) -> EvalPrompt:
    if isinstance(item, str):
        if mode is None:
            raise ValueError(f"a bare string prompt needs a mode: {item[:40]!r}")
        return EvalPrompt(mode, item)
    if not isinstance(item, dict):
        raise ValueError(f"a prompt must be an object or a string, got {type(item).__name__}")
    m = item.get("mode", mode)
    if m not in ("continue", "restyle", "inspire"):
        raise ValueError(f"prompt has no valid mode (continue|restyle|inspire): {item}")
    text = item.get("text") or item.get("theme") or ""
    opts = dict(item.get("options") or {})
    for k_in, k_out in (("style", "style"), ("sample", "sample"), ("keywords", "keywords"),
                        ("kind", "inspire_kind"), ("inspire_kind", "inspire_kind")):
        if item.get(k_in):
            opts.setdefault(k_out, item[k_in])
    return EvalPrompt(m, text, opts)


def parse_prompts(data: Any, split: str | None = "heldout") -> list[EvalPrompt]:
    """Accepts: a list of {"mode", "text", options...}; a dict mode -> list (strings or objects,
    like assets/examples.json); or a dict holding such a value under "held_out", "eval", "test"
    or "prompts" (like assets/prompts.json). When the objects carry a "split" field, only those of
    `split` are kept (None keeps all)."""
    if isinstance(data, list) and split and any(isinstance(it, dict) and "split" in it for it in data):
        kept = [it for it in data if isinstance(it, dict) and it.get("split") == split]
        if not kept:
            raise ValueError(f"no prompts with split {split!r}")
        data = kept
    if isinstance(data, dict):
        for key in ("held_out", "heldout", "eval", "test", "prompts"):
            if key in data:
                return parse_prompts(data[key], split)
        out = []
        for mode in ("continue", "restyle", "inspire"):
            out += [_one_prompt(it, mode) for it in data.get(mode, [])]
        if not out:
            raise ValueError("no prompts found: expected a list, or keys continue/restyle/inspire or held_out")
        return out
    if isinstance(data, list):
        return [_one_prompt(it) for it in data]
    raise ValueError(f"cannot read prompts from a {type(data).__name__}")


def spread(prompts: Sequence[EvalPrompt], n: int | None) -> list[EvalPrompt]:
    """At most n prompts taken round-robin over the modes (so a small limit still covers all three)."""
    if not n or n >= len(prompts):
        return list(prompts)
    by_mode: dict[str, list[EvalPrompt]] = {}
    for p in prompts:
        by_mode.setdefault(p.mode, []).append(p)
    out, i = [], 0
    while len(out) < n:
        for ps in by_mode.values():
            if i < len(ps) and len(out) < n:
                out.append(ps[i])
        i += 1
    return out


def load_prompts(path: str | Path | None = None, split: str | None = "heldout") -> list[EvalPrompt]:
    """Prompts from a JSON or JSONL file; by default the held-out prompts of assets/prompts.json,
    else assets/examples.json."""
    if path is None:
        for cand in (ASSETS / "prompts.json", ASSETS / "examples.json"):
            if cand.is_file():
                path = cand
                break
        else:
            raise ValueError("no prompts: pass --prompts FILE (JSON or JSONL)")
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"prompts file {p} does not exist")
    raw = p.read_text()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is neither JSON nor JSONL: {e}") from None
    prompts = parse_prompts(data, split)
    if not prompts:
        raise ValueError(f"{p} holds no prompts")
    return prompts


# ----------------------------------------------------------------------------- sampling
@dataclass
class Samples:
    """K candidates per prompt from one policy version."""

    version: int
    contexts: list[str]
    """The rendered prompt string for each prompt (what the model was conditioned on)."""
    groups: list[list[str]]
    """groups[i]: the candidates for prompt i."""
    sources: list[str]


def sample_version(generator, prompts: Sequence[EvalPrompt], gen, version: tuple[int, str] | None,
                   progress: Callable[[str], None] | None = None) -> Samples:
    """Generate K candidates per prompt with the given policy version ((id, dir); None = base)."""
    from assistant.lm.prompts import build_prompt

    generator.version_source = lambda: version
    generator.refresh_policy()
    contexts, groups, sources = [], [], []
    for i, ep in enumerate(prompts):
        prompt = build_prompt(ep.mode, ep.text, ep.options)
        res = generator.suggest(prompt, ep.text, gen)
        contexts.append(res.prompt_text)
        groups.append(list(res.texts))
        sources.append(ep.text)
        if progress:
            progress(f"  v{generator.policy_version}: prompt {i + 1}/{len(prompts)} ({ep.mode}): {len(res.texts)} candidates")
    return Samples(generator.policy_version, contexts, groups, sources)


def rollout_prompts(prompts: Sequence[EvalPrompt], s: Samples) -> list:
    """reward.functions.RolloutPrompt for every candidate of `s` (what the reward terms need)."""
    from types import SimpleNamespace

    from reward.functions import RolloutPrompt

    out = []
    for ep, ctx, g in zip(prompts, s.contexts, s.groups):
        rp = RolloutPrompt.from_request(SimpleNamespace(prompt=ctx, mode=ep.mode, text=ep.text, options=ep.options))
        out += [rp] * len(g)
    return out


def fluency_fn(generator) -> Callable:
    """reward.functions' fluency term: mean log-prob per token under the reference model."""
    import numpy as np

    def fluency(prompts, texts) -> np.ndarray:
        ctx = [p.prompt_text for p in prompts]
        with reference(generator.model):
            lps = text_logprobs(generator.model, generator.tokenizer, ctx, texts)
        return np.asarray([float(lp.mean()) if len(lp) else 0.0 for lp in lps], np.float32)

    return fluency


def sample_metrics(generator, prompts: Sequence[EvalPrompt], s: Samples, reward_fn=None) -> dict[str, float]:
    """Text metrics, perplexity under the reference, KL to the reference, reward terms' means."""
    m = Q.text_metrics(s.groups)
    ctx = [c for c, g in zip(s.contexts, s.groups) for _ in g]
    txt = [t for g in s.groups for t in g]
    model, tok = generator.model, generator.tokenizer
    with generator.lock:
        m["eval/perplexity"] = Q.perplexity(model, tok, txt, ctx, use_reference=True)
        kl = kl_to_reference(model, tok, ctx, txt)
        m["eval/kl"], m["eval/kl_k1"] = kl["kl"], kl["kl_k1"]
        m["eval/length_tokens"] = Q.mean_length(txt, tok)
        if reward_fn is not None and txt:
            out = reward_fn(rollout_prompts(prompts, s), txt)
            m.update(Q.mean_terms({k: list(map(float, v)) for k, v in out.terms.items()}))
            m["eval/reward"] = float(out.total.mean())
            if "rm" in out.terms:
                m["eval/rm_score"] = m["eval/reward/rm"]
    return m


Judge = Callable[[Any, str, str], float]
"""(RolloutPrompt, candidate A, candidate B) -> +1 if A is better, -1 if B is, 0 for a tie."""


def compare_to_base(prompts: Sequence[EvalPrompt], policy: Samples, base: Samples, judge: Judge) -> dict[str, float]:
    """Win-rate of the policy's candidates over the base's, candidate i against candidate i of the
    same prompt, with a Wilson 95 % interval."""
    w = l = t = 0
    rps = rollout_prompts(prompts, policy)
    i = 0
    for pg, bg in zip(policy.groups, base.groups):
        for j, (a, b) in enumerate(zip(pg, bg)):
            v = judge(rps[i + j], a, b)
            w, l, t = w + (v > 0), l + (v < 0), t + (v == 0)
        i += len(pg)
    r = Q.win_rate(w, l, t)
    return {"eval/win_rate": r["win_rate"], "eval/win_ci_low": r["ci_low"], "eval/win_ci_high": r["ci_high"],
            "eval/win_n": float(r["n"]), "eval/win_ci": f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"}


def evaluate_version(generator, prompts: Sequence[EvalPrompt], gen, version: tuple[int, str] | None,
                     reward_fn=None, judge: Judge | None = None,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Metrics of one policy version ((id, dir); None = the base, version 0) on `prompts`, against
    the base: {"version", "metrics", "base_metrics", "samples"}. Win-rate needs a `judge`
    (a simulated rater, or the reward model's scores)."""
    t0 = time.perf_counter()
    base = sample_version(generator, prompts, gen, None, progress)
    base_m = sample_metrics(generator, prompts, base, reward_fn)
    if version is None:
        pol, pol_m = base, dict(base_m)
    else:
        pol = sample_version(generator, prompts, gen, version, progress)
        pol_m = sample_metrics(generator, prompts, pol, reward_fn)
    if judge is not None and version is not None:
        pol_m.update(compare_to_base(prompts, pol, base, judge))
    pol_m["eval/seconds"] = time.perf_counter() - t0
    samples = [{"mode": p.mode, "text": p.text, "base": b, "policy": g}
               for p, b, g in zip(prompts, base.groups, pol.groups)]
    return {"version": pol.version, "metrics": pol_m, "base_metrics": base_m, "samples": samples}


def reward_judge(reward_fn) -> Judge:
    """A judge from a reward function: the candidate with the higher total reward wins."""

    def judge(rp, a: str, b: str) -> float:
        r = reward_fn([rp, rp], [a, b]).total
        d = float(r[0] - r[1])
        return 0.0 if abs(d) <= 1e-9 else math.copysign(1.0, d)

    return judge


# ----------------------------------------------------------------------------- command plumbing
def _generation(args) -> Any:
    from assistant.lm.config import GenerationSettings

    return GenerationSettings(k=args.k, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              seed=args.seed)


def _version_arg(store, profile: str, v: int) -> tuple[int, str] | None:
    if v == 0:
        return None
    row = store.get_version(v)  # NotFound (a StoreError) for an unknown id
    if row.kind != "policy":
        raise ValueError(f"version {v} is a {row.kind} version, not a policy")
    if not Path(row.path, "adapter").is_dir():
        raise ValueError(f"version {v} has no adapter directory at {row.path}/adapter")
    return row.id, row.path


def cmd_eval(args: argparse.Namespace) -> int:
    from assistant.app.cli.common import fail, open_store

    if args.version is None:
        return fail("eval needs --version V (0 = the base model), or a sub-command: compare-rewards, sweep")
    try:
        prompts = spread(load_prompts(args.prompts), args.limit)
        gen = _generation(args)
        gen.validate()
    except ValueError as e:
        return fail(str(e))
    store = open_store(args)
    try:
        return _eval_version_command(args, store, prompts, gen)
    finally:
        store.close()


def _eval_version_command(args, store, prompts: list[EvalPrompt], gen) -> int:
    from assistant.app.cli.common import data_dir, fail, load_models
    from assistant.lm.generate import Generator
    from reward.eval.report import write_report

    try:
        version = _version_arg(store, args.profile, args.version)
    except ValueError as e:
        return fail(str(e))
    lm, embedder = load_models(args, with_embedder=True)
    generator = Generator(lm.model, lm.tokenizer, device=lm.device)
    reward_fn, judge, notes = _scoring(args, store, lm, embedder, generator)
    if version is None:
        judge = None
        notes = [n for n in notes if not n.startswith("win-rate")] + ["version 0 is the base itself: no win-rate."]
    _say(f"eval: version {args.version} on {len(prompts)} prompts, K={gen.k}")
    res = evaluate_version(generator, prompts, gen, version, reward_fn=reward_fn, judge=judge, progress=_say)
    runs = [{"name": "base (v0)", "config": {}, "metrics": res["base_metrics"]}]
    if version is not None:
        runs.append({"name": f"v{res['version']}", "config": {}, "metrics": res["metrics"], "samples": res["samples"]})
    else:
        runs[0]["samples"] = res["samples"]
    folder = write_report(data_dir(args), f"eval-v{args.version}", runs, title=f"Evaluation of policy version {args.version}",
                          settings={"model": lm.name, "prompts": args.prompts or "assets (default)", "n_prompts": len(prompts),
                                    "k": gen.k, "max_new_tokens": gen.max_new_tokens, "seed": gen.seed},
                          notes=notes)
    out = {"version": res["version"], "metrics": res["metrics"], "base_metrics": res["base_metrics"], "report": str(folder)}
    if args.json:
        print(json.dumps(out, indent=2, default=float))
    else:
        print((folder / "summary.md").read_text())
        print(f"report: {folder}")
    return 0




def _scoring(args, store, lm, embedder, generator) -> tuple[Any, Judge | None, list[str]]:
    """The reward function (default RewardConfig; the profile's live reward model when there is
    one) and the judge for the win-rate: a simulated rater when --rater is given, else the
    composed reward."""
    from reward.functions import RewardConfig, RewardFunction, embed_with
    from reward.train import load_live_reward_model

    notes: list[str] = []
    rm = load_live_reward_model(store, args.profile, embedder, lm) if embedder is not None else None
    if rm is None:
        notes.append("no reward model published yet for this profile: the rm term is absent.")
    reward_fn = RewardFunction(RewardConfig(), rm=rm, embed=embed_with(embedder) if embedder is not None else None,
                               fluency=fluency_fn(generator))
    if getattr(args, "rater", None):
        judge = rater_judge(args.rater, embedder)
        notes.append(f"win-rate judged by the simulated rater {args.rater!r}.")
    else:
        judge = reward_judge(reward_fn)
        notes.append("win-rate judged by the composed reward (default weights); pass --rater NAME for a simulated rater.")
    return reward_fn, judge, notes


# ----------------------------------------------------------------------------- compare-rewards and sweep
def reward_designs() -> dict[str, Any]:
    """The reward configurations compare-rewards runs, by name (same weights in every mode)."""
    from reward.functions import RewardConfig

    return {
        "rm-only": RewardConfig.only(rm=1.0),
        "rm+fluency": RewardConfig.only(rm=1.0, fluency=0.1),
        "rm+rep/div": RewardConfig.only(rm=1.0, repetition=0.5, distinct=0.2),
        "heuristics": RewardConfig.only(length=0.2, repetition=0.5, distinct=0.2, keywords=0.5, fluency=0.05),
    }


SWEEP_PARAMS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "lr": ("learning rate", float),
    "kl": ("KL coefficient", float),
    "rank": ("LoRA rank", int),
    "algo": ("algorithm", str),
    "k": ("samples per prompt (K)", int),
}
"""Sweepable hyper-parameters: name -> (description, parser of one value)."""


def parse_param(spec: str) -> tuple[str, list[Any]]:
    """"lr=1e-5,5e-5" -> ("lr", [1e-05, 5e-05]). Raises ValueError with the known names."""
    if "=" not in spec:
        raise ValueError(f"--param wants NAME=V1,V2,... got {spec!r}")
    name, vals = spec.split("=", 1)
    name = name.strip().lower().replace("-", "_")
    name = {"learning_rate": "lr", "kl_coef": "kl", "lora_rank": "rank", "r": "rank"}.get(name, name)
    if name not in SWEEP_PARAMS:
        raise ValueError(f"unknown sweep parameter {name!r}; known: {', '.join(SWEEP_PARAMS)}")
    conv = SWEEP_PARAMS[name][1]
    try:
        values = [conv(v.strip()) for v in vals.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"bad value in --param {spec!r}") from None
    if not values:
        raise ValueError(f"--param {name} has no values")
    return name, values


def sweep_grid(params: dict[str, list[Any]], random_n: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The full grid (cartesian product, in order), or `random_n` distinct settings drawn from it."""
    import itertools
    import random

    names = list(params)
    grid = [dict(zip(names, combo)) for combo in itertools.product(*(params[n] for n in names))] or [{}]
    if random_n is not None and random_n < len(grid):
        rng = random.Random(seed)
        grid = rng.sample(grid, random_n)
    return grid


# ----------------------------------------------------------------------------- argparse
def _eval_flags(p: argparse.ArgumentParser) -> None:
    from assistant.lm.config import MAX_K, GenerationSettings

    g = GenerationSettings()
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="evaluation prompts, JSON or JSONL (default: held-out prompts in assets/prompts.json)")
    p.add_argument("--limit", type=int, default=None, help="use at most N prompts (round-robin over the modes)")
    p.add_argument("-k", type=int, default=g.k, choices=range(1, MAX_K + 1), metavar="K",
                   help="candidates per evaluation prompt (default %(default)s); compare-rewards/sweep also use it "
                        "as the simulated loop's K (at least 2) unless k is swept")
    p.add_argument("--max-new-tokens", type=int, default=g.max_new_tokens, help="default %(default)s")
    p.add_argument("--temperature", type=float, default=g.temperature, help="default %(default)s")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _cycle_flags(p: argparse.ArgumentParser) -> None:
    from reward.loop.simulate import RATERS, SimConfig

    d = SimConfig()
    p.add_argument("--rater", required=True, choices=RATERS, help="the simulated rater in the person's place")
    p.add_argument("--budget", type=int, required=True, help="star ratings the rater gives in each run")
    p.add_argument("--algo", default=d.algo, choices=["reinforce", "a2c", "ppo"], help="RL algorithm (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="LoRA learning rate (default %(default)s)")
    p.add_argument("--kl-coef", type=float, default=d.kl_coef, help="KL penalty beta (default %(default)s)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default: LoraSettings' r)")
    p.add_argument("--rm-every", type=int, default=d.rm_every, help="retrain RM + RL every N ratings (default %(default)s)")
    p.add_argument("--rl-steps", type=int, default=d.rl_steps, help="RL updates per round (default %(default)s)")
    p.add_argument("--prompts-per-step", type=int, default=d.prompts_per_step, help="prompts per RL update (default %(default)s)")
    p.add_argument("--heldout-samples", type=int, default=d.heldout_samples,
                   help="pairs per held-out prompt for the rater's win-rate (default %(default)s)")
    p.add_argument("--noise", type=float, default=0.5, help="rater's star noise (default %(default)s)")
    p.add_argument("--sim-prompts", default=None, metavar="FILE",
                   help="prompt file for the simulated loop, with train and heldout splits (default assets/prompts.json); "
                        "fewer held-out prompts make each run's win-rate cheaper and wider")


def register(sub, parent) -> None:
    """`inkloop eval` with optional sub-commands compare-rewards and sweep."""
    p = sub.add_parser("eval", parents=[parent], help="evaluate a policy version; compare reward functions; sweep",
                       description="inkloop eval --version V: metrics of one policy version against the base "
                                   "(0 = the base). Sub-commands: compare-rewards, sweep. Each writes a report "
                                   "folder under <data-dir>/reports/.")
    p.add_argument("--version", type=int, default=None, metavar="V", help="policy version id (0 = base model)")
    p.add_argument("--rater", default=None, help="judge the win-rate with this simulated rater")
    _eval_flags(p)
    p.set_defaults(func=_wrap(cmd_eval))
    evsub = p.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")

    c = evsub.add_parser("compare-rewards", parents=[parent], help="the simulated-rater cycle once per reward design",
                         description="Run the simulated-rater cycle once per reward design (learned RM only; RM + "
                                     "fluency; RM + repetition/diversity; heuristics only) and report win-rate, KL, "
                                     "diversity and length for each.")
    _cycle_flags(c)
    _eval_flags(c)
    c.add_argument("--designs", default=None, help="comma-separated subset of: " + ", ".join(
        ["rm-only", "rm+fluency", "rm+rep/div", "heuristics"]))
    c.set_defaults(func=_wrap(cmd_compare_rewards))

    s = evsub.add_parser("sweep", parents=[parent], help="grid or random search over RL hyper-parameters",
                         description="Grid (or --random N) search over " + ", ".join(
                             f"{k} ({v[0]})" for k, v in SWEEP_PARAMS.items()) + ".")
    s.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2",
                   help="a swept parameter and its values; repeat for several (names: " + ", ".join(SWEEP_PARAMS) + ")")
    s.add_argument("--random", type=int, default=None, metavar="N", help="draw N settings from the grid at random")
    _cycle_flags(s)
    _eval_flags(s)
    s.set_defaults(func=_wrap(cmd_sweep))


def _wrap(fn):
    from assistant.app.cli.common import command

    def run(args):
        try:
            return command(fn)(args)
        except ValueError as e:
            from assistant.app.cli.common import fail

            return fail(str(e))

    run.__name__ = fn.__name__
    return run


def cmd_compare_rewards(args: argparse.Namespace) -> int:
    designs = reward_designs()
    if args.designs:
        wanted = [d.strip() for d in args.designs.split(",") if d.strip()]
        unknown = [d for d in wanted if d not in designs]
        if unknown:
            raise ValueError(f"unknown reward design(s) {unknown}; known: {', '.join(designs)}")
        designs = {d: designs[d] for d in wanted}
    settings = [{"name": name, "config": {"reward": name}, "reward_cfg": cfg, "overrides": {}} for name, cfg in designs.items()]
    return run_cycles(args, "compare-rewards", "Reward functions compared", settings,
                      notes=["Each run: the same simulated rater, budget and seed; only the reward design differs.",
                             "A design the policy games shows its own reward rising while the rater's win-rate "
                             "stays at or below 0.5, or diversity/length collapse."])


def cmd_sweep(args: argparse.Namespace) -> int:
    if not args.param:
        raise ValueError("sweep needs at least one --param NAME=V1,V2,...")
    params: dict[str, list[Any]] = {}
    for spec in args.param:
        name, values = parse_param(spec)
        params[name] = values
    grid = sweep_grid(params, args.random, seed=args.seed)
    settings = [{"name": "run%d" % (i + 1), "config": combo, "reward_cfg": None, "overrides": combo}
                for i, combo in enumerate(grid)]
    return run_cycles(args, "sweep", "Hyper-parameter sweep", settings,
                      notes=[f"{'random search: %d of the grid' % len(grid) if args.random else 'full grid'} over "
                             + ", ".join(f"{k}={v}" for k, v in params.items())])


# ----------------------------------------------------------------------------- running the cycles
def _lora(rank: int | None):
    from assistant.lm.config import LoraSettings

    return LoraSettings() if rank is None else LoraSettings(r=int(rank), alpha=2 * int(rank))


def _sim_config(args, overrides: dict[str, Any], reward_cfg):
    from reward.loop.simulate import SimConfig

    return SimConfig(
        budget=args.budget, algo=overrides.get("algo", args.algo), k=int(overrides.get("k", max(2, args.k))),
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, rm_every=args.rm_every,
        rl_steps=args.rl_steps, prompts_per_step=args.prompts_per_step, lr=float(overrides.get("lr", args.lr)),
        kl_coef=float(overrides.get("kl", args.kl_coef)), heldout_samples=args.heldout_samples, seed=args.seed,
        reward=reward_cfg, prompts_path=getattr(args, "sim_prompts", None),
    )


def _prompt_dict(ep: EvalPrompt) -> dict[str, Any]:
    kws = ep.options.get("keywords") or []
    if isinstance(kws, str):
        kws = [k.strip() for k in kws.split(",") if k.strip()]
    return {"mode": ep.mode, "text": ep.text, "keywords": kws}


def rater_utility(rater, prompts: Sequence[EvalPrompt], s: Samples) -> float:
    """Mean of the simulated rater's hidden utility over the candidates (no noise)."""
    vals = [u for ep, g in zip(prompts, s.groups) for u in rater.utilities(g, _prompt_dict(ep))]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def rater_judge(name: str, embedder=None, seed: int = 0) -> Judge:
    """A judge from a simulated rater (reward.evaluate.make_rater): its noisy pairwise preference."""
    from reward.loop.simulate import make_rater

    rater = make_rater(name, seed=seed)

    def judge(rp, a: str, b: str) -> float:
        v = rater.judge(a, b, {"mode": rp.mode, "text": rp.source_text, "keywords": rp.keywords})
        return 1.0 if v == 1.0 else (-1.0 if v == 0.0 else 0.0)

    return judge


def verdict(m: dict[str, float], base: dict[str, float]) -> str:
    """A short reading of one run against the base: does the rater prefer it, and did the policy
    raise its own reward while the rater did not (gaming), or lose diversity / change length."""
    signs = []
    lo, hi, gain = m.get("eval/win_ci_low"), m.get("eval/win_ci_high"), m.get("eval/reward_gain", 0.0)
    if lo is not None and lo > 0.5:
        signs.append("rater prefers it")
    elif hi is not None and hi < 0.5:
        signs.append("rater prefers the base")
    else:
        signs.append("no clear preference")
    if gain > 0.05 and (m.get("eval/win_rate", 0.5) <= 0.5 or m.get("eval/rater_utility_gain", 0.0) <= 0):
        signs.append("GAMED: own reward up, rater not")
    d0, d1 = base.get("eval/distinct_2"), m.get("eval/distinct_2")
    if d0 and d1 is not None and d1 < d0 - 0.1:
        signs.append("diversity collapsed")
    l0, l1 = base.get("eval/length_words"), m.get("eval/length_words")
    if l0 and l1 is not None and abs(l1 - l0) > 0.5 * l0:
        signs.append("length " + ("inflated" if l1 > l0 else "collapsed"))
    return "; ".join(signs)


def run_cycles(args: argparse.Namespace, kind: str, title: str, settings: list[dict[str, Any]],
               notes: Sequence[str] = ()) -> int:
    """Run reward.evaluate.simulate once per setting, measure each final policy on the evaluation
    prompts against the base, and write the report."""
    import gc

    from assistant.app.cli.common import data_dir, load_models, policy_source
    from assistant.app.services import Services
    from assistant.lm.config import GenerationSettings
    from assistant.lm.generate import Generator
    from assistant.lm.library import Library
    from assistant.lm.models import embedder_name
    from reward.eval.report import write_report
    from reward.functions import RewardConfig, RewardFunction, embed_with
    from reward.loop.simulate import fresh_copy, make_rater, simulate
    from reward.rl.policy import Policy
    from reward.train import load_live_reward_model
    from storage.store import Store

    prompts = spread(load_prompts(args.prompts), args.limit)
    gen = _generation(args)
    gen.validate()
    for st in settings:  # fail on bad settings before any model loads
        cfg = _sim_config(args, st["overrides"], st["reward_cfg"])
        from reward.rl.config import RLConfig

        RLConfig(algo=cfg.algo, k=cfg.k, lr=cfg.lr, kl_coef=cfg.kl_coef).validate()
        if cfg.budget < 1:
            raise ValueError("--budget must be >= 1")
    lm, embedder = load_models(args, with_embedder=True)
    base_model, tok = lm.model, lm.tokenizer
    rater = make_rater(args.rater, seed=args.seed, noise=args.noise)
    embed = embed_with(embedder)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs_root = Path(data_dir(args)) / "eval-runs" / f"{stamp}-{kind}"
    t_all = time.perf_counter()

    # the base policy on the evaluation prompts (the same for every run: same model, same seed)
    _say(f"{kind}: base model on {len(prompts)} evaluation prompts (K={gen.k})")
    base_gen = Generator(fresh_copy(base_model), tok, device=lm.device)
    base_s = sample_version(base_gen, prompts, gen, None)
    base_m = sample_metrics(base_gen, prompts, base_s)
    base_m["eval/rater_utility"] = rater_utility(rater, prompts, base_s)
    rows: list[dict[str, Any]] = [{"name": "base", "config": {}, "metrics": base_m,
                                   "samples": [{"mode": p.mode, "text": p.text, "candidates": g}
                                               for p, g in zip(prompts, base_s.groups)]}]

    for i, st in enumerate(settings):
        name = st["name"]
        _say(f"[{i + 1}/{len(settings)}] {kind} {name}: {st['config']} (rater={args.rater}, budget={args.budget})")
        ddir = runs_root / name.replace("/", "-").replace("+", "-")
        ddir.mkdir(parents=True, exist_ok=True)
        store = Store(ddir / "inkloop.db")
        profile = "sim"
        try:
            generator = Generator(fresh_copy(base_model), tok, version_source=policy_source(store, profile), device=lm.device)
            services = Services(store, generator, Library(store, embedder, embedder_name(embedder)), model_name=lm.name,
                                generation=GenerationSettings(), default_profile=profile)
            policy = Policy.from_base(fresh_copy(base_model), tok, _lora(st["overrides"].get("rank", args.rank)))
            cfg = _sim_config(args, st["overrides"], st["reward_cfg"])
            res = simulate(services, policy, embedder, make_rater(args.rater, seed=args.seed, noise=args.noise), cfg,
                           ddir, profile=profile, progress=_say)
            # the final policy (the live version of this run) on the evaluation prompts
            live = store.live_version(profile, "policy")
            s = sample_version(generator, prompts, gen, (live.id, live.path) if live else None)
            rm = load_live_reward_model(store, profile, embedder)
            design = cfg.reward if cfg.reward is not None else RewardConfig.only(rm=1.0, repetition=cfg.repetition_weight)
            reward_fn = RewardFunction(design, rm=rm, embed=embed, fluency=fluency_fn(generator))
            m = sample_metrics(generator, prompts, s, reward_fn)
            base_under = sample_metrics_reward_only(base_gen, prompts, base_s, reward_fn)
            m["eval/reward_base"] = base_under
            m["eval/reward_gain"] = m.get("eval/reward", 0.0) - base_under
            m["eval/rater_utility"] = rater_utility(rater, prompts, s)
            m["eval/rater_utility_gain"] = m["eval/rater_utility"] - base_m["eval/rater_utility"]
            m.update({"eval/win_rate": res.win_rate, "eval/win_ci_low": res.ci_low, "eval/win_ci_high": res.ci_high,
                      "eval/win_n": float(res.n_pairs), "eval/sim_kl_seq": res.kl, "eval/sim_kl_token": res.kl_per_token,
                      "eval/ratings": float(res.ratings), "eval/seconds": res.seconds,
                      "eval/final_rl_reward": _last(res.curves.get("rl/reward"))})
            m["eval/win_ci"] = f"[{res.ci_low:.2f}, {res.ci_high:.2f}]"
            m["eval/verdict"] = verdict(m, base_m)
            rows.append({"name": name, "config": st["config"], "metrics": m,
                         "curves": {k: [list(p) for p in v] for k, v in res.curves.items()},
                         "sim": {"policy_versions": res.policy_versions, "examples": res.examples, "rounds": res.rounds,
                                 "data_dir": str(ddir)},
                         "samples": [{"mode": p.mode, "text": p.text, "candidates": g} for p, g in zip(prompts, s.groups)]})
            _say(f"[{i + 1}/{len(settings)}] {name}: win-rate {res.win_rate:.2f} [{res.ci_low:.2f}, {res.ci_high:.2f}], "
                 f"KL {m['eval/kl']:.4f}/token, distinct-2 {m['eval/distinct_2']:.3f}, "
                 f"length {m['eval/length_words']:.1f} words — {m['eval/verdict']} "
                 f"({time.perf_counter() - t_all:.0f}s so far)")
        finally:
            store.close()
            policy = services = generator = None  # noqa: F841 - free the copies before the next run
            gc.collect()

    run_rows = rows[1:]
    from reward.eval.report import best_run

    best = best_run(run_rows, "eval/win_rate", tiebreak="eval/rater_utility")
    settings_md = {"model": lm.name, "rater": f"{args.rater} ({rater.description})", "budget (ratings per run)": args.budget,
                   "algo": args.algo, "lr": args.lr, "kl_coef": args.kl_coef, "k": args.k,
                   "max_new_tokens": args.max_new_tokens, "rm_every": args.rm_every, "rl_steps": args.rl_steps,
                   "evaluation prompts": f"{len(prompts)} ({args.prompts or 'held-out split of assets/prompts.json'})",
                   "seed": args.seed, "run data": str(runs_root),
                   "total seconds": round(time.perf_counter() - t_all)}
    all_notes = list(notes) + [
        "win-rate: the simulated rater's pairwise judgement of the final policy against the base on held-out prompts "
        "(ties half), Wilson 95% CI. KL: exact per-token KL(final || base) on the final policy's own samples of the "
        "evaluation prompts. reward: the run's own reward function on those samples; reward gain = that minus the "
        "same function on the base's samples. rater utility: the rater's hidden utility (no noise), mean over candidates.",
    ]
    if best is not None:
        all_notes.append(f"best setting by win-rate: {best['name']} ({best['config']}), "
                         f"win-rate {best['metrics']['eval/win_rate']:.2f}.")
    folder = write_report(data_dir(args), kind, rows, title=title, settings=settings_md, notes=all_notes,
                          columns=RUN_COLUMNS, tiebreak="eval/rater_utility")
    _say(f"report: {folder}")
    if args.json:
        print(json.dumps({"report": str(folder), "best": best["name"] if best else None,
                          "runs": [{"name": r["name"], "config": r["config"], "metrics": r["metrics"]} for r in rows]},
                         indent=2, default=float))
    else:
        print((folder / "summary.md").read_text())
        print(f"report: {folder}")
    return 0


RUN_COLUMNS = [
    ("eval/win_rate", "win-rate", "{:.2f}"),
    ("eval/win_ci", "95% CI", "{}"),
    ("eval/kl", "KL/token", "{:.2e}"),
    ("eval/reward", "own reward", "{:.3f}"),
    ("eval/reward_gain", "reward gain", "{:+.3f}"),
    ("eval/rater_utility", "rater utility", "{:.3f}"),
    ("eval/distinct_2", "distinct-2", "{:.3f}"),
    ("eval/self_bleu", "self-BLEU", "{:.3f}"),
    ("eval/repetition", "repetition", "{:.3f}"),
    ("eval/length_words", "length (words)", "{:.1f}"),
    ("eval/perplexity", "ref. PPL", "{:.1f}"),
    ("eval/seconds", "seconds", "{:.0f}"),
    ("eval/verdict", "verdict", "{}"),
]


def _last(curve) -> float:
    return float(curve[-1][1]) if curve else float("nan")


def sample_metrics_reward_only(generator, prompts: Sequence[EvalPrompt], s: Samples, reward_fn) -> float:
    """Mean total reward of `reward_fn` on the samples `s` (e.g. the base's, under a run's design)."""
    txt = [t for g in s.groups for t in g]
    if not txt:
        return float("nan")
    with generator.lock:
        return float(reward_fn(rollout_prompts(prompts, s), txt).total.mean())
