"""Actor-critic RL on the writing policy: one readable update.

    Policy    = the base LM + a LoRA adapter (peft; the same LoraConfig for every version)
    Reference = the same model with the adapter disabled (``with model.disable_adapter()``; no copy)
    Critic    = a value head, nn.Linear(hidden, 1), on the policy's last hidden states

`rl_step` is one update, in numbered sections like cleanrl's ppo.py:

    1. rollout     K samples per prompt from the current policy, and their reference log-probs
    2. score       the composed reward (reward.functions) on the cleaned suggestion texts
    3. old policy  the rollout policy's log-probs and values (reused from the first update forward
                   when the batch is one minibatch)
    4. shape       per-token reward: -beta * KL(policy || reference) on every token, score on the last
    5. advantages  reinforce: Monte-Carlo return minus a baseline (leave-one-out over the K samples,
                   or a moving average); a2c / ppo: GAE(gamma, lambda) with the critic
    6. update      reinforce / a2c: one gradient step over the batch; ppo: several epochs of
                   minibatches on the clipped surrogate (importance ratio against the rollout
                   policy) plus a clipped value loss
    7. KL control  fixed beta, or adaptive towards a target KL

Only LoRA and value-head weights ever receive gradients; the base stays frozen. LoRA and value-head
parameters are kept in float32 even when the base is bf16, and the forward runs under bf16 autocast
where the hardware supports it (assistant.models.autocast_context).

Rollouts sample with the UI's temperature, but with top_p = 1 and no repetition penalty by default,
so the log-probabilities the update uses are exactly those of the sampling distribution (the
importance ratios start at 1). `train_policy` wraps several steps and writes a policy version
directory (adapter/ + value_head.safetensors + metrics.json + config.json) via storage.artifacts.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from assistant.lm.config import LoraSettings
from assistant.lm.generate import ADAPTER_SUBDIR, clean_candidate
from assistant.lm.models import autocast_context, contiguous_lm_head_input
from reward import losses as L
from reward.functions import RewardOutput, RolloutPrompt

log = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"
ALGOS = ("reinforce", "a2c", "ppo")


# ----------------------------------------------------------------------------- configuration
@dataclass
class RLConfig:
    """Everything one RL update needs. Defaults are sized for a 2-core CPU and SmolLM2-135M."""

    algo: str = "ppo"
    """reinforce | a2c | ppo."""
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
        if self.k < 1 or self.prompts_per_step < 1 or self.max_new_tokens < 1:
            raise ValueError("k, prompts_per_step and max_new_tokens must be >= 1")


# ----------------------------------------------------------------------------- the policy
def peft_lora_config(lora: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def _has_lora(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


class Policy:
    """Base LM + LoRA adapter (actor), value head (critic), and the learner's running state."""

    def __init__(self, model, tokenizer, value_head: nn.Linear, lora: LoraSettings):
        self.model = model  # a peft PeftModel
        self.tokenizer = tokenizer
        self.value_head = value_head
        self.lora = lora
        self.device = next(model.parameters()).device
        self.kl_coef: float | None = None  # set from RLConfig on the first step (adaptive KL moves it)
        self.baseline: float | None = None  # moving-average REINFORCE baseline
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps = 0
        self.last_rollout: Rollout | None = None

    # ------------------------------------------------------------------ construction and persistence
    @classmethod
    def from_base(cls, model: nn.Module, tokenizer, lora_cfg: LoraSettings | None = None) -> "Policy":
        """Wrap a base causal LM with a fresh LoRA adapter (B = 0: the policy starts equal to the
        reference) and a zero value head. The base model is modified in place (peft injects the
        LoRA layers) and its weights are frozen."""
        from peft import get_peft_model

        lora_cfg = lora_cfg or LoraSettings()
        if _has_lora(model):
            raise ValueError("this model already carries LoRA layers; pass a clean base model (or reuse its Policy)")
        for p in model.parameters():
            p.requires_grad_(False)
        pm = get_peft_model(model, peft_lora_config(lora_cfg))
        head = nn.Linear(model.config.hidden_size, 1)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return cls._finish(pm, tokenizer, head, lora_cfg)

    @classmethod
    def _finish(cls, pm, tokenizer, head: nn.Linear, lora_cfg: LoraSettings) -> "Policy":
        for _, p in pm.named_parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        device = next(pm.parameters()).device
        head = head.to(device=device, dtype=torch.float32)
        contiguous_lm_head_input(pm.get_base_model())
        pm.eval()
        return cls(pm, tokenizer, head, lora_cfg)

    def save(self, directory: str | Path) -> None:
        """Write adapter/ (peft) and value_head.safetensors into `directory`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory / ADAPTER_SUBDIR))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
                  str(directory / VALUE_HEAD_FILE))

    @classmethod
    def load(cls, base_model: nn.Module, tokenizer, directory: str | Path, lora_cfg: LoraSettings | None = None) -> "Policy":
        """A trainable Policy from a version directory (adapter/ + value_head.safetensors)."""
        from peft import PeftModel
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / ADAPTER_SUBDIR / "adapter_config.json").exists():
            raise FileNotFoundError(f"{directory} holds no {ADAPTER_SUBDIR}/adapter_config.json")
        if not (directory / VALUE_HEAD_FILE).exists():
            raise FileNotFoundError(f"{directory} holds no {VALUE_HEAD_FILE}: the critic would be random")
        if _has_lora(base_model):
            raise ValueError("this model already carries LoRA layers; pass a clean base model")
        for p in base_model.parameters():
            p.requires_grad_(False)
        pm = PeftModel.from_pretrained(base_model, str(directory / ADAPTER_SUBDIR), is_trainable=True)
        state = load_file(str(directory / VALUE_HEAD_FILE))
        head = nn.Linear(state["weight"].shape[1], 1)
        head.load_state_dict(state)
        return cls._finish(pm, tokenizer, head, lora_cfg or LoraSettings())

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ forward pass
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_resp: int, temperature: float,
        autocast: bool = True, share_prefix: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (float32, scaled by 1/temperature) predicting each of the last n_resp tokens, and
        the critic's value of the state before each of them. Shapes (B, n_resp, V) and (B, n_resp).

        The K samples of one prompt share it, so with `share_prefix` each distinct prompt is run
        once and its key/value cache is fanned out to its samples (gradients flow back through the
        shared cache); only the responses are run per sample. Same numbers as the full forward
        (tested), about half the work at K=4."""
        P = input_ids.shape[1] - n_resp
        if share_prefix and P > 0:
            prefix = torch.cat([input_ids[:, :P], attention_mask[:, :P].to(input_ids.dtype)], 1)
            uniq, inverse = torch.unique(prefix, dim=0, return_inverse=True)
            if uniq.shape[0] < input_ids.shape[0]:
                return self._forward_shared(input_ids, attention_mask, n_resp, temperature, autocast, uniq, inverse)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        with autocast_context(self.device, autocast):
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=True,
                logits_to_keep=n_resp + 1,
                use_cache=False,
            )
        logits = out.logits[:, -n_resp - 1 : -1]
        hidden = out.hidden_states[-1][:, -n_resp - 1 : -1]
        return self._finish_forward(logits, hidden, temperature)

    def _forward_shared(self, input_ids, attention_mask, n_resp, temperature, autocast, uniq, inverse):
        """forward() with each distinct prompt run once: prefix pass -> cache fanned out -> responses."""
        P = input_ids.shape[1] - n_resp
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        u_ids, u_mask = uniq[:, :P], uniq[:, P:].to(attention_mask.dtype)
        with autocast_context(self.device, autocast):
            pre = self.model(
                input_ids=u_ids,
                attention_mask=u_mask,
                position_ids=(u_mask.long().cumsum(-1) - 1).clamp(min=0),
                output_hidden_states=True,
                logits_to_keep=1,
                use_cache=True,
            )
            # the last prompt position predicts the first response token
            logits = pre.logits[inverse, -1:]
            hidden = pre.hidden_states[-1][inverse, -1:]
            if n_resp > 1:  # the responses (all but their last token) attend to the shared prompt cache
                cache_arg = self.cache_argument
                cache = getattr(pre, cache_arg)
                cache.reorder_cache(inverse)
                suf = self.model(
                    input_ids=input_ids[:, P:-1],
                    attention_mask=attention_mask[:, :-1],
                    position_ids=position_ids[:, P:-1],
                    output_hidden_states=True,
                    use_cache=True,
                    **{cache_arg: cache},
                )
                logits = torch.cat([logits, suf.logits], 1)
                hidden = torch.cat([hidden, suf.hidden_states[-1]], 1)
        return self._finish_forward(logits, hidden, temperature)

    @functools.cached_property
    def cache_argument(self) -> str:
        """transformers >= 5.2x names the KV cache `cache` (in and out); older models `past_key_values`.
        Read once from the model's forward signature."""
        import inspect

        params = inspect.signature(self.model.get_base_model().forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def _finish_forward(self, logits, hidden, temperature):
        logits = logits.float() / temperature
        with torch.autocast(self.device.type, enabled=False):
            values = self.value_head(hidden.float()).squeeze(-1)
        return logits, values

    @torch.no_grad()
    def reference_logprobs(self, input_ids, attention_mask, n_resp: int, temperature: float, autocast: bool = True):
        """Log-probs of the response tokens under the reference (the adapter disabled)."""
        with self.model.disable_adapter():
            logits, _ = self.forward(input_ids, attention_mask, n_resp, temperature, autocast)
        return token_logprobs(logits, input_ids[:, -n_resp:])


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] at every position: (B, T, V), (B, T) -> (B, T)."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------- rollouts
@dataclass
class Rollout:
    """A batch of episodes: B = len(prompts) * k sequences of prompt + response tokens."""

    prompts: list[RolloutPrompt]
    """One entry per episode (each prompt repeated k times, consecutively)."""
    input_ids: torch.Tensor
    """(B, P + T) left-padded prompt followed by the response (padding after EOS)."""
    attention_mask: torch.Tensor
    """(B, P + T) 1 on real prompt tokens and on response tokens up to and including EOS."""
    mask: torch.Tensor
    """(B, T) response mask."""
    texts: list[str]
    """The suggestions as scored (cleaned unless RLConfig.clean_texts is False)."""
    raw_texts: list[str]
    seconds: float = 0.0

    @property
    def n_resp(self) -> int:
        return self.mask.shape[1]

    @property
    def responses(self) -> torch.Tensor:
        return self.input_ids[:, -self.n_resp :]


def _eos_ids(policy: Policy) -> set[int]:
    tok = policy.tokenizer
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    gc_eos = getattr(getattr(policy.model, "generation_config", None), "eos_token_id", None)
    if isinstance(gc_eos, int):
        ids.add(gc_eos)
    elif gc_eos:
        ids.update(int(x) for x in gc_eos)
    return ids


@torch.no_grad()
def rollout(policy: Policy, prompts: Sequence[RolloutPrompt], cfg: RLConfig) -> Rollout:
    """Sample cfg.k responses per prompt from the current policy (adapter enabled)."""
    t0 = time.perf_counter()
    tok = policy.tokenizer
    eps = [p for p in prompts for _ in range(cfg.k)]
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok([p.prompt_text for p in eps], return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    enc = {k: v.to(policy.device) for k, v in enc.items()}
    eos = _eos_ids(policy)
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos))
    with autocast_context(policy.device, cfg.autocast):
        out = policy.model.generate(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=0,
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=1,
            pad_token_id=pad,
            eos_token_id=sorted(eos),
        )
    P = enc["input_ids"].shape[1]
    resp = out[:, P:]
    # response mask: every token up to and including the first EOS
    is_eos = torch.zeros_like(resp, dtype=torch.bool)
    for e in eos:
        is_eos |= resp == e
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    mask = (~after_eos).long()
    resp = torch.where(mask.bool(), resp, torch.full_like(resp, pad))
    raw, texts = [], []
    for p, row, m, e in zip(eps, resp.tolist(), mask.tolist(), is_eos.tolist()):
        n = sum(m)
        finished = any(e[:n])
        ids = row[: n - 1] if finished else row[:n]
        text = tok.decode(ids, skip_special_tokens=True)
        raw.append(text)
        texts.append(clean_candidate(text, p.mode, p.source_text, finished) if cfg.clean_texts else text)
    return Rollout(
        prompts=eps,
        input_ids=torch.cat([enc["input_ids"], resp], 1),
        attention_mask=torch.cat([enc["attention_mask"], mask], 1),
        mask=mask.float(),
        texts=texts,
        raw_texts=raw,
        seconds=time.perf_counter() - t0,
    )


@torch.no_grad()
def _reference_logprobs(policy: Policy, ro: Rollout, cfg: RLConfig) -> torch.Tensor:
    """Reference log-probs of the rollout's response tokens, in minibatches."""
    T, mb = ro.n_resp, cfg.minibatch_size
    return torch.cat([
        policy.reference_logprobs(ro.input_ids[s : s + mb], ro.attention_mask[s : s + mb], T, cfg.temperature, cfg.autocast)
        for s in range(0, ro.input_ids.shape[0], mb)
    ])


@torch.no_grad()
def _policy_eval(policy: Policy, ro: Rollout, cfg: RLConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Policy log-probs, values and entropy of the rollout's response tokens, in minibatches."""
    lp, vals, ent = [], [], []
    T, mb = ro.n_resp, cfg.minibatch_size
    for s in range(0, ro.input_ids.shape[0], mb):
        ids, am = ro.input_ids[s : s + mb], ro.attention_mask[s : s + mb]
        logits, v = policy.forward(ids, am, T, cfg.temperature, cfg.autocast)
        lp.append(token_logprobs(logits, ids[:, -T:]))
        ent.append(L.entropy_from_logits(logits))
        vals.append(v)
    return torch.cat(lp), torch.cat(vals), torch.cat(ent)


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


def _call_reward(reward_fn: RewardFn, prompts, texts, extras) -> RewardOutput:
    """reward_fn(prompts, texts[, extras=...]) -> RewardOutput or an array of per-sample rewards."""
    out = reward_fn(prompts, texts, extras=extras) if accepts_extras(reward_fn) else reward_fn(prompts, texts)
    if isinstance(out, RewardOutput):
        return out
    arr = np.asarray(out, np.float32)
    return RewardOutput(arr, {})


def _optimizer(policy: Policy, cfg: RLConfig) -> torch.optim.Optimizer:
    if policy.optimizer is None:
        policy.optimizer = torch.optim.AdamW(
            [
                {"params": policy.lora_parameters(), "lr": cfg.lr},
                {"params": list(policy.value_head.parameters()), "lr": cfg.value_lr},
            ],
            weight_decay=cfg.weight_decay,
        )
    return policy.optimizer


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


def rl_step(policy: Policy, prompts: Sequence[RolloutPrompt], reward_fn: RewardFn, cfg: RLConfig) -> dict[str, float]:
    """One actor-critic update on `prompts` (cfg.k samples each). Returns namespaced metrics.

    Non-finite rewards or losses never reach the weights: the optimizer step is skipped and the
    metrics say so (``rl/skipped`` = 1, ``rl/skip_reason``)."""
    cfg.validate()
    t0 = time.perf_counter()
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed + policy.steps)
    if policy.kl_coef is None:
        policy.kl_coef = float(cfg.kl_coef)
    beta = policy.kl_coef

    # 1. rollout: sample K responses per prompt, and their reference log-probs (no grad)
    policy.model.eval()
    ro = rollout(policy, prompts, cfg)
    ref_logp = _reference_logprobs(policy, ro, cfg)
    mask = ro.mask
    B, T = mask.shape

    # 2. score: the composed reward on the suggestion texts (fluency reuses the reference log-probs;
    #    the response token ids, EOS included, are passed too for rewards defined on tokens)
    ref_mean = L.masked_mean(ref_logp, mask, dim=1).cpu().numpy()
    resp_ids = [row[: int(n)] for row, n in zip(ro.responses.tolist(), mask.sum(1).tolist())]
    rew = _call_reward(reward_fn, ro.prompts, ro.texts, {"ref_logp_mean": ref_mean, "response_ids": resp_ids})
    scores = torch.as_tensor(rew.total, dtype=torch.float32, device=mask.device)
    metrics: dict[str, float] = {**rew.means()}
    if not torch.isfinite(scores).all():
        metrics.update({"rl/skipped": 1.0, "rl/skipped_steps": 1.0})
        metrics["rl/skip_reason"] = "non-finite reward"  # type: ignore[assignment]
        log.warning("non-finite reward in the batch: update skipped")
        return metrics

    # 3. the rollout policy's log-probs and values. When the batch is a single minibatch, the first
    #    update forward runs now, before any weight moves, so its detached outputs ARE the rollout
    #    policy's (no separate pass); otherwise one no-grad pass over the minibatches.
    first_pass = None
    if B <= cfg.minibatch_size:
        first_pass = policy.forward(ro.input_ids, ro.attention_mask, T, cfg.temperature, cfg.autocast)
        old_logp = token_logprobs(first_pass[0].detach(), ro.responses)
        old_values = first_pass[1].detach()
        entropy = L.entropy_from_logits(first_pass[0].detach())
    else:
        old_logp, old_values, entropy = _policy_eval(policy, ro, cfg)

    # 4. shape: -beta * KL per token against the reference, the sequence score on the last token
    kl_tok = (L.kl_k1 if cfg.kl_estimator == "k1" else L.kl_k3)(old_logp, ref_logp) * mask
    rewards = L.shape_rewards(scores, kl_tok, mask, beta)
    seq_kl = kl_tok.sum(1)

    # 5. advantages
    if cfg.algo == "reinforce":
        returns = L.discounted_returns(rewards, mask, cfg.gamma)
        seq_return = returns[:, 0]
        if cfg.baseline == "loo":
            baseline = L.leave_one_out_baseline(seq_return, cfg.k)
        else:
            b = float(seq_return.mean()) if policy.baseline is None else policy.baseline
            baseline = torch.full_like(seq_return, b)
            policy.baseline = cfg.baseline_momentum * b + (1 - cfg.baseline_momentum) * float(seq_return.mean())
        advantages = (returns - baseline[:, None]) * mask
    else:
        advantages, returns = L.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = L.masked_whiten(advantages, mask)

    # 6. update
    opt = _optimizer(policy, cfg)
    opt.zero_grad(set_to_none=True)
    stats: dict[str, float] = {}
    sums = {"pg_loss": 0.0, "value_loss": 0.0, "clipfrac": 0.0, "approx_kl": 0.0, "ratio": 0.0, "entropy": 0.0}
    n_mb = 0
    epochs = cfg.ppo_epochs if cfg.algo == "ppo" else 1
    skipped_reason = None
    for epoch in range(epochs):
        order = torch.randperm(B) if cfg.algo == "ppo" and first_pass is None else torch.arange(B)
        for s in range(0, B, cfg.minibatch_size):
            idx = order[s : s + cfg.minibatch_size]
            m = mask[idx]
            if epoch == 0 and first_pass is not None:  # the whole batch, already run in section 3
                logits, values = first_pass
                first_pass = None
            else:
                logits, values = policy.forward(ro.input_ids[idx], ro.attention_mask[idx], T, cfg.temperature, cfg.autocast)
            logp = token_logprobs(logits, ro.responses[idx])
            if cfg.ent_coef:
                ent = L.masked_mean(L.entropy_from_logits(logits), m)
            else:  # only a diagnostic: no graph through a (B, T, V) softmax
                with torch.no_grad():
                    ent = L.masked_mean(L.entropy_from_logits(logits), m)
            if cfg.algo == "ppo":
                pg_loss, st = L.clipped_surrogate_loss(logp, old_logp[idx], advantages[idx], m, cfg.clip)
                v_loss, _ = L.clipped_value_loss(values, old_values[idx], returns[idx], m, cfg.value_clip)
                loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent
            else:
                pg_loss = L.reinforce_loss(logp, advantages[idx], m)
                with torch.no_grad():
                    lr_ = logp - old_logp[idx]
                    st = {"clipfrac": torch.zeros(()), "approx_kl": L.masked_mean(torch.expm1(lr_) - lr_, m),
                          "ratio": L.masked_mean(torch.exp(lr_), m)}
                if cfg.algo == "a2c":
                    v_loss, _ = L.clipped_value_loss(values, old_values[idx], returns[idx], m, None)
                else:
                    v_loss = torch.zeros(())
                loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent
                # reinforce / a2c: one gradient step over the whole batch (accumulate, weighted by size)
                loss = loss * (len(idx) / B)
            if not torch.isfinite(loss):
                skipped_reason = "non-finite loss"
                opt.zero_grad(set_to_none=True)
                stats["rl/skipped_steps"] = stats.get("rl/skipped_steps", 0) + 1
                log.warning("non-finite loss: minibatch skipped, weights untouched")
                continue
            loss.backward()
            if cfg.algo == "ppo":
                _apply_grads(policy, opt, cfg, stats)
            n_mb += 1
            sums["pg_loss"] += pg_loss.item()
            sums["value_loss"] += v_loss.item()
            sums["entropy"] += ent.item()
            for k in ("clipfrac", "approx_kl", "ratio"):
                sums[k] += float(st[k])
    if cfg.algo != "ppo" and skipped_reason is None:
        _apply_grads(policy, opt, cfg, stats)
    elif cfg.algo != "ppo":
        opt.zero_grad(set_to_none=True)
    policy.steps += 1

    # 7. KL control
    kl_mean = float(seq_kl.mean())
    if cfg.adaptive_kl:
        policy.kl_coef = L.adaptive_kl_beta(beta, kl_mean, cfg.target_kl, cfg.kl_horizon, B)

    # diagnostics
    dt = time.perf_counter() - t0
    n = max(n_mb, 1)
    ev = L.explained_variance(old_values, returns, mask) if cfg.algo != "reinforce" else torch.zeros(())
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
            "rl/skipped": 1.0 if skipped_reason or stats.get("rl/skipped_steps") else 0.0,
        }
    )
    metrics.update(stats)
    if skipped_reason:
        metrics["rl/skip_reason"] = skipped_reason  # type: ignore[assignment]
    policy.last_rollout = ro  # for inspection (tests, the learner's UI)
    return metrics


# ----------------------------------------------------------------------------- prompts from the store
def prompts_from_store(store, profile_id: str, limit: int = 64) -> list[RolloutPrompt]:
    """RolloutPrompts from the person's most recent requests (all modes) that stored a prompt."""
    from assistant.lm.config import MODES

    out = []
    for req in store.recent_requests(profile_id, limit=limit):
        if req.mode in MODES and (req.prompt or "").strip():
            out.append(RolloutPrompt.from_request(req))
    return out


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
    steps: int,
    publish: bool = False,
    parent=None,
    *,
    policy: Policy | None = None,
    prompts: Sequence[RolloutPrompt] | None = None,
    lora_cfg: LoraSettings | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    extra_config: dict[str, Any] | None = None,
):
    """Run `steps` RL updates and write a new policy version. Returns (ModelVersion, metrics).

    The policy to train is, in order: `policy` (an in-memory Policy, continued with its optimizer
    and KL state), else the version `parent` (a ModelVersion or id) loaded onto `lm_model`, else the
    profile's live policy, else a fresh LoRA on `lm_model`. `lm_model` must be a clean base model
    (peft injects the adapter into it). Rollout prompts come from the person's recent requests
    unless `prompts` is given. Per-step metrics are logged in the store under the new version
    (steps 1..n; step 0 is the summary that add_version logs);
    metrics.json holds their means over the steps plus the last step's reward and KL. To keep
    training the same weights in memory across calls (the learner), build the Policy once and
    pass it as `policy=`."""
    from storage.artifacts import save_version
    from storage.store import ModelVersion

    cfg.validate()
    if steps < 1:
        raise ValueError("steps must be >= 1")
    parent_id = parent.id if isinstance(parent, ModelVersion) else parent
    if policy is None:
        if lm_model is None:
            raise ValueError("train_policy needs lm_model or policy")
        src = store.get_version(int(parent_id)) if parent_id is not None else store.live_version(profile_id, "policy")
        if src is not None and Path(src.path, ADAPTER_SUBDIR).exists():
            policy = Policy.load(lm_model, tokenizer, src.path, lora_cfg)
            parent_id = src.id
        else:
            policy = Policy.from_base(lm_model, tokenizer, lora_cfg)
    pool = list(prompts) if prompts is not None else prompts_from_store(store, profile_id, cfg.recent_requests)
    rng = random.Random(cfg.seed)
    history = []
    for i in range(steps):
        m = rl_step(policy, sample_prompts(pool, cfg.prompts_per_step, rng), reward_fn, cfg)
        history.append(m)
        if on_step is not None:
            on_step(i, m)
    metrics = _mean_metrics(history)
    metrics["rl/steps"] = float(steps)
    metrics["rl/final_reward"] = float(history[-1].get("rl/reward", float("nan")))
    metrics["rl/final_kl"] = float(history[-1].get("rl/kl", float("nan")))
    metrics["rl/skipped_updates"] = float(sum(1 for h in history if h.get("rl/skipped")))
    reward_cfg = getattr(reward_fn, "cfg", None)
    config = {
        "rl": asdict(cfg),
        "lora": asdict(policy.lora),
        "kl_coef_now": policy.kl_coef,
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
