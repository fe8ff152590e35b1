"""Rollouts: K samples per prompt from the current policy, with the masks the update needs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from assistant.lm.config import GenerationSettings
from assistant.lm.generate import clean_candidate, sample
from assistant.lm.logprobs import token_logprobs
from reward import losses as L
from reward.functions import RolloutPrompt
from reward.rl.config import RLConfig
from reward.rl.policy import Policy

log = logging.getLogger(__name__)

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

@torch.no_grad()
def rollout(policy: Policy, prompts: Sequence[RolloutPrompt], cfg: RLConfig,
            pause: Callable[[], object] | None = None) -> Rollout:
    """Sample cfg.k responses per prompt from the current policy (adapter enabled), through the
    one generation function (assistant.lm.generate.sample) with the rollout's sampling settings."""
    t0 = time.perf_counter()
    eps = [p for p in prompts for _ in range(cfg.k)]
    gen = GenerationSettings(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                             repetition_penalty=1.0)
    s = sample(policy.model, policy.tokenizer, [p.prompt_text for p in eps], gen, autocast=cfg.autocast, pause=pause)
    texts = [clean_candidate(raw, p.mode, p.source_text, done) if cfg.clean_texts else raw
             for p, raw, done in zip(eps, s.texts, s.finished)]
    return Rollout(
        prompts=eps,
        input_ids=torch.cat([s.prompt_ids, s.tokens], 1),
        attention_mask=torch.cat([s.prompt_mask, s.mask], 1),
        mask=s.mask.float(),
        texts=texts,
        raw_texts=s.texts,
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
