"""Simulated raters and the simulated human-in-the-loop cycle: the proof that the loop learns.

A `Rater` stands in for a person. It has a hidden taste (a utility in [0, 1] computed from the
text; never shown to the learner) and noise. `simulate(...)` runs the whole cycle with the rater
in the person's place:

    prompts (assets/prompts.json, three modes, train split)
      -> services.suggest (the real generator with the live policy, K candidates, recorded)
      -> the rater's stars for every candidate and its best pick, through services.feedback
         (source="simulated"), exactly the path the UI takes
      -> every `rm_every` ratings: retrain the reward model from the store (reward.train)
      -> RL updates against it (reward.policy.train_policy), publish the new policy version
      -> the generator hot-swaps the new adapter before the next suggestion

The rater reaches the policy only through stored feedback: the reward the policy is trained on is
the learned reward model (plus a small repetition penalty), never the rater's utility.

At the end the rater judges, pairwise, the final policy's suggestions against the base model's on
held-out prompts (never rated in training): win-rate with a Wilson 95 % interval (ties count half).
KL(final || base) is measured on the policy's own samples of the held-out prompts.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from assistant.lm.config import ASSETS
from reward.eval.quality import win_rate, words

log = logging.getLogger(__name__)

PROMPTS_FILE = ASSETS / "prompts.json"


# ----------------------------------------------------------------------------- raters
SENSORY_WORDS = frozenset(
    """red crimson scarlet gold golden silver amber blue green grey gray white black bright dark glowing
    glittering shimmering sparkling pale shadow shadows light sunlight moonlight candlelight flicker
    flickering loud quiet silent silence whisper whispered whispering roar roaring hum humming buzz
    crackle crackling rustle rustling creak creaking echo echoed ringing thunder hiss hissing
    soft rough smooth silky velvet cold icy warm hot damp wet sticky sharp prickly heavy
    smell smelled scent fragrant smoky smoke salt salty sweet bitter sour spicy taste tasted
    perfume musty fresh rain wind breeze fog mist dust rust wood stone""".split()
)
UPBEAT_WORDS = frozenset(
    """happy happily joy joyful glad bright cheerful delight delighted delightful love loved lovely
    wonderful beautiful hope hopeful smile smiled smiling laugh laughed laughing laughter fun
    excited exciting amazing great good best kind warm friendly proud celebrate celebrated
    success successful win won grateful thank thanks sunny shine shining""".split()
)
DOWNBEAT_WORDS = frozenset(
    """sad sadly sorrow grief cry cried crying tears fear afraid scared gloom gloomy angry anger hate
    hated pain painful hurt lonely lost loss death dead die died dying grim broken fail failed
    failure dread worry worried terrible awful horrible miserable bleak cruel never nothing""".split()
)


@dataclass
class Rater:
    """A simulated person: a hidden utility over texts, plus noise in how it reports it.

    Stars = round(1 + 4 * utility + N(0, star_noise)) clipped to 1..5; the best pick is the argmax
    of utility + N(0, pick_noise); a pairwise judgement compares utility + N(0, pick_noise) (equal
    utilities are a tie: the rater has no preference)."""

    name: str
    utility: Callable[[str, dict[str, Any]], float]
    description: str
    star_noise: float = 0.5
    pick_noise: float = 0.05
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def utilities(self, texts: Sequence[str], prompt: dict[str, Any]) -> np.ndarray:
        return np.asarray([self.utility(t, prompt) for t in texts], np.float64)

    def stars(self, texts: Sequence[str], prompt: dict[str, Any]) -> list[int]:
        u = self.utilities(texts, prompt)
        s = np.rint(1 + 4 * u + self.rng.normal(0, self.star_noise, len(u)))
        return [int(x) for x in np.clip(s, 1, 5)]

    def best(self, texts: Sequence[str], prompt: dict[str, Any]) -> int:
        u = self.utilities(texts, prompt) + self.rng.normal(0, self.pick_noise, len(texts))
        return int(np.argmax(u))

    def judge(self, a: str, b: str, prompt: dict[str, Any]) -> float:
        """1 if the rater prefers a, 0 if b, 0.5 if it has no preference."""
        ua, ub = self.utility(a, prompt), self.utility(b, prompt)
        if ua == ub:
            return 0.5
        na, nb = self.rng.normal(0, self.pick_noise, 2)
        return 1.0 if ua + na > ub + nb else 0.0


def _substance(text: str) -> float:
    """Raters dislike empty or broken suggestions whatever their taste: 0 for no words, 1 from 4."""
    return min(1.0, len(words(text)) / 4.0)


def concise_utility(text: str, prompt: dict[str, Any]) -> float:
    """Prefers short sentences and short suggestions: 1 at <= 8 words per sentence and <= 15 words."""
    ws = words(text)
    if not ws:
        return 0.0
    sentences = max(1, len(re.findall(r"[.!?]+(?:\s|$)", text)))
    per_sentence = len(ws) / sentences
    u = 1.0 - 0.5 * min(1.0, max(0.0, per_sentence - 8) / 16) - 0.5 * min(1.0, max(0.0, len(ws) - 15) / 30)
    return u * _substance(text)


def vivid_utility(text: str, prompt: dict[str, Any]) -> float:
    """Prefers vivid sensory words (colours, sounds, textures, smells): 1 at four of them."""
    hits = sum(1 for w in words(text) if w in SENSORY_WORDS)
    return min(1.0, hits / 4.0) * _substance(text)


def upbeat_utility(text: str, prompt: dict[str, Any]) -> float:
    """Prefers an upbeat tone: 0.5 + 0.5 * tanh((positive - negative) / 2) over its lexicons."""
    ws = words(text)
    pos = sum(1 for w in ws if w in UPBEAT_WORDS)
    neg = sum(1 for w in ws if w in DOWNBEAT_WORDS)
    return (0.5 + 0.5 * math.tanh((pos - neg) / 2.0)) * _substance(text)


def keyword_utility_factory(keywords: Sequence[str]) -> Callable[[str, dict[str, Any]], float]:
    kws = [k.lower() for k in keywords]

    def keyword_utility(text: str, prompt: dict[str, Any]) -> float:
        """Prefers suggestions that mention its keywords (and the request's own keywords):
        1 once two different ones appear."""
        wanted = set(kws) | {k.lower() for k in prompt.get("keywords") or []}
        low = text.lower()
        hits = sum(1 for k in wanted if re.search(r"\b" + re.escape(k), low))
        return min(1.0, hits / 2.0) * _substance(text)

    return keyword_utility


RATER_KEYWORDS = ("light", "home", "water", "heart", "friend")


def make_rater(name: str, seed: int = 0, noise: float = 0.5) -> Rater:
    """One of the built-in raters: concise, vivid, upbeat, keywords."""
    table: dict[str, tuple[Callable, str]] = {
        "concise": (concise_utility, "prefers concise suggestions with short sentences"),
        "vivid": (vivid_utility, "prefers vivid sensory words"),
        "upbeat": (upbeat_utility, "prefers an upbeat tone"),
        "keywords": (keyword_utility_factory(RATER_KEYWORDS),
                     f"prefers mentions of {', '.join(RATER_KEYWORDS)} (and of the request's keywords)"),
    }
    if name not in table:
        raise ValueError(f"unknown rater {name!r}; choose from {', '.join(RATERS)}")
    fn, desc = table[name]
    return Rater(name, fn, desc, star_noise=noise, seed=seed)


RATERS = ("concise", "vivid", "upbeat", "keywords")


class UtilityReward:
    """The rater's hidden utility as an RL reward, on the stars scale (1 + 4 * utility): the
    diagnostic reward of ``simulate --oracle-reward`` (see SimConfig.oracle_reward). It reads the
    utility directly, so it never draws on the rater's noise."""

    def __init__(self, rater: Rater):
        self.rater = rater

    def __call__(self, prompts: Sequence[Any], texts: Sequence[str]):
        from reward.functions import RewardOutput

        u = np.asarray([self.rater.utility(t, {"mode": p.mode, "text": p.source_text, "keywords": list(p.keywords)})
                        for p, t in zip(prompts, texts)], np.float32)
        return RewardOutput(1.0 + 4.0 * u, {"utility": u})


# ----------------------------------------------------------------------------- prompts
def load_prompts(path: str | Path | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, heldout) prompt dicts from assets/prompts.json (or `path`)."""
    p = Path(path) if path else PROMPTS_FILE
    if not p.exists():
        raise FileNotFoundError(f"no prompt file at {p}")
    data = json.loads(p.read_text())
    items = data["prompts"] if isinstance(data, dict) else data
    train = [x for x in items if x.get("split", "train") == "train"]
    held = [x for x in items if x.get("split") == "heldout"]
    if not train or not held:
        raise ValueError(f"{p} needs prompts in both the train and the heldout split")
    return train, held


def interleave_modes(prompts: Sequence[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Shuffle within each mode, then take the modes in turn (continue, restyle, inspire, ...)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for p in prompts:
        by.setdefault(p["mode"], []).append(p)
    for v in by.values():
        rng.shuffle(v)
    out, i = [], 0
    while any(by.values()):
        for m in sorted(by):
            if by[m]:
                out.append(by[m].pop())
        i += 1
    return out


def rate_suggestions(rater: Rater, prompt: dict[str, Any], ids: Sequence[int], texts: Sequence[str], limit: int,
                     feedback: Callable[..., Any]) -> list[int]:
    """The rater's stars for the first `limit` suggestions and, when it starred them all, its best
    pick, each given as ``feedback(suggestion_id, kind, value, source="simulated")`` (the UI's
    path, Services.feedback, or Store.add_feedback). Returns the stars."""
    stars = rater.stars(texts, prompt)[:limit]
    for sid, st in zip(ids, stars):
        feedback(sid, "stars", st, source="simulated")
    if len(texts) > 1 and len(stars) == len(texts):
        feedback(ids[rater.best(texts, prompt)], "best", source="simulated")
    return stars


def suggest_request(p: dict[str, Any], cfg: "SimConfig", profile: str, seed: int | None):
    from assistant.app.services import SuggestRequest

    return SuggestRequest(
        mode=p["mode"], text=p.get("text", ""), style=p.get("style"), sample=p.get("sample"),
        keywords=p.get("keywords"), inspire_kind=p.get("inspire_kind", "ideas"), k=cfg.k,
        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=seed, profile=profile,
        variety=cfg.variety,
    )


# ----------------------------------------------------------------------------- the simulation
@dataclass
class SimConfig:
    """One simulated human-in-the-loop run."""

    budget: int = 150
    """Star ratings the rater gives in total (one per suggestion shown)."""
    algo: str = "ppo"
    """RL algorithm: reinforce | a2c | ppo."""
    k: int = 4
    """Suggestions per request (the rater stars each and picks the best)."""
    max_new_tokens: int = 32
    """Generation length, for the suggestions shown and for RL rollouts."""
    temperature: float = 0.8
    """Sampling temperature (the UI's default)."""
    variety: bool = False
    """Show the rater candidates written from different angles (GenerationSettings.variety).
    RL rollouts and the held-out comparison use the prompt as asked either way."""
    rm_every: int = 24
    """Retrain the reward model and run RL after every this many ratings."""
    rl_steps: int = 4
    """RL updates per round."""
    prompts_per_step: int = 4
    """Prompts per RL update (each sampled k times)."""
    lr: float = 5e-4
    """LoRA learning rate."""
    ppo_epochs: int = 2
    """PPO epochs per batch (ppo only)."""
    minibatch_size: int = 16
    """Episodes per minibatch in the RL update."""
    kl_coef: float = 0.05
    """KL penalty against the base model (initial value when target_kl is set)."""
    target_kl: float | None = None
    """Adapt beta towards this KL per sequence (None: fixed beta). A simulation is short, so the
    controller's horizon is kl_horizon episodes rather than the thousands of a long run."""
    kl_horizon: float = 64.0
    """Horizon (episodes) of the adaptive KL controller."""
    rl_after: int = 0
    """No RL update before this many ratings: the reward model still retrains every round, but the
    policy waits until it has been learned from enough ratings to be worth following."""
    repetition_weight: float = 0.2
    """Weight of the repetition penalty added to the learned reward."""
    heldout_samples: int = 2
    """Suggestions per held-out prompt from each of base and final for the pairwise judgement."""
    prompts_path: str | None = None
    """Prompt file (default assets/prompts.json)."""
    seed: int = 0
    """Seeds the rater's noise, the prompt order and sampling."""
    rm_epochs: int = 40
    """Epochs of each reward-model retraining."""
    rm_features: tuple[str, ...] = ("s", "sc")
    """Feature blocks of the reward model (RewardTrainConfig.emb_features); add "words" for the
    hashed vocabulary block."""
    rm_ensemble: int = 1
    """Reward-model heads (RewardTrainConfig.ensemble); above 1, a bootstrap ensemble whose
    disagreement the RL reward subtracts (rm_uncertainty)."""
    rm_uncertainty: float = 1.0
    """Standard deviations of the ensemble's disagreement taken off the RL reward
    (RewardConfig.rm_uncertainty; ignored for one head)."""
    oracle_reward: bool = False
    """Diagnostic only: RL on the rater's hidden utility (UtilityReward) instead of the learned
    reward model. It breaks the rule that the rater reaches the policy only through feedback, so
    its win-rate is not a result of the loop: it is the ceiling RL reaches with a perfect reward
    model, which separates "RL cannot move the policy there" from "150 ratings do not teach the
    reward model the taste"."""
    reward: Any = None
    """The RL reward design: a reward.functions.RewardConfig (inkloop eval compare-rewards varies
    it); None = the learned reward model + repetition_weight * the repetition term."""


@dataclass
class SimResult:
    rater: str
    algo: str
    ratings: int
    win_rate: float
    ci_low: float
    ci_high: float
    n_pairs: int
    kl: float
    """KL(final || base) per sequence (sum over tokens, k1 on the policy's samples)."""
    kl_per_token: float
    seconds: float
    curves: dict[str, list[tuple[int, float]]]
    """name -> [(x, value)]: rl/reward, rl/kl per RL step; rm/accuracy per round; sim/stars
    (mean stars of each request's suggestions) per rating count; sim/utility likewise."""
    rounds: int = 0
    policy_versions: list[int] = field(default_factory=list)
    examples: list[dict[str, str]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.rater:9s} {self.algo:9s} ratings={self.ratings:4d} win-rate={self.win_rate:.3f} "
            f"[{self.ci_low:.3f}, {self.ci_high:.3f}] n={self.n_pairs} KL={self.kl:.3f} "
            f"({self.kl_per_token:.4f}/token) {self.seconds:.0f}s"
            + (" [oracle reward: a diagnostic ceiling, not a result of the loop]" if self.config.get("oracle_reward") else "")
        )


def measure_kl(policy, prompts: Sequence[Any], k: int, max_new_tokens: int, temperature: float) -> tuple[float, float]:
    """(mean per-sequence KL, mean per-token KL) of the policy to its reference, k1 on its own samples."""
    import torch

    from reward import losses as L
    from reward.rl.config import RLConfig
    from reward.rl.rollout import _policy_eval, _reference_logprobs, rollout

    cfg = RLConfig(k=k, max_new_tokens=max_new_tokens, temperature=temperature, minibatch_size=8)
    seq, tok = [], []
    with torch.no_grad():
        for i in range(0, len(prompts), 4):
            ro = rollout(policy, prompts[i : i + 4], cfg)
            lp, _, _ = _policy_eval(policy, ro, cfg)
            ref = _reference_logprobs(policy, ro, cfg)
            kl = L.kl_k1(lp, ref) * ro.mask
            seq.extend(kl.sum(1).tolist())
            tok.append((float(kl.sum()), float(ro.mask.sum())))
    n_tok = sum(n for _, n in tok)
    return float(np.mean(seq)) if seq else 0.0, (sum(s for s, _ in tok) / n_tok) if n_tok else 0.0


def simulate(
    services,
    policy,
    embedder,
    rater: Rater,
    cfg: SimConfig,
    data_dir: str | Path,
    profile: str = "sim",
    progress: Callable[[str], None] | None = None,
) -> SimResult:
    """Run the human-in-the-loop cycle with `rater` in the person's place (see the module doc).

    services: assistant.service.Services whose generator hot-swaps the live policy of `profile`
    (assistant.cli.policy_source); policy: a reward.policy.Policy on its own copy of the base
    model (the learner's weights); embedder: the reward model's sentence embedder."""
    from reward.functions import RewardConfig, RewardFunction, RolloutPrompt
    from reward.rl.config import RLConfig
    from reward.rl.train import train_policy
    from reward.train import RewardTrainConfig, save_reward_version, train_from_store

    if cfg.rl_after > cfg.budget:
        raise ValueError(f"rl_after ({cfg.rl_after}) must not exceed the budget ({cfg.budget}): there would be no RL")
    say = progress or (lambda m: log.info(m))
    t0 = time.perf_counter()
    store = services.store
    rng = random.Random(cfg.seed)
    train_prompts, held = load_prompts(cfg.prompts_path)
    curves: dict[str, list[tuple[int, float]]] = {
        k: [] for k in ("rl/reward", "rl/kl", "rm/accuracy", "sim/stars", "sim/utility")
    }

    # 0. the base model's suggestions on the held-out prompts (generated, not recorded or rated)
    from assistant.app.services import SuggestRequest  # noqa: F401 - documents the request type

    def heldout_texts(tag: str) -> list[list[str]]:
        out = []
        for j, p in enumerate(held):
            req = suggest_request(p, cfg, profile, seed=cfg.seed * 1000 + j)
            req.k = cfg.heldout_samples
            req.variety = False  # the policy itself, as asked, is what is compared
            prompt, _opts, _mat = services._prepare(req)
            res = services.generator.suggest(prompt, req.text or "", req.generation(services.generation_defaults))
            texts = list(res.texts) + [""] * (cfg.heldout_samples - len(res.texts))
            out.append(texts[: cfg.heldout_samples])
        say(f"[{tag}] generated held-out suggestions for {len(held)} prompts (policy v{services.generator.policy_version})")
        return out

    services.generator.refresh_policy()
    base_held = heldout_texts("base")

    rl_cfg = RLConfig(
        algo=cfg.algo, k=cfg.k, prompts_per_step=cfg.prompts_per_step, max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, lr=cfg.lr, kl_coef=cfg.kl_coef, seed=cfg.seed,
        ppo_epochs=cfg.ppo_epochs, minibatch_size=cfg.minibatch_size,
        adaptive_kl=cfg.target_kl is not None, target_kl=cfg.target_kl or RLConfig.target_kl,
        kl_horizon=cfg.kl_horizon,
    )
    rm_cfg = RewardTrainConfig(epochs=cfg.rm_epochs, seed=cfg.seed, shuffled_control=False,
                               emb_features=tuple(cfg.rm_features), ensemble=cfg.rm_ensemble)
    ratings, rounds, rl_step_no, next_round = 0, 0, 0, cfg.rm_every
    versions: list[int] = []
    order: list[dict[str, Any]] = []
    empty_in_a_row = 0
    while ratings < cfg.budget:
        if not order:
            order = interleave_modes(train_prompts, rng)
        p = order.pop(0)
        # 1. the person asks; the live policy answers through the real Services path
        resp = services.suggest(suggest_request(p, cfg, profile, seed=rng.randrange(1 << 30)))
        texts = [s["text"] for s in resp.suggestions]
        if not texts:
            empty_in_a_row += 1
            if empty_in_a_row >= 20:
                raise RuntimeError("the generator returned no usable suggestion for 20 requests in a row")
            continue
        empty_in_a_row = 0
        # 2. the rater's stars and best pick go through the same feedback path as the UI's
        stars = rate_suggestions(rater, p, [s["id"] for s in resp.suggestions], texts, cfg.budget - ratings,
                                 services.feedback)
        ratings += len(stars)
        say(f"  {ratings}/{cfg.budget} ratings: stars {stars} (policy v{resp.policy_version})")
        curves["sim/stars"].append((ratings, float(np.mean(stars))))
        curves["sim/utility"].append((ratings, float(np.mean(rater.utilities(texts, p)))))
        if ratings < next_round and ratings < cfg.budget:
            continue
        next_round += cfg.rm_every
        rounds += 1
        # 3. retrain the reward model on everything rated so far, publish it
        rm, rm_metrics = train_from_store(store, profile, embedder, rm_cfg)
        save_reward_version(store, data_dir, profile, rm, rm_metrics, rm_cfg, publish=True)
        acc = rm_metrics.get("rm/accuracy")
        if acc is not None and acc == acc:
            curves["rm/accuracy"].append((ratings, float(acc)))
        head = f"round {rounds}: {ratings} ratings, rm/accuracy={acc if acc is not None else float('nan'):.3f}"
        if ratings < cfg.rl_after:
            say(f"{head}, no RL before {cfg.rl_after} ratings ({time.perf_counter() - t0:.0f}s)")
            continue
        # 4. RL against the learned reward (the rater's utility is never used here), publish
        if cfg.reward is not None:
            reward_cfg = cfg.reward
        else:
            reward_cfg = replace(RewardConfig.only(rm=1.0, repetition=cfg.repetition_weight),
                                 rm_uncertainty=cfg.rm_uncertainty)
        reward_fn = UtilityReward(rater) if cfg.oracle_reward else RewardFunction(reward_cfg, rm=rm)

        def on_step(i: int, m: dict[str, float]) -> None:
            nonlocal rl_step_no
            rl_step_no += 1
            curves["rl/reward"].append((rl_step_no, float(m.get("rl/reward", float("nan")))))
            curves["rl/kl"].append((rl_step_no, float(m.get("rl/kl", float("nan")))))

        version, m = train_policy(
            store, data_dir, profile, None, policy.tokenizer, reward_fn, rl_cfg, cfg.rl_steps,
            publish=True, parent=versions[-1] if versions else None, policy=policy, on_step=on_step,
            extra_config={"simulated_rater": rater.name, "oracle_reward": cfg.oracle_reward},
        )
        versions.append(version.id)
        say(
            f"{head}, rl/reward={m.get('rl/final_reward', float('nan')):.3f}, rl/kl={m.get('rl/final_kl', float('nan')):.3f}, "
            f"policy v{version.id} published ({time.perf_counter() - t0:.0f}s)"
        )

    # 5. the final policy (hot-swapped into the generator) against the base, judged by the rater
    services.generator.refresh_policy()
    final_held = heldout_texts("final")
    outcomes, examples = [], []
    for p, bs, fs in zip(held, base_held, final_held):
        for b, f in zip(bs, fs):
            outcomes.append(rater.judge(f, b, p))
        if len(examples) < 6:
            examples.append({"prompt": p.get("text") or ", ".join(p.get("keywords") or []), "base": bs[0], "final": fs[0]})
    wins = sum(1 for o in outcomes if o == 1.0)
    losses_ = sum(1 for o in outcomes if o == 0.0)
    ties = len(outcomes) - wins - losses_
    wr = win_rate(wins, losses_, ties)
    held_rp = []
    for j, p in enumerate(held):
        prompt, _o, _m = services._prepare(suggest_request(p, cfg, profile, seed=None))
        from assistant.lm.prompts import render

        held_rp.append(RolloutPrompt(render(prompt, policy.tokenizer), p["mode"], source_text=p.get("text", "")))
    kl_seq, kl_tok = measure_kl(policy, held_rp, 2, cfg.max_new_tokens, cfg.temperature)
    result = SimResult(
        rater=rater.name, algo=cfg.algo, ratings=ratings, win_rate=wr["win_rate"], ci_low=wr["ci_low"],
        ci_high=wr["ci_high"], n_pairs=int(wr["n"]), kl=kl_seq, kl_per_token=kl_tok,
        seconds=time.perf_counter() - t0, curves=curves, rounds=rounds, policy_versions=versions,
        examples=examples, config=asdict(cfg),
    )
    store.log_metrics(versions[-1] if versions else None, {
        "eval/sim_win_rate": result.win_rate, "eval/sim_win_ci_low": result.ci_low,
        "eval/sim_win_ci_high": result.ci_high, "eval/sim_kl": result.kl,
    })
    say(result.summary())
    return result


def fresh_copy(model):
    """A deep copy of a clean base model (each run's generator and learner need their own)."""
    return copy.deepcopy(model)
