"""Preference steps on the person's own ratings: DPO on the policy (DITTO-style use of what they chose).

The RL update learns from the reward model, which generalises the person's ratings to replies
nobody rated. This step learns from the ratings themselves: each pair (a reply the person chose
over a sibling of the same request, as reward.feedback turns stars, best-of-K, edits and accepts
into pairs) raises the policy's log-likelihood ratio to the reference of the chosen reply over the
rejected one (reward.losses.dpo_loss). No generation is needed — the replies are the ones the
person was shown — so an update costs a forward and backward pass over the pairs, a fraction of
an RL rollout.

    1. encode     prompt (the request's exact rendered prompt, left-padded) + reply (right-padded),
                  two rows per pair: chosen, rejected
    2. reference  the reference's sequence log-probs (adapter disabled; no grad), once per
                  (prompt, reply): TrainerState.ref_logp keeps them
    3. update     pref_epochs optimizer steps, each on all the pairs (gradients accumulated over
                  minibatches), on the DPO loss at temperature 1

`train_policy` runs one preference update before each RL update when RLConfig.pref_pairs > 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from assistant.lm.logprobs import token_logprobs
from reward import losses as L
from reward.rl.config import RLConfig
from reward.rl.policy import Policy
from reward.rl.step import TrainerState, _apply_grads, _optimizer


REF_CACHE_MAX = 50_000
"""Entries of TrainerState.ref_logp before it starts over (a few KB each: the prompt is in the key)."""


@dataclass
class PolicyPair:
    """The person preferred `chosen` over `rejected` as a reply to the request rendered as `prompt_text`."""

    prompt_text: str
    chosen: str
    rejected: str
    weight: float = 1.0


def encode_pairs(tokenizer, pairs: Sequence[PolicyPair], max_tokens: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, response mask) for 2 rows per pair (chosen, then rejected):
    the prompt left-padded to the longest prompt, the reply (at most max_tokens tokens) right-padded,
    laid out as a Rollout is, so Policy.forward shares each prompt's pass between its rows."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = []
    for p in pairs:
        prompt = enc(p.prompt_text)
        rows += [(prompt, enc(p.chosen)[:max_tokens]), (prompt, enc(p.rejected)[:max_tokens])]
    P = max(len(a) for a, _ in rows)
    T = max(1, max(len(b) for _, b in rows))
    ids = torch.full((len(rows), P + T), pad, dtype=torch.long)
    att = torch.zeros((len(rows), P + T), dtype=torch.long)
    mask = torch.zeros((len(rows), T))
    for i, (a, b) in enumerate(rows):
        ids[i, P - len(a):P], att[i, P - len(a):P] = torch.tensor(a, dtype=torch.long), 1
        if b:
            ids[i, P:P + len(b)], att[i, P:P + len(b)], mask[i, :len(b)] = torch.tensor(b, dtype=torch.long), 1, 1.0
    return ids, att, mask


def usable(pairs: Sequence[PolicyPair]) -> list[PolicyPair]:
    """Pairs with a prompt, two non-empty different replies and a positive weight."""
    return [p for p in pairs if p.prompt_text and p.chosen.strip() and p.rejected.strip()
            and p.chosen != p.rejected and p.weight > 0]


def preference_update(policy: Policy, state: TrainerState, pairs: Sequence[PolicyPair],
                      cfg: RLConfig) -> dict[str, float]:
    """cfg.pref_epochs DPO steps (beta = cfg.pref_beta) on `pairs`. Returns pref/* metrics: the
    loss and the implicit-reward accuracy and margin on the pairs before the first step
    (pref/*_start) and before the last one."""
    pairs = usable(pairs)
    if not pairs:
        return {}
    t0 = time.perf_counter()
    dev = policy.device
    ids, att, mask = (x.to(dev) for x in encode_pairs(policy.tokenizer, pairs, cfg.max_new_tokens))
    T, n = mask.shape[1], len(pairs)
    weight = torch.tensor([p.weight for p in pairs], dtype=torch.float32, device=dev)
    pair_mb = max(1, cfg.minibatch_size // 2)

    def seq_logp(rows: torch.Tensor, ref: bool) -> torch.Tensor:
        if ref:
            lp = policy.reference_logprobs(ids[rows], att[rows], T, 1.0, cfg.autocast)
        else:
            logits, _ = policy.forward(ids[rows], att[rows], T, 1.0, cfg.autocast)
            lp = token_logprobs(logits, ids[rows][:, -T:])
        return (lp * mask[rows]).sum(1)

    # 2. reference: sequence log-probs of every row, once (state.ref_logp remembers them)
    keys = [(p.prompt_text, t, cfg.max_new_tokens) for p in pairs for t in (p.chosen, p.rejected)]
    if len(state.ref_logp) > REF_CACHE_MAX:
        state.ref_logp.clear()
    first = {k: i for i, k in reversed(list(enumerate(keys)))}  # a reply in several pairs is run once
    todo = torch.tensor([i for k, i in first.items() if k not in state.ref_logp], dtype=torch.long)
    for rows in todo.split(2 * pair_mb) if len(todo) else ():
        for i, v in zip(rows.tolist(), seq_logp(rows.to(dev), ref=True).tolist()):
            state.ref_logp[keys[i]] = v
    ref = torch.tensor([state.ref_logp[k] for k in keys], dtype=torch.float32, device=dev)

    # 3. update: each epoch one optimizer step on all pairs, gradients accumulated over minibatches
    opt = _optimizer(policy, state, cfg)
    opt.zero_grad(set_to_none=True)
    stats: dict[str, float] = {}
    history = []
    policy.model.eval()  # no dropout: the log-probs are the sampling distribution's
    for _epoch in range(cfg.pref_epochs):
        tot = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
        for idx in torch.randperm(n).split(pair_mb):
            if state.pause_point is not None:
                state.pause_point()
            idx = idx.to(dev)
            rows = torch.stack([2 * idx, 2 * idx + 1], 1).flatten()
            lp = seq_logp(rows, ref=False)
            loss, st = L.dpo_loss(lp[0::2], lp[1::2], ref[rows][0::2], ref[rows][1::2], cfg.pref_beta, weight[idx])
            share = weight[idx].sum() / weight.sum()
            if not torch.isfinite(loss):
                stats["pref/skipped_minibatches"] = stats.get("pref/skipped_minibatches", 0) + 1
                continue
            (loss * share).backward()
            tot["loss"] += loss.item() * float(share)
            tot["accuracy"] += float(st["accuracy"]) * len(idx) / n
            tot["margin"] += float(st["margin"]) * len(idx) / n
        _apply_grads(policy, opt, cfg, stats)
        history.append(tot)
    out = {f"pref/{k}_start": v for k, v in history[0].items()}
    out.update({f"pref/{k}": v for k, v in history[-1].items()})
    out.update({"pref/pairs": float(n), "pref/seconds": time.perf_counter() - t0,
                "pref/grad_norm": stats.pop("rl/grad_norm", float("nan")),
                "pref/skipped_steps": stats.pop("rl/skipped_steps", 0.0), **stats})
    return out
