"""The simulated human-in-the-loop run: the shipped learner cycle with a rater in the person's place.

    prompts (assets/prompts.json, three modes, train split)
      -> assistant.suggest (the app's real path: the generator with the live policy, K candidates,
         recorded in the store)
      -> the rater's stars for every candidate and its best pick, through assistant.feedback
         (source="simulated"), exactly the path the UI takes
      -> whenever the learner's rule says so (LearnerConfig.min_new_feedback new ratings) and the
         learner is free, one Learner.run_once(): retrain the reward model, recheck the live
         version, RL, the guards, evaluate, publish or discard (the same cycle, guards and publish
         path as `inkloop serve`). With ``learner_seconds_per_rating`` S > 0 the learner's compute
         is rationed as in the product: each rating gives it S CPU-seconds (the time the person
         spends reading and rating), each cycle spends its measured process CPU time, and a cycle
         that is due while the learner is still in debt waits (the learner was busy). A cycle that
         runs may spend everything earned and not yet spent (``Learner.run_once(cpu_seconds=)``):
         its RL runs for what the reward model, the recheck and the evaluation leave of that, so
         the learner uses the time the person spends writing, no more. The one optimism left: a
         cycle's version is served as soon as the cycle ends, not S * its length later.
      -> the generator hot-swaps the published adapter before the next suggestion

The rater reaches the policy only through stored feedback. At the end it judges, pairwise, the live
policy's suggestions against the base model's on held-out prompts (never rated in training):
wins / ties / losses, win-rate with a Wilson 95 % interval (ties count half). KL is the live
version's eval/kl, measured by the learner on its held-out samples.

The app is reached through the `Assistant` protocol, so this module never imports the app layer:
assistant.app.simulation adapts the Services facade to it.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from reward.eval.prompts import EvalPrompt, load_prompts
from reward.eval.quality import win_rate
from reward.eval.raters import Rater, rate_suggestions
from reward.loop.config import SimConfig
from reward.loop.learner import Learner
from reward.rl.budget import stop_reason

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the app, as the rater sees it
@dataclass
class Shown:
    """The candidates one request showed: their suggestion ids (empty when not recorded), texts and
    the policy version that wrote them."""

    ids: list[int]
    texts: list[str]
    policy_version: int


class Assistant(Protocol):
    def suggest(self, prompt: EvalPrompt, k: int, seed: int | None, *, variety: bool = False,
                record: bool = True, choice: bool | None = None) -> Shown:
        """Suggestions for `prompt` from the live policy; `record=False` leaves the store untouched
        (the held-out comparison); `choice` turns the reward-guided choice on or off (None: the
        app's default: on once the profile has a reward model)."""

    def feedback(self, suggestion_id: int, kind: str, value: Any = None, source: str = "simulated") -> Any:
        """One rating, through the path the UI takes."""


@dataclass
class SimResult:
    rater: str
    algo: str
    ratings: int
    wins: int
    ties: int
    losses: int
    win_rate: float
    """(wins + ties / 2) / pairs, with the Wilson interval below."""
    ci_low: float
    ci_high: float
    n_pairs: int
    kl: float
    """The live version's eval/kl: KL(live || base) per reply on the learner's held-out samples."""
    seconds: float
    curves: dict[str, list[tuple[int, float]]]
    """name -> [(ratings so far, value)]: sim/stars and sim/utility per request; rm/accuracy,
    rl/reward, rl/kl, eval/kl per learner cycle."""
    cycles: list[dict[str, Any]] = field(default_factory=list)
    """Each learner cycle: ratings so far, outcome, reason, version id, guards fired."""
    policy_versions: list[int] = field(default_factory=list)
    """The versions published, in order."""
    examples: list[dict[str, str]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    heldout: dict[str, list[list[str]]] = field(default_factory=dict)
    """Held-out texts per prompt: base (before any rating), final (the live policy with the
    reward-guided choice, what the person is shown) and final_policy (the live policy alone)."""
    learner_cpu_s: float = 0.0
    """Process CPU seconds the learner's cycles took in all."""
    postponed: int = 0
    """Due learner cycles postponed because the learner had spent more than it earned."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Each rated request in order: the prompt (EvalPrompt fields), its sampling seed, the policy
    version that answered, the texts shown and their stars (so a benchmark can ask the base model
    the same requests: benchmarks/learning.py's stars control)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.rater:9s} {self.algo:9s} ratings={self.ratings:4d} win-rate={self.win_rate:.3f} "
            f"[{self.ci_low:.3f}, {self.ci_high:.3f}] W/T/L={self.wins}/{self.ties}/{self.losses} "
            f"KL={self.kl:.3f} cycles={len(self.cycles)} published={len(self.policy_versions)} {self.seconds:.0f}s"
        )


def interleave_modes(prompts: Sequence[EvalPrompt], rng: random.Random) -> list[EvalPrompt]:
    """Shuffle within each mode, then take the modes in turn (continue, restyle, inspire, ...)."""
    by: dict[str, list[EvalPrompt]] = {}
    for p in prompts:
        by.setdefault(p.mode, []).append(p)
    for v in by.values():
        rng.shuffle(v)
    out: list[EvalPrompt] = []
    while any(by.values()):
        for m in sorted(by):
            if by[m]:
                out.append(by[m].pop())
    return out


# ----------------------------------------------------------------------------- the run
def simulate(assistant: Assistant, learner: Learner, rater: Rater, cfg: SimConfig,
             progress: Callable[[str], None] | None = None,
             base_heldout: list[list[str]] | None = None) -> SimResult:
    """Run the loop with `rater` in the person's place (see the module doc). `learner` is the
    product's Learner on the same store and profile as `assistant`. `base_heldout`: the base
    model's held-out suggestions for this config's seed from an earlier run (they depend on the
    seed and the prompts only, not on the rater), so that they are not generated again."""
    say = progress or log.info
    t0 = time.perf_counter()
    rng = random.Random(cfg.seed)
    train = load_prompts(cfg.prompts_path, split="train")
    held = load_prompts(cfg.prompts_path, split="heldout")
    if cfg.heldout_limit:
        held = held[: cfg.heldout_limit]
    curves: dict[str, list[tuple[int, float]]] = {
        k: [] for k in ("sim/stars", "sim/utility", "rm/accuracy", "rl/reward", "rl/kl", "eval/kl")}

    def heldout(tag: str, choice: bool | None = None) -> list[list[str]]:
        out = []
        for j, p in enumerate(held):
            s = assistant.suggest(p, cfg.heldout_samples, seed=cfg.seed * 1000 + j, record=False, choice=choice)
            out.append((list(s.texts) + [""] * cfg.heldout_samples)[: cfg.heldout_samples])
        say(f"[{tag}] held-out suggestions for {len(held)} prompts (policy v{s.policy_version})")
        return out

    # 0. the base model's held-out suggestions (generated, not recorded or rated)
    base_held = base_heldout if base_heldout is not None else heldout("base")

    ratings, cycles, published, order, empty_in_a_row = 0, [], [], [], 0
    earned = spent = 0.0  # the learner's CPU-seconds (learner_seconds_per_rating)
    postponed = 0
    requests: list[dict[str, Any]] = []
    while ratings < cfg.budget:
        if not order:
            order = interleave_modes(train, rng)
        p = order.pop(0)
        # 1. the person asks; the live policy answers through the app's real path
        seed = rng.randrange(1 << 30)
        shown = assistant.suggest(p, cfg.k, seed=seed, variety=cfg.variety)
        if not shown.texts:
            empty_in_a_row += 1
            if empty_in_a_row >= 20:
                raise RuntimeError("the generator returned no usable suggestion for 20 requests in a row")
            continue
        empty_in_a_row = 0
        # 2. stars and the best pick, through the UI's feedback path
        stars = rate_suggestions(rater, p.fields(), shown.ids, shown.texts, cfg.budget - ratings, assistant.feedback)
        ratings += len(stars)
        earned += cfg.learner_seconds_per_rating * len(stars)
        curves["sim/stars"].append((ratings, float(np.mean(stars))))
        curves["sim/utility"].append((ratings, float(np.mean(rater.utilities(shown.texts, p.fields())))))
        requests.append({"prompt": asdict(p), "seed": seed, "policy_version": shown.policy_version,
                         "texts": list(shown.texts), "stars": list(stars)})
        say(f"  {ratings}/{cfg.budget} ratings: stars {stars} (policy v{shown.policy_version})")
        # 3. the learner, by its own rule (and once more at the end of the budget)
        due = learner.new_feedback() >= learner.cfg.min_new_feedback
        if not due and ratings < cfg.budget:
            continue
        if cfg.learner_seconds_per_rating > 0 and spent > earned:
            postponed += 1  # the learner is still busy with the last cycle
            continue
        allowance = earned - spent if cfg.learner_seconds_per_rating > 0 else None
        c0 = time.process_time()
        res = learner.run_once(force=ratings >= cfg.budget, cpu_seconds=allowance)
        spent += time.process_time() - c0
        if res.outcome == "skipped":
            continue
        m = res.metrics
        for name in ("rm/accuracy", "rl/reward", "rl/kl", "eval/kl"):
            if name in m and np.isfinite(m[name]):
                curves[name].append((ratings, float(m[name])))
        cycles.append({"ratings": ratings, "outcome": res.outcome, "reason": res.reason,
                       "version": res.version_id, "guards": [g.guard for g in res.guards],
                       "cpu_s": round(spent, 1), "earned_s": round(earned, 1),
                       "allowance_s": None if allowance is None else round(allowance, 2),
                       "rl_s": m.get("rl/seconds"), "rl_steps": m.get("rl/steps"),
                       "stop": stop_reason(m)})
        if res.outcome == "published":
            published.append(int(res.version_id))
        say(f"cycle {len(cycles)} at {ratings} ratings: {res.outcome} — {res.reason} ({time.perf_counter() - t0:.0f}s)")

    # 4. the live policy against the base, judged by the rater on held-out prompts
    final_held = heldout("final")  # what the person is shown: with the reward-guided choice
    # with no policy ever published the live policy is the base model: the same seeds give the same texts
    policy_held = heldout("final, policy alone", choice=False) if published else base_held
    outcomes, examples = [], []
    for p, bs, fs in zip(held, base_held, final_held):
        outcomes += [rater.judge(f, b, p.fields()) for b, f in zip(bs, fs)]
        if len(examples) < 6:
            examples.append({"prompt": p.text or ", ".join(p.fields().get("keywords") or []),
                             "base": bs[0], "final": fs[0]})
    wins = sum(1 for o in outcomes if o == 1.0)
    losses = sum(1 for o in outcomes if o == 0.0)
    ties = len(outcomes) - wins - losses
    wr = win_rate(wins, losses, ties)
    live = learner.store.live_version(learner.profile, "policy")
    kl = float(live.metrics.get("eval/kl", 0.0)) if live is not None else 0.0
    result = SimResult(
        rater=rater.name, algo=learner.cfg.rl.algo, ratings=ratings,
        wins=wins, ties=ties, losses=losses, win_rate=wr["win_rate"], ci_low=wr["ci_low"], ci_high=wr["ci_high"],
        n_pairs=int(wr["n"]), kl=kl, seconds=time.perf_counter() - t0, curves=curves, cycles=cycles,
        policy_versions=published, examples=examples, config=asdict(cfg),
        heldout={"base": base_held, "final": final_held, "final_policy": policy_held},
        learner_cpu_s=spent, postponed=postponed, requests=requests,
    )
    learner.store.log_metrics(live.id if live else None, {
        "eval/sim_win_rate": result.win_rate, "eval/sim_win_ci_low": result.ci_low,
        "eval/sim_win_ci_high": result.ci_high, "eval/sim_kl": result.kl,
    })
    say(result.summary())
    return result
