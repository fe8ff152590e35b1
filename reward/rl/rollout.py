"""Rollouts: K samples per prompt from the current policy, with the masks the update needs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from assistant.lm.generate import clean_candidate
from assistant.lm.models import autocast_context
from reward import losses as L
from reward.functions import RolloutPrompt
from reward.rl.config import RLConfig
from reward.rl.policy import Policy, token_logprobs

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
