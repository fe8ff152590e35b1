"""RLConfig: everything one RL update needs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

ALGOS = ("reinforce", "a2c", "ppo", "distill")

# ----------------------------------------------------------------------------- configuration
@dataclass
class RLConfig:
    """Everything one RL update needs. Defaults are sized for a 2-core CPU and SmolLM2-135M."""

    algo: str = "ppo"
    """reinforce | a2c | ppo | distill (best-of-N distillation: supervised steps on the reward's
    best of the k samples per prompt, with a KL penalty to the reference; RAFT / BoNBoN)."""
    k: int = 4
    """Samples per prompt (the leave-one-out baseline needs k >= 2)."""
    prompts_per_step: int = 4
    """Prompts per update; the batch is prompts_per_step * k episodes."""
    max_new_tokens: int = 32
    """Response length limit in tokens."""
    temperature: float = 0.8
    """Sampling temperature (the UI's default); log-probs are taken at the same temperature."""
    top_p: float = 1.0
    """Nucleus mass for rollouts; 1.0 keeps the update exactly on-policy."""
    lr: float = 5e-4
    """AdamW learning rate of the LoRA weights."""
    value_lr: float = 1e-3
    """AdamW learning rate of the value head."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    gamma: float = 1.0
    """Discount per token."""
    lam: float = 0.95
    """GAE lambda (a2c, ppo)."""
    baseline: str = "loo"
    """REINFORCE baseline: "loo" (leave-one-out over the k samples) or "moving_average"."""
    baseline_momentum: float = 0.9
    """Momentum of the moving-average baseline."""
    kl_coef: float = 0.05
    """beta: weight of the per-token KL penalty against the reference (initial value if adaptive)."""
    kl_estimator: str = "k1"
    """Per-token KL estimator in the shaped reward: "k1" (log p - log p_ref) or "k3"."""
    adaptive_kl: bool = False
    """Adapt beta towards target_kl (Ziegler et al. 2019) instead of keeping it fixed."""
    target_kl: float = 2.0
    """Target KL per sequence (sum over tokens) for the adaptive controller."""
    kl_horizon: float = 200.0
    """Horizon (in episodes) of the adaptive controller."""
    ppo_epochs: int = 4
    """Passes over each batch (ppo)."""
    minibatch_size: int = 8
    """Episodes per minibatch (ppo steps; reinforce/a2c accumulate gradients over minibatches)."""
    clip: float = 0.2
    """PPO ratio clip epsilon."""
    value_clip: float | None = 0.2
    """PPO value clip (None disables)."""
    vf_coef: float = 0.5
    """Weight of the value loss (a2c, ppo)."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    whiten_advantages: bool = True
    """Whiten advantages over the batch (a2c, ppo; REINFORCE keeps the raw scale)."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    distill_coef: float = 0.0
    """reinforce / a2c / ppo: add this times the distillation loss on the batch's best samples to
    the actor-critic loss (0: off; > 0 is the mix of the two). 0.5 (PPO + 0.5 x distillation, the
    "mix") won the comparison inside the learner loop on one seed (benchmarks/learning.py --algo,
    concise, seed 0, 150 ratings; README, session 14): policy alone vs base 0.694 [0.634, 0.754]
    of decided pairs against PPO's 0.556, a2c 0.514, reinforce 0.582, distill 0.602; whole
    system 0.790 against 0.694-0.721. Not the default yet: one cell's run-to-run spread is about
    +-0.1, and on the tiny model's sparse-reward test (tests/test_policy.py, a favoured token at
    p ~ 0.01) the 0.5 term swamped the reward (the token fell where PPO alone and 0.1 raise it)."""
    distill_top: int = 1
    """Distillation: samples kept per prompt (the top m of its k)."""
    distill_margin: float | None = 0.0
    """Distillation: keep a sample only if its score is above its prompt's mean by more than this
    (0: any sample better than the mean; a prompt whose samples all tie gives none). None: always
    keep the top m."""
    distill_kl_coef: float = 0.1
    """Distillation: weight of the per-token k3 KL to the reference on the distilled tokens."""
    distill_epochs: int = 2
    """Distillation (algo distill): passes over the kept samples per rollout; an update on a few
    kept samples costs little next to sampling all k."""
    pref_pairs: int = 16
    """Preference steps on the person's own ratings (reward.rl.preference; DPO, as DITTO uses what
    a person chose): before each RL update, up to this many of their rated pairs (chosen over a
    sibling of the same request, none from the held-out requests) get pref_epochs DPO steps.
    0: off. Measured (benchmarks/learning.py, concise, seed 0, 150 ratings, same code otherwise):
    policy alone vs base 0.544 [0.467, 0.618] of decided pairs without, 0.636 [0.580, 0.696] with
    16; whole system 0.721 -> 0.778; stars first 16 -> last 16 3.84 -> 3.95 without, 3.88 -> 4.33
    with."""
    served_pairs: int = 16
    """Preference steps on the policy's own served candidates: each preference update also takes
    up to this many pairs of the reward model's best over its worst among the candidates one of
    the person's requests drew (shown and drawn-but-not-shown; reward.rl.train.served_pairs, none
    from the held-out requests): online iterative preference training on samples that cost
    nothing, since they were drawn to serve the person. 0: off. Measured (benchmarks/learning.py,
    seed 0, 150 ratings, against session 9's cells without them): policy alone vs base, decided
    pairs, firstperson 0.446 -> 0.670 [0.593, 0.747], alliteration 0.412 -> 0.528; whole system
    0.575 -> 0.673 and 0.539 -> 0.569; concise, with and without them in the same session: policy
    alone 0.537 -> 0.710, whole system 0.714 -> 0.819 (README, session 10)."""
    pref_beta: float = 0.1
    """DPO beta: the scale of the implicit reward beta * log(pi / ref)."""
    pref_epochs: int = 1
    """Optimizer steps per preference update, each on all its pairs."""
    clean_texts: bool = True
    """Score the cleaned suggestion (as a person would see it) rather than the raw decode."""
    autocast: bool = True
    """bf16 autocast where the hardware supports it."""
    seed: int | None = None
    """Seed for sampling and prompt choice (None: fresh randomness)."""
    recent_requests: int = 64
    """train_policy draws rollout prompts from this many of the person's most recent requests."""

    def validate(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}; use one of {', '.join(ALGOS)}")
        if self.baseline not in ("loo", "moving_average"):
            raise ValueError("baseline must be 'loo' or 'moving_average'")
        if self.algo == "reinforce" and self.baseline == "loo" and self.k < 2:
            raise ValueError("the leave-one-out baseline needs k >= 2")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError("kl_estimator must be k1 or k3")
        if self.algo == "distill" and self.k < 2:
            raise ValueError("best-of-N distillation needs k >= 2 samples per prompt")
        if self.pref_pairs < 0 or self.served_pairs < 0 or self.pref_epochs < 1 or not self.pref_beta > 0:
            raise ValueError("pref_pairs and served_pairs must be >= 0, pref_epochs >= 1 and pref_beta > 0")
        if not 1 <= self.distill_top <= self.k:
            raise ValueError(f"distill_top must be between 1 and k={self.k}")
        if self.distill_coef < 0 or self.distill_kl_coef < 0 or self.distill_epochs < 1:
            raise ValueError("distill_coef and distill_kl_coef must be >= 0 and distill_epochs >= 1")
        for name in ("lr", "value_lr", "temperature"):
            v = float(getattr(self, name))
            if not v > 0 or v != v or v == float("inf"):  # a negative lr would climb the loss
                raise ValueError(f"{name} must be a positive finite number, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.kl_coef < 0 or self.weight_decay < 0 or self.max_grad_norm <= 0 or self.clip <= 0:
            raise ValueError("kl_coef and weight_decay must be >= 0; max_grad_norm and clip must be > 0")
        if self.k < 1 or self.prompts_per_step < 1 or self.max_new_tokens < 1:
            raise ValueError("k, prompts_per_step and max_new_tokens must be >= 1")
