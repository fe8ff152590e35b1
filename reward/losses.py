"""Pure tensor functions for policy-gradient RL on token sequences, and the reward model's losses.

Shapes: per-token tensors are ``(B, T)`` over the *response* tokens of B sequences; ``mask`` is
``(B, T)`` with 1 for real response tokens (the EOS token included) and 0 for padding after it.
Per-sequence tensors are ``(B,)``. Nothing here touches a model, an optimizer or the disk; every
function has a test on 3-4 element inputs with values worked out by hand (tests/test_losses.py).

Conventions follow TRL's PPO helpers (masked_mean / masked_var / masked_whiten, entropy from
logits) and Schulman's notes on KL estimators (k1, k3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- masked statistics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over entries where mask is 1 (over all entries, or along `dim`).
    An all-zero mask gives 0 rather than NaN."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over masked entries (Bessel-corrected when `unbiased` and n > 1)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.to(x.dtype).sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked entries; with shift_mean=False the mean is added back.
    Masked-out entries are set to 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


# ----------------------------------------------------------------------------- KL to the reference


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimator of KL(pi || ref): log pi(a) - log ref(a). Unbiased, can be negative."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator: (r - 1) - log r with r = ref(a) / pi(a). Unbiased and always >= 0."""
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


def shape_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards: -beta * kl on every real token, plus the sequence score on the last real
    token. A sequence with no real token gets nothing."""
    mask = mask.to(kl.dtype)
    rewards = -beta * kl * mask
    lengths = mask.sum(1).long()
    has = lengths > 0
    last = (lengths - 1).clamp(min=0)
    rows = torch.arange(kl.shape[0], device=kl.device)
    rewards[rows[has], last[has]] += scores.to(kl.dtype)[has]
    return rewards


# ----------------------------------------------------------------------------- returns and advantages


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Monte-Carlo returns G_t = r_t + gamma * G_{t+1}, with G = 0 past the last real token."""
    mask = mask.to(rewards.dtype)
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        out[:, t] = running
    return out


def td0_targets(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """One-step TD targets r_t + gamma * V(s_{t+1}); V after the last real token is 0."""
    mask = mask.to(rewards.dtype)
    next_v = torch.zeros_like(values)
    next_v[:, :-1] = values[:, 1:] * mask[:, 1:]
    return (rewards + gamma * next_v) * mask


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation. delta_t = r_t + gamma V_{t+1} - V_t,
    A_t = delta_t + gamma * lam * A_{t+1}. Returns (advantages, returns = advantages + values).
    lam = 1 gives Monte-Carlo returns minus V; lam = 0 gives the TD(0) error."""
    mask = mask.to(rewards.dtype)
    values = values * mask
    next_v = torch.zeros_like(values)
    next_v[:, :-1] = values[:, 1:]
    deltas = rewards + gamma * next_v - values
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (deltas[:, t] + gamma * lam * running) * mask[:, t]
        adv[:, t] = running
    return adv, (adv + values) * mask


def leave_one_out_baseline(scores: torch.Tensor, k: int) -> torch.Tensor:
    """For B = n*k scores laid out as n groups of k consecutive samples of the same prompt, the
    mean of the other k-1 scores of each sample's group (RLOO). k must be >= 2."""
    if k < 2:
        raise ValueError("leave-one-out needs at least 2 samples per prompt")
    if scores.shape[0] % k:
        raise ValueError(f"batch of {scores.shape[0]} is not a multiple of k={k}")
    g = scores.view(-1, k)
    return ((g.sum(1, keepdim=True) - g) / (k - 1)).reshape(-1)


def explained_variance(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(target - pred) / Var(target) over masked entries (1 = perfect, 0 = no better than
    the mean, < 0 = worse). NaN-free: 0 when the target has no variance."""
    var_t = masked_var(target, mask, unbiased=False)
    if var_t <= 0:
        return torch.zeros((), dtype=target.dtype)
    return 1 - masked_var(target - pred, mask, unbiased=False) / var_t


# ----------------------------------------------------------------------------- policy and value losses


def reinforce_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE with a baseline: -mean_t[(G_t - b) * log pi(a_t)]; advantages carry no gradient."""
    return -masked_mean(logp * advantages.detach(), mask)


def clipped_surrogate_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate: -mean(min(r A, clip(r, 1-eps, 1+eps) A)), r = pi / pi_old.

    Diagnostics: clipfrac (share of tokens where the clipped term was chosen), approx_kl
    (k3 estimate of KL(pi_old || pi) on the batch), ratio (mean importance ratio)."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    adv = advantages.detach()
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).to(logp.dtype), mask), **ratio_stats(log_ratio, mask)}
    return loss, stats


@torch.no_grad()
def ratio_stats(log_ratio: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Diagnostics of the importance ratio r = pi / pi_old from log r: approx_kl, the k3 estimate of
    KL(pi_old || pi) = mean(r - 1 - log r), and the mean ratio."""
    return {"approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio": masked_mean(torch.exp(log_ratio), mask)}


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * mean(max((V - R)^2, (V_clipped - R)^2)) with V_clipped = V_old + clip(V - V_old, -c, c).
    clip=None gives the plain squared error. Returns (loss, share of tokens where clipping bound)."""
    returns = returns.detach()
    err = (values - returns) ** 2
    if clip is None:
        return 0.5 * masked_mean(err, mask), torch.zeros((), dtype=values.dtype)
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    err_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    frac = masked_mean((err_clipped > err).to(values.dtype), mask).detach()
    return loss, frac


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: logsumexp(z) - sum softmax(z) z."""
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


# ----------------------------------------------------------------------------- best-of-N distillation


def best_of_n(scores: torch.Tensor, k: int, top: int = 1, margin: float | None = None) -> torch.Tensor:
    """(B,) bool: for B = n*k scores laid out as n groups of k consecutive samples of one prompt,
    the `top` best of each group (ties keep the lower index); with `margin`, only those whose score
    is above their group's mean by more than `margin` (a group whose samples all score the same
    then gives nothing: there is no best to learn from)."""
    if scores.shape[0] % k:
        raise ValueError(f"batch of {scores.shape[0]} is not a multiple of k={k}")
    if not 1 <= top <= k:
        raise ValueError(f"top must be between 1 and k={k}, got {top}")
    g = scores.view(-1, k)
    # stable descending order: among equal scores the lower index comes first
    order = torch.sort(-g, dim=1, stable=True).indices[:, :top]
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(1, order, True)
    if margin is not None:
        keep &= g > g.mean(1, keepdim=True) + margin
    return keep.reshape(-1)


def distill_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                 kl_coef: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Supervised steps on chosen samples (RAFT / BoNBoN): the mean negative log-likelihood of their
    tokens plus kl_coef times the mean k3 KL to the reference on the same tokens,
    mean_t[-log pi(a_t)] + kl_coef * mean_t[(r - 1) - log r], r = ref(a_t) / pi(a_t).
    The NLL pulls the policy towards the chosen texts; the k3 term (>= 0, 0 where pi = ref) pulls
    each token's probability back towards the reference's. Returns (loss, {nll, kl})."""
    nll = masked_mean(-logp, mask)
    kl = masked_mean(kl_k3(logp, ref_logp.detach()), mask)
    return nll + kl_coef * kl, {"nll": nll.detach(), "kl": kl.detach()}


# ----------------------------------------------------------------------------- preferences on the policy


def dpo_loss(pol_chosen: torch.Tensor, pol_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float,
             weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Direct preference optimisation (Rafailov et al. 2023) on sequence log-probs: the implicit
    reward of a reply is beta * (log pi(y|x) - log ref(y|x)), and the loss is the Bradley-Terry
    loss of the chosen reply's over the rejected one's,
    mean_w[-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))].
    Returns (loss, {accuracy: share of pairs whose implicit margin is > 0, margin: its mean})."""
    margin = (pol_chosen - ref_chosen.detach()) - (pol_rejected - ref_rejected.detach())
    loss = bradley_terry_loss(beta * margin, torch.zeros_like(margin), weight=weight)
    return loss, {"accuracy": (margin > 0).float().mean().detach(), "margin": margin.mean().detach()}


# ----------------------------------------------------------------------------- KL control


def adaptive_kl_beta(beta: float, kl: float, target: float, horizon: float, n_steps: int) -> float:
    """Adaptive KL coefficient (Ziegler et al. 2019): the proportional error e = clip(kl/target - 1,
    -0.2, 0.2) moves beta by a factor 1 + e * n_steps / horizon."""
    err = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + err * n_steps / horizon)


# ----------------------------------------------------------------------------- reward-model losses
def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """mean_w[-log sigmoid(r_c - r_r - margin)]."""
    d = r_chosen - r_rejected
    if margin is not None:
        d = d - margin
    loss = -F.logsigmoid(d)
    if weight is None:
        return loss.mean()
    return (loss * weight).sum() / weight.sum().clamp_min(1e-8)


def pointwise_loss(r: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy between sigmoid(r) and a soft target in [0, 1] (weighted mean)."""
    loss = F.binary_cross_entropy_with_logits(r, target, reduction="none")
    if weight is None:
        return loss.mean()
    return (loss * weight).sum() / weight.sum().clamp_min(1e-8)
