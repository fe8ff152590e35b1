"""train_policy: RL updates on the person's recent requests until a StopRule says stop, written as a policy version."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from assistant.lm.adapters import ADAPTER_SUBDIR
from assistant.lm.config import MODES, LoraSettings
from reward.config import RewardTrainConfig
from reward.feedback import build_training_data, drawn_texts
from reward.functions import RolloutPrompt
from reward.rl.budget import Budget, StopRule
from reward.rl.config import RLConfig
from reward.rl.policy import Policy
from reward.rl.preference import PolicyPair, preference_update
from reward.rl.rollout import rollout
from reward.rl.step import RewardFn, TrainerState, call_reward, rl_step
from storage.artifacts import save_version
from storage.records import ModelVersion

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- prompts from the store
def prompts_from_store(store, profile_id: str, limit: int = 64) -> list[RolloutPrompt]:
    """RolloutPrompts from the person's most recent requests (all modes) that stored a prompt."""

    out = []
    for req in store.recent_requests(profile_id, limit=limit):
        if req.mode in MODES and (req.prompt or "").strip():
            out.append(RolloutPrompt.from_request(req))
    return out

def policy_pairs(groups: Sequence[dict[str, Any]], data) -> list[PolicyPair]:
    """The preference pairs of `data` (reward.feedback.build_training_data of the request groups
    `groups`, or a split of it) as PolicyPairs on their requests' rendered prompts: what the
    preference steps learn from (they skip a pair without a prompt: preference.usable) and what
    the learner's agreement metric scores."""
    by_id = {f"request:{g['request'].id}": g["request"] for g in groups}
    return [PolicyPair(by_id[p.group].prompt, p.chosen, p.rejected, p.weight) for p in data.pairs if p.group in by_id]

def served_pairs(requests: Sequence[Any], score: Callable[[Any, list[str]], Sequence[float]],
                 min_gap: float = 0.0) -> list[PolicyPair]:
    """The reward model's best over its worst of each request's drawn candidates, as PolicyPairs on
    the request's rendered prompt: online iterative preference training on the policy's own
    samples (Xiong et al. 2024, arXiv 2405.07863; best-of-N distilled as in BoNBoN 2406.00832),
    for free: the candidates were drawn to serve the request. `score(request, texts)` gives one
    score per text (the reward-guided choice's standardised conservative score); a pair's weight is
    the best-worst gap in those units, capped at 1, and a request whose gap is not above `min_gap`
    gives none (the reward model cannot tell its candidates apart)."""
    out = []
    for req in requests:
        texts = drawn_texts(req)
        if len(texts) < 2 or not (getattr(req, "prompt", "") or "").strip():
            continue
        s = np.asarray(score(req, texts), np.float64)
        hi, lo = int(np.argmax(s)), int(np.argmin(s))
        gap = float(s[hi] - s[lo])
        if np.isfinite(gap) and gap > min_gap:
            out.append(PolicyPair(req.prompt, texts[hi], texts[lo], min(1.0, gap)))
    return out


def pairs_from_store(store, profile_id: str, tie_pick_weight: float = RewardTrainConfig.tie_pick_weight
                     ) -> list[PolicyPair]:
    """All of the person's rated pairs as PolicyPairs, weighted as the learner weighs them
    (tie_pick_weight: reward.feedback)."""
    groups = store.requests_with_feedback(profile_id)
    return policy_pairs(groups, build_training_data(groups, tie_pick_weight))

def has_adapter(version: ModelVersion) -> bool:
    """The version's directory holds a policy adapter (else it trains from the base model)."""
    return Path(version.path, ADAPTER_SUBDIR).exists()


def policy_of(lm_model: nn.Module, tokenizer, version: ModelVersion | None,
              lora_cfg: LoraSettings | None = None) -> Policy:
    """A trainable Policy on the clean base model `lm_model`: `version`'s adapter and value head,
    or a fresh LoRA when there is no version or it holds no adapter."""
    if version is not None and has_adapter(version):
        return Policy.load(lm_model, tokenizer, version.path, lora_cfg)
    return Policy.from_base(lm_model, tokenizer, lora_cfg)


def sample_prompts(pool: Sequence[RolloutPrompt], n: int, rng: random.Random) -> list[RolloutPrompt]:
    """n prompts cycling through the modes present in the pool (so every mode is trained on),
    a random request within each mode."""
    if not pool:
        raise ValueError("no requests to learn from yet: ask for some suggestions first")
    by_mode: dict[str, list[RolloutPrompt]] = {}
    for p in pool:
        by_mode.setdefault(p.mode, []).append(p)
    modes = list(by_mode)
    rng.shuffle(modes)
    return [rng.choice(by_mode[modes[i % len(modes)]]) for i in range(n)]

def heldout_reward(policy: Policy, prompts: Sequence[RolloutPrompt], reward_fn: RewardFn, cfg: RLConfig,
                   rule: StopRule, seed: int, pause: Callable[[], Any] | None = None) -> float:
    """Mean reward of the policy's samples on held-out prompts (rule.heldout_samples each). Every
    check draws with the same seed, so two checks differ by the policy, not by sampling noise;
    the training's own random stream is left where it was."""
    check = dataclasses.replace(cfg, k=rule.heldout_samples, max_new_tokens=rule.heldout_max_new_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ro = rollout(policy, prompts, check, pause=pause)
    total = np.asarray(call_reward(reward_fn, ro.prompts, ro.texts, {}).total, np.float64)
    return float(total.mean()) if total.size else float("nan")

def _mean_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for h in history for k, v in h.items() if isinstance(v, (int, float))}
    out = {}
    for k in sorted(keys):
        vals = [float(h[k]) for h in history if isinstance(h.get(k), (int, float)) and math.isfinite(float(h[k]))]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out

def train_policy(
    store,
    data_dir: str | Path,
    profile_id: str,
    lm_model: nn.Module | None,
    tokenizer,
    reward_fn: RewardFn,
    cfg: RLConfig,
    steps: int | StopRule,
    publish: bool = False,
    parent=None,
    *,
    policy: Policy | None = None,
    state: TrainerState | None = None,
    prompts: Sequence[RolloutPrompt] | None = None,
    heldout: Sequence[RolloutPrompt] | None = None,
    pairs: Sequence[PolicyPair] | None = None,
    served: Sequence[PolicyPair] | None = None,
    lora_cfg: LoraSettings | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    extra_config: dict[str, Any] | None = None,
):
    """Run RL updates until `steps` says stop and write a new policy version. Returns
    (ModelVersion, metrics).

    `steps` is a number of updates, or a StopRule (reward.rl.budget): a CPU-time budget, a cap on
    updates, the KL bound, patience on the reward of the policy's samples on the `heldout` prompts
    (checked before the first update and after each; needs `heldout`). metrics get rl/steps,
    rl/seconds (CPU) and rl/stop_reason (an index into budget.STOP_REASONS; config.json has the
    name); each step's series gets rl/heldout_reward when checked. With `pairs` (the person's
    rated pairs) and cfg.pref_pairs > 0, each update starts with a preference update
    (reward.rl.preference) on up to cfg.pref_pairs of them, drawn afresh each time, together with
    up to cfg.served_pairs of `served` (the reward model's best over worst of the person's
    requests' drawn candidates, served_pairs); its pref/* metrics join the update's.

    The policy to train is, in order: `policy` (an in-memory Policy; pass its TrainerState as
    `state` to continue with its optimizer and KL coefficient), else the version `parent` (a ModelVersion or id) loaded onto `lm_model`, else the
    profile's live policy, else a fresh LoRA on `lm_model`. `lm_model` must be a clean base model
    (peft injects the adapter into it). Rollout prompts come from the person's recent requests
    unless `prompts` is given. Per-step metrics are logged in the store under the new version
    (steps 1..n; step 0 is the summary that add_version logs);
    metrics.json holds their means over the steps plus the last step's reward and KL. To keep
    training the same weights in memory across calls (the learner), build the Policy once and
    pass it as `policy=`."""

    cfg.validate()
    rule = steps if isinstance(steps, StopRule) else StopRule(steps=int(steps))
    if not isinstance(steps, StopRule) and steps < 1:
        raise ValueError("steps must be >= 1")
    rule.validate()
    if rule.patience and not heldout:
        raise ValueError("patience needs held-out prompts to check the policy on")
    parent_id = parent.id if isinstance(parent, ModelVersion) else parent
    if policy is None:
        if lm_model is None:
            raise ValueError("train_policy needs lm_model or policy")
        src = store.get_version(int(parent_id)) if parent_id is not None else store.live_version(profile_id, "policy")
        policy = policy_of(lm_model, tokenizer, src, lora_cfg)
        if src is not None and has_adapter(src):
            parent_id = src.id
    pool = list(prompts) if prompts is not None else prompts_from_store(store, profile_id, cfg.recent_requests)
    state = state if state is not None else TrainerState()
    rng = random.Random(cfg.seed)
    budget = Budget(rule)
    check_seed = 0 if cfg.seed is None else cfg.seed

    def check() -> float | None:
        if not budget.checks_heldout():
            return None
        return heldout_reward(policy, heldout, reward_fn, cfg, rule, check_seed, state.pause_point)

    if not pool:
        raise ValueError("no requests to learn from yet: ask for some suggestions first")
    budget.start(start_score := check())
    history = []
    pref_pool = list(pairs or []) if cfg.pref_pairs else []
    served_pool = list(served or []) if cfg.served_pairs else []
    while budget.reason is None:
        batch = (rng.sample(pref_pool, min(cfg.pref_pairs, len(pref_pool)))
                 + rng.sample(served_pool, min(cfg.served_pairs, len(served_pool))))
        pref = preference_update(policy, state, batch, cfg) if batch else {}
        m = {**pref, **rl_step(policy, state, sample_prompts(pool, cfg.prompts_per_step, rng), reward_fn, cfg)}
        score = check()
        if score is not None:
            m["rl/heldout_reward"] = score
        budget.after_step(m, score)
        history.append(m)
        if on_step is not None:
            on_step(len(history) - 1, m)
    metrics = _mean_metrics(history)
    metrics.update(budget.metrics())
    if start_score is not None:
        metrics["rl/heldout_reward_start"] = start_score
        metrics["rl/heldout_reward_final"] = float(history[-1]["rl/heldout_reward"])
    metrics["rl/final_reward"] = float(history[-1].get("rl/reward", float("nan")))
    metrics["rl/final_kl"] = float(history[-1].get("rl/kl", float("nan")))
    metrics["rl/skipped_updates"] = float(sum(1 for h in history if h.get("rl/skipped")))
    reward_cfg = getattr(reward_fn, "cfg", None)
    config = {
        "rl": asdict(cfg),
        "lora": asdict(policy.lora),
        "kl_coef_now": state.kl_coef,
        "stop": {**{k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in asdict(rule).items()},
                 "reason": budget.reason},
        "reward": asdict(reward_cfg) if reward_cfg is not None and hasattr(reward_cfg, "__dataclass_fields__") else None,
        **(extra_config or {}),
    }
    version = save_version(
        store, data_dir, kind="policy", profile_id=profile_id, writer=policy.save,
        metrics=metrics, config=config, parent_id=parent_id, publish=publish,
    )
    # step 0 of the version's series is its summary (store.add_version); updates are steps 1..n
    for i, h in enumerate(history):
        store.log_metrics(version.id, {k: v for k, v in h.items() if isinstance(v, (int, float))}, step=i + 1)
    return version, metrics
