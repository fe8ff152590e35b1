"""Actor-critic RL on the writing policy: one readable update.

    Policy    = the base LM + a LoRA adapter (peft; the same LoraConfig for every version)
    Reference = the same model with the adapter disabled (``with model.disable_adapter()``; no copy)
    Critic    = a value head, nn.Linear(hidden, 1), on the policy's last hidden states

`rl_step` is one update, in numbered sections like cleanrl's ppo.py:

    1. rollout     K samples per prompt from the current policy, and their reference log-probs
    2. score       the composed reward (reward.functions) on the cleaned suggestion texts
    3. old policy  the rollout policy's log-probs and values, before any weight moves
    4. shape       per-token reward: -beta * KL(policy || reference) on every token, score on the last
    5. advantages  reinforce: Monte-Carlo return minus a baseline (leave-one-out over the K samples,
                   or a moving average); a2c / ppo: GAE(gamma, lambda) with the critic.
                   best of N (distill, or any algo with distill_coef > 0): the top m of each
                   prompt's K samples by score (optionally only those above the prompt's mean)
    6. update      one loop: epochs x minibatches, an optimizer step each. reinforce / a2c: one
                   epoch of one minibatch (one gradient step on the batch); ppo: several epochs of
                   minibatches on the clipped surrogate (importance ratio against the rollout
                   policy) plus a clipped value loss; distill: distill_epochs passes over the kept
                   samples only, on their NLL plus a k3 KL to the reference (RAFT / BoNBoN). With
                   distill_coef > 0 the actor-critic loss also gets distill_coef x that loss on
                   the minibatch's kept samples (the mix)
    7. KL control  fixed beta, or adaptive towards a target KL

Only LoRA and value-head weights ever receive gradients; the base stays frozen. LoRA and value-head
parameters are kept in float32 even when the base is bf16, and the forward runs under bf16 autocast
where the hardware supports it (assistant.lm.models.autocast_context).

Rollouts sample with the UI's temperature, but with top_p = 1 and no repetition penalty by default,
so the log-probabilities the update uses are exactly those of the sampling distribution (the
importance ratios start at 1). `train_policy` wraps several steps and writes a policy version
directory (adapter/ + value_head.safetensors + metrics.json + config.json) via storage.artifacts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from assistant.lm.logprobs import token_logprobs
from reward import losses as L
from reward.functions import RewardOutput, RolloutPrompt
from reward.rl.config import RLConfig
from reward.rl.policy import Policy
from reward.rl.rollout import Rollout, _policy_eval, _reference_logprobs, rollout

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the update
RewardFn = Callable[..., Any]

def accepts_extras(fn) -> bool:
    """Whether reward function `fn` takes the ``extras`` keyword (by name or **kwargs); a callable
    whose signature cannot be read is called without it."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "extras" or p.kind is p.VAR_KEYWORD for p in params)

def call_reward(reward_fn: RewardFn, prompts, texts, extras) -> RewardOutput:
    """reward_fn(prompts, texts[, extras=...]) -> RewardOutput or an array of per-sample rewards."""
    out = reward_fn(prompts, texts, extras=extras) if accepts_extras(reward_fn) else reward_fn(prompts, texts)
    if isinstance(out, RewardOutput):
        return out
    arr = np.asarray(out, np.float32)
    return RewardOutput(arr, {})

@dataclass
class TrainerState:
    """What the trainer carries from one update to the next (the Policy is only the model)."""

    kl_coef: float | None = None
    """beta now: RLConfig.kl_coef at the first step, then moved by the adaptive controller."""
    baseline: float | None = None
    """The moving-average REINFORCE baseline (RLConfig.baseline = "moving_average")."""
    optimizer: torch.optim.Optimizer | None = None
    """AdamW over the LoRA and value-head weights, built on the first update."""
    steps: int = 0
    """Updates done so far."""
    last_rollout: Rollout | None = None
    """The latest update's rollout, for inspection (tests, diagnostics)."""
    pause_point: Callable[[], Any] | None = None
    """Called at the update's safe points (every decode step of the rollout, every minibatch):
    where the learner yields the CPU to the app generating for a person (storage.locks.Hold)."""
    ref_logp: dict[tuple[str, str, int], float] = field(default_factory=dict)
    """The reference's sequence log-prob of (prompt, reply, token limit) in the preference steps
    (reward.rl.preference): the reference never changes, so a pair seen again costs no reference
    pass. The learner passes one dict to every cycle's state."""


def _optimizer(policy: Policy, state: TrainerState, cfg: RLConfig) -> torch.optim.Optimizer:
    if state.optimizer is None:
        state.optimizer = torch.optim.AdamW(
            [
                {"params": policy.lora_parameters(), "lr": cfg.lr},
                {"params": list(policy.value_head.parameters()), "lr": cfg.value_lr},
            ],
            weight_decay=cfg.weight_decay,
        )
    return state.optimizer

def _apply_grads(policy: Policy, opt: torch.optim.Optimizer, cfg: RLConfig, stats: dict[str, float]) -> bool:
    """Clip and step, unless the gradient is not finite (then skip the step and say so)."""
    norm = torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), cfg.max_grad_norm)
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        stats["rl/skipped_steps"] = stats.get("rl/skipped_steps", 0) + 1
        log.warning("non-finite gradient norm: optimizer step skipped, weights untouched")
        return False
    opt.step()
    opt.zero_grad(set_to_none=True)
    stats["rl/grad_norm"] = float(norm)
    return True

def rl_step(policy: Policy, state: TrainerState, prompts: Sequence[RolloutPrompt], reward_fn: RewardFn,
            cfg: RLConfig) -> dict[str, float]:
    """One actor-critic update on `prompts` (cfg.k samples each). Returns namespaced metrics.

    Non-finite rewards or losses never reach the weights: the optimizer step is skipped and the
    metrics say so (``rl/skipped`` = 1, ``rl/skip_reason``)."""
    cfg.validate()
    t0 = time.perf_counter()
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed + state.steps)
    if state.kl_coef is None:
        state.kl_coef = float(cfg.kl_coef)
    beta = state.kl_coef

    # 1. rollout: sample K responses per prompt, and their reference log-probs (no grad)
    policy.model.eval()
    ro = rollout(policy, prompts, cfg, pause=state.pause_point)
    ref_logp = _reference_logprobs(policy, ro, cfg)
    mask = ro.mask
    B, T = mask.shape

    # 2. score: the composed reward on the suggestion texts (fluency reuses the reference log-probs;
    #    the response token ids, EOS included, are passed too for rewards defined on tokens)
    ref_mean = L.masked_mean(ref_logp, mask, dim=1).cpu().numpy()
    resp_ids = [row[: int(n)] for row, n in zip(ro.responses.tolist(), mask.sum(1).tolist())]
    rew = call_reward(reward_fn, ro.prompts, ro.texts, {"ref_logp_mean": ref_mean, "response_ids": resp_ids})
    scores = torch.as_tensor(rew.total, dtype=torch.float32, device=mask.device)
    metrics: dict[str, float] = {**rew.means()}
    if not torch.isfinite(scores).all():
        metrics.update({"rl/skipped": 1.0, "rl/skipped_steps": 1.0})
        metrics["rl/skip_reason"] = "non-finite reward"  # type: ignore[assignment]
        log.warning("non-finite reward in the batch: update skipped")
        return metrics

    # 3. old policy: the rollout policy's log-probs and values, before any weight moves (no grad).
    #    (An earlier version reused the first update forward for this when the batch was a single
    #    minibatch. At the product's defaults — 16 episodes, minibatches of 8 — that case never
    #    arises, so the one separate pass is kept; benchmarks/rl_step.py, which sets minibatch =
    #    batch, pays it.)
    old_logp, old_values, entropy = _policy_eval(policy, ro, cfg)

    # 4. shape: -beta * KL per token against the reference, the sequence score on the last token
    kl_tok = (L.kl_k1 if cfg.kl_estimator == "k1" else L.kl_k3)(old_logp, ref_logp) * mask
    rewards = L.shape_rewards(scores, kl_tok, mask, beta)
    seq_kl = kl_tok.sum(1)

    # 5. advantages; the best of N (the samples the distillation loss imitates)
    distill = cfg.algo == "distill" or cfg.distill_coef > 0
    best = (L.best_of_n(scores, cfg.k, cfg.distill_top, cfg.distill_margin) if distill
            else torch.zeros(B, dtype=torch.bool, device=mask.device))
    if cfg.algo == "distill":  # no advantages: the update is supervised
        advantages = returns = torch.zeros_like(mask)
    elif cfg.algo == "reinforce":
        returns = L.discounted_returns(rewards, mask, cfg.gamma)
        seq_return = returns[:, 0]
        if cfg.baseline == "loo":
            baseline = L.leave_one_out_baseline(seq_return, cfg.k)
        else:
            b = float(seq_return.mean()) if state.baseline is None else state.baseline
            baseline = torch.full_like(seq_return, b)
            state.baseline = cfg.baseline_momentum * b + (1 - cfg.baseline_momentum) * float(seq_return.mean())
        advantages = (returns - baseline[:, None]) * mask
    else:
        advantages, returns = L.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = L.masked_whiten(advantages, mask)

    # 6. update: `epochs` passes over the batch in minibatches, one optimizer step per minibatch.
    #    PPO: cfg.ppo_epochs epochs of cfg.minibatch_size episodes on the clipped surrogate;
    #    REINFORCE / A2C: one epoch of one minibatch (one on-policy gradient step on the whole batch);
    #    distill: cfg.distill_epochs epochs of minibatches of the kept samples alone.
    if cfg.algo == "distill":
        epochs, mb_size, pool = cfg.distill_epochs, cfg.minibatch_size, best.nonzero().flatten().cpu()
    else:
        epochs, mb_size = (cfg.ppo_epochs, cfg.minibatch_size) if cfg.algo == "ppo" else (1, B)
        pool = torch.arange(B)
    opt = _optimizer(policy, state, cfg)
    opt.zero_grad(set_to_none=True)
    stats: dict[str, float] = {}
    sums = {"pg_loss": 0.0, "value_loss": 0.0, "clipfrac": 0.0, "approx_kl": 0.0, "ratio": 0.0,
            "distill_nll": 0.0, "distill_kl": 0.0}
    n_mb = n_distill = 0
    for _epoch in range(epochs if len(pool) else 0):
        order = pool[torch.randperm(len(pool))] if epochs > 1 else pool
        for idx in order.split(mb_size):
            if state.pause_point is not None:
                state.pause_point()
            m = mask[idx]
            logits, values = policy.forward(ro.input_ids[idx], ro.attention_mask[idx], T, cfg.temperature, cfg.autocast)
            logp = token_logprobs(logits, ro.responses[idx])
            if cfg.algo == "ppo":  # actor: clipped importance-sampled surrogate; critic: clipped value loss
                pg_loss, st = L.clipped_surrogate_loss(logp, old_logp[idx], advantages[idx], m, cfg.clip)
                v_loss, _ = L.clipped_value_loss(values, old_values[idx], returns[idx], m, cfg.value_clip)
            else:  # actor: REINFORCE with a baseline (reinforce) or the critic's GAE advantages (a2c);
                #        distill: no actor-critic term (its loss is the distillation term below)
                pg_loss = L.reinforce_loss(logp, advantages[idx], m) if cfg.algo != "distill" else torch.zeros(())
                st = {"clipfrac": torch.zeros(()), **L.ratio_stats(logp.detach() - old_logp[idx], m)}
                v_loss = (L.clipped_value_loss(values, old_values[idx], returns[idx], m, None)[0]
                          if cfg.algo == "a2c" else torch.zeros(()))
            ent_loss = L.masked_mean(L.entropy_from_logits(logits), m) if cfg.ent_coef else torch.zeros(())
            loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent_loss
            keep = best[idx]
            if keep.any():  # distillation: NLL of the kept samples + KL to the reference on their tokens
                d_loss, dst = L.distill_loss(logp[keep], ref_logp[idx][keep], m[keep], cfg.distill_kl_coef)
                loss = loss + (1.0 if cfg.algo == "distill" else cfg.distill_coef) * d_loss
                n_distill += 1
                sums["distill_nll"] += float(dst["nll"])
                sums["distill_kl"] += float(dst["kl"])
            if not torch.isfinite(loss):
                opt.zero_grad(set_to_none=True)
                stats["rl/skipped_steps"] = stats.get("rl/skipped_steps", 0) + 1
                stats["rl/skip_reason"] = "non-finite loss"  # type: ignore[assignment]
                log.warning("non-finite loss: minibatch skipped, weights untouched")
                continue
            loss.backward()
            _apply_grads(policy, opt, cfg, stats)
            n_mb += 1
            sums["pg_loss"] += pg_loss.item()
            sums["value_loss"] += v_loss.item()
            for k in ("clipfrac", "approx_kl", "ratio"):
                sums[k] += float(st[k])
    state.steps += 1

    # 7. KL control
    kl_mean = float(seq_kl.mean())
    if cfg.adaptive_kl:
        state.kl_coef = L.adaptive_kl_beta(beta, kl_mean, cfg.target_kl, cfg.kl_horizon, B)

    # diagnostics
    dt = time.perf_counter() - t0
    n = max(n_mb, 1)
    ev = L.explained_variance(old_values, returns, mask) if cfg.algo in ("a2c", "ppo") else torch.zeros(())
    metrics.update(
        {
            "rl/reward": float(scores.mean()),
            "rl/reward_std": float(scores.std()) if B > 1 else 0.0,
            "rl/kl": kl_mean,
            "rl/kl_coef": beta,
            "rl/entropy": float(L.masked_mean(entropy, mask)),
            "rl/clipfrac": sums["clipfrac"] / n,
            "rl/approx_kl": sums["approx_kl"] / n,
            "rl/ratio": sums["ratio"] / n,
            "rl/pg_loss": sums["pg_loss"] / n,
            "rl/value_loss": sums["value_loss"] / n,
            "rl/explained_variance": float(ev),
            "rl/response_tokens": float(mask.sum(1).mean()),
            "rl/episodes": float(B),
            "rl/episodes_per_s": B / dt,
            "rl/rollout_s": ro.seconds,
            "rl/step_s": dt,
            "rl/skipped": 1.0 if stats.get("rl/skipped_steps") else 0.0,
        }
    )
    if distill:
        nd = max(n_distill, 1)
        metrics.update({
            "rl/distilled": float(best.sum()),
            "rl/distill_score_gain": float(scores[best].mean() - scores.mean()) if best.any() else 0.0,
            "rl/distill_nll": sums["distill_nll"] / nd,
            "rl/distill_kl": sums["distill_kl"] / nd,
        })
    metrics.update(stats)
    state.last_rollout = ro  # for inspection (tests, the learner's UI)
    return metrics
