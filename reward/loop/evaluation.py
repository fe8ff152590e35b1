"""Policy versions compared on the same held-out prompts and feedback: reward, KL to the base, agreement with held-out ratings."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from assistant.lm import adapters
from assistant.lm.config import GenerationSettings
from assistant.lm.generate import clean_candidate, sample
from assistant.lm.logprobs import reference, sequence_logprobs
from reward.eval.quality import pairwise_outcomes, win_rate
from reward.loop.config import LearnerConfig
from reward.rl.preference import PolicyPair

log = logging.getLogger(__name__)

def paired_win_rate(new: Sequence[float], old: Sequence[float]) -> float:
    """Share of paired samples where new beats old, ties counting half (0.5 when there are none)."""
    return win_rate(*pairwise_outcomes(new, old))["win_rate"]


def weighted_agreement(margins: Sequence[float], weights: Sequence[float]) -> float:
    """Weighted share of held-out pairs whose margin is positive (a zero margin counts half):
    sum_i w_i * (1[m_i > 0] + 1[m_i = 0] / 2) / sum_i w_i; 0.5 when the weights sum to zero.
    With every weight 1 it is paired_win_rate(margins, 0)."""
    m, w = np.asarray(margins, np.float64), np.asarray(weights, np.float64)
    if m.shape != w.shape:
        raise ValueError(f"{m.size} margins but {w.size} weights")
    total = float(w.sum())
    if total <= 0:
        return 0.5
    return float((w * ((m > 0) + 0.5 * (m == 0))).sum() / total)


# ----------------------------------------------------------------------------- evaluation
class LogpCache:
    """Sequence log-probs already computed, per version. A version's weights never change, so
    log p(text | context) under version `vid` (0: the base model) is computed once and reused by
    every later evaluation that asks again: the held-out pairs' log-probs under the base and the
    live version are most of a recheck's cost, and the pairs hardly change between cycles."""

    def __init__(self) -> None:
        self.data: dict[tuple[int, str, str], float] = {}
        self.hits = self.misses = 0

    def logprobs(self, runner, tokenizer, vid: int, contexts: Sequence[str], texts: Sequence[str]) -> list[float]:
        """sequence_logprobs of (context, text) under the version `runner` is set to now (`vid`)."""
        keys = [(vid, c, t) for c, t in zip(contexts, texts)]
        todo = list(dict.fromkeys(k for k in keys if k not in self.data))
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            vals = sequence_logprobs(runner, tokenizer, [c for _, c, _ in todo], [t for _, _, t in todo])
            self.data.update(zip(todo, vals))
        return [self.data[k] for k in keys]

    max_entries = 20_000
    """Past this many entries (a few KB each: the prompt is in the key) keep() starts over: the
    base model's entries would otherwise grow with every cycle's new samples."""

    def keep(self, vids: set[int]) -> None:
        """Forget the versions not in `vids` (and everything, once past max_entries)."""
        self.data = {k: v for k, v in self.data.items() if k[0] in vids} if len(self.data) <= self.max_entries else {}


@dataclass
class PolicyEval:
    """How one policy version does on the held-out prompts and feedback of this cycle."""

    version_id: int
    rewards: list[float]
    rm_scores: list[float]
    lengths: list[float]
    kl: float
    """KL to the base model on this policy's own held-out samples (k1 estimate, summed per reply)."""
    agreement: float
    texts: list[str] = field(default_factory=list)
    step_kl: float | None = None
    """KL to the `kl_to` version (the one it was trained from), when asked for."""

    @property
    def reward(self) -> float:
        return float(np.mean(self.rewards)) if self.rewards else 0.0

def evaluate_policies(
    model, tokenizer, adapter_dirs: dict[int, str | None], prompts: Sequence[Any], pairs: Sequence[PolicyPair],
    reward_fn: Callable[..., Any], cfg: LearnerConfig, only: set[int] | None = None,
    kl_to: dict[int, int] | None = None, pause: Callable[[], object] | None = None,
    cache: LogpCache | None = None,
) -> dict[int, PolicyEval]:
    """Evaluate several policy versions on the same held-out prompts and pairs.

    model: a fresh base model (the adapters are attached to it here). adapter_dirs: version id ->
    adapter dir (None = the base model, id 0). prompts: RolloutPrompt. pairs: the held-out
    feedback's pairs (PolicyPair); agreement is weighted_agreement of the implicit rewards'
    margins, each pair weighted by its weight. Reference for KL and agreement = the base model.
    only: evaluate just these ids (the others are loaded as KL targets). kl_to: id -> id whose
    log-probs on the first one's samples give its step KL. Samples come from the one generation
    function (assistant.lm.generate.sample, with `pause` at every decode step), log-probs from
    assistant.lm.logprobs; `cache` keeps the log-probs for the next call (a fresh one if None)."""
    cache = cache if cache is not None else LogpCache()
    names = {vid: f"v{vid}" for vid, d in adapter_dirs.items() if d is not None}
    runner = model
    for vid, d in adapter_dirs.items():
        if d is not None:
            runner = adapters.attach(runner, d, names[vid], active=False)
    runner.eval()

    def use(vid: int):
        if vid == 0 or adapter_dirs.get(vid) is None:
            return reference(runner)
        runner.set_adapter(names[vid])
        return nullcontext()

    rep_prompts = [p for p in prompts for _ in range(cfg.eval_samples)]
    prompt_texts = [p.prompt_text for p in rep_prompts]
    pair_prompts = [p.prompt_text for p in pairs]
    chosen, rejected = [p.chosen for p in pairs], [p.rejected for p in pairs]
    pair_weights = [float(p.weight) for p in pairs]
    with use(0):
        ref_pair_c = cache.logprobs(runner, tokenizer, 0, pair_prompts, chosen)
        ref_pair_r = cache.logprobs(runner, tokenizer, 0, pair_prompts, rejected)
    gen = GenerationSettings(temperature=0.8, top_p=0.95, max_new_tokens=cfg.eval_max_new_tokens,
                             repetition_penalty=1.0)

    results: dict[int, PolicyEval] = {}
    for vid in adapter_dirs:
        if only is not None and vid not in only:
            continue
        with use(vid):
            torch.manual_seed(cfg.seed)
            s = sample(runner, tokenizer, prompt_texts, gen, pause=pause)
            texts = [clean_candidate(raw, p.mode, p.source_text, done) or raw.strip() or "."
                     for p, raw, done in zip(rep_prompts, s.texts, s.finished)]
            pol_samples = cache.logprobs(runner, tokenizer, vid, prompt_texts, texts)
            pol_c = cache.logprobs(runner, tokenizer, vid, pair_prompts, chosen)
            pol_r = cache.logprobs(runner, tokenizer, vid, pair_prompts, rejected)
        with use(0):
            ref_samples = cache.logprobs(runner, tokenizer, 0, prompt_texts, texts)
        step_kl = None
        if kl_to and vid in kl_to:
            with use(kl_to[vid]):
                prev_samples = cache.logprobs(runner, tokenizer, kl_to[vid], prompt_texts, texts)
            step_kl = float(np.mean(np.asarray(pol_samples) - np.asarray(prev_samples))) if texts else 0.0
        rout = reward_fn(rep_prompts, texts)
        total = np.asarray(getattr(rout, "total", rout), np.float64)
        rm = np.asarray(getattr(rout, "terms", {}).get("rm", total), np.float64)
        margins = [(pc - rc) - (pr - rr) for pc, rc, pr, rr in zip(pol_c, ref_pair_c, pol_r, ref_pair_r)]
        agreement = weighted_agreement(margins, pair_weights)
        kl = float(np.mean(np.asarray(pol_samples) - np.asarray(ref_samples))) if texts else 0.0
        results[vid] = PolicyEval(
            version_id=vid, rewards=total.tolist(), rm_scores=rm.tolist(),
            lengths=[float(len(t.split())) for t in texts], kl=kl, agreement=agreement, texts=texts,
            step_kl=step_kl,
        )
    adapters.detach(runner)
    return results
