"""A policy version's suggestions on evaluation prompts, their metrics, and a judged win-rate against the base model."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from assistant.lm.logprobs import kl_to_reference, reference, text_logprobs
from assistant.lm.prompts import build_prompt
from reward.eval import quality as Q
from reward.eval.prompts import EvalPrompt
from reward.eval.raters import make_rater
from reward.functions import RolloutPrompt


# ----------------------------------------------------------------------------- sampling
@dataclass
class Samples:
    """K candidates per prompt from one policy version."""

    version: int
    contexts: list[str]
    """The rendered prompt string for each prompt (what the model was conditioned on)."""
    groups: list[list[str]]
    """groups[i]: the candidates for prompt i."""
    sources: list[str]

def sample_version(generator, prompts: Sequence[EvalPrompt], gen, version: tuple[int, str] | None,
                   progress: Callable[[str], None] | None = None) -> Samples:
    """Generate K candidates per prompt with the given policy version ((id, dir); None = base)."""

    generator.version_source = lambda _profile: version
    generator.refresh_policy()
    contexts, groups, sources = [], [], []
    for i, ep in enumerate(prompts):
        prompt = build_prompt(ep.mode, ep.text, ep.options)
        res = generator.suggest(prompt, ep.text, gen)
        contexts.append(res.prompt_text)
        groups.append(list(res.texts))
        sources.append(ep.text)
        if progress:
            progress(f"  v{generator.policy_version}: prompt {i + 1}/{len(prompts)} ({ep.mode}): {len(res.texts)} candidates")
    return Samples(generator.policy_version, contexts, groups, sources)

def rollout_prompts(prompts: Sequence[EvalPrompt], s: Samples) -> list:
    """reward.functions.RolloutPrompt for every candidate of `s` (what the reward terms need)."""
    from types import SimpleNamespace


    out = []
    for ep, ctx, g in zip(prompts, s.contexts, s.groups):
        rp = RolloutPrompt.from_request(SimpleNamespace(prompt=ctx, mode=ep.mode, text=ep.text, options=ep.options))
        out += [rp] * len(g)
    return out

def fluency_fn(generator) -> Callable:
    """reward.functions' fluency term: mean log-prob per token under the reference model."""
    import numpy as np

    def fluency(prompts, texts) -> np.ndarray:
        ctx = [p.prompt_text for p in prompts]
        with reference(generator.model):
            lps = text_logprobs(generator.model, generator.tokenizer, ctx, texts)
        return np.asarray([float(lp.mean()) if len(lp) else 0.0 for lp in lps], np.float32)

    return fluency

def sample_metrics(generator, prompts: Sequence[EvalPrompt], s: Samples, reward_fn=None) -> dict[str, float]:
    """Text metrics, perplexity under the reference, KL to the reference, reward terms' means."""
    m = Q.text_metrics(s.groups)
    ctx = [c for c, g in zip(s.contexts, s.groups) for _ in g]
    txt = [t for g in s.groups for t in g]
    model, tok = generator.model, generator.tokenizer
    with generator.lock:
        m["eval/perplexity"] = Q.perplexity(model, tok, txt, ctx, use_reference=True)
        kl = kl_to_reference(model, tok, ctx, txt)
        m["eval/kl"], m["eval/kl_k1"] = kl["kl"], kl["kl_k1"]
        m["eval/length_tokens"] = Q.mean_length(txt, tok)
        if reward_fn is not None and txt:
            out = reward_fn(rollout_prompts(prompts, s), txt)
            m.update(Q.mean_terms({k: list(map(float, v)) for k, v in out.terms.items()}))
            m["eval/reward"] = float(out.total.mean())
            if "rm" in out.terms:
                m["eval/rm_score"] = m["eval/reward/rm"]
    return m

Judge = Callable[[Any, str, str], float]

def compare_to_base(prompts: Sequence[EvalPrompt], policy: Samples, base: Samples, judge: Judge) -> dict[str, float]:
    """Win-rate of the policy's candidates over the base's, candidate i against candidate i of the
    same prompt, with a Wilson 95 % interval."""
    w = l = t = 0
    rps = rollout_prompts(prompts, policy)
    i = 0
    for pg, bg in zip(policy.groups, base.groups):
        for j, (a, b) in enumerate(zip(pg, bg)):
            v = judge(rps[i + j], a, b)
            w, l, t = w + (v > 0), l + (v < 0), t + (v == 0)
        i += len(pg)
    r = Q.win_rate(w, l, t)
    return {"eval/win_rate": r["win_rate"], "eval/win_ci_low": r["ci_low"], "eval/win_ci_high": r["ci_high"],
            "eval/win_n": float(r["n"]), "eval/win_ci": f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"}

def evaluate_version(generator, prompts: Sequence[EvalPrompt], gen, version: tuple[int, str] | None,
                     reward_fn=None, judge: Judge | None = None,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Metrics of one policy version ((id, dir); None = the base, version 0) on `prompts`, against
    the base: {"version", "metrics", "base_metrics", "samples"}. Win-rate needs a `judge`
    (a simulated rater, or the reward model's scores)."""
    t0 = time.perf_counter()
    base = sample_version(generator, prompts, gen, None, progress)
    base_m = sample_metrics(generator, prompts, base, reward_fn)
    if version is None:
        pol, pol_m = base, dict(base_m)
    else:
        pol = sample_version(generator, prompts, gen, version, progress)
        pol_m = sample_metrics(generator, prompts, pol, reward_fn)
    if judge is not None and version is not None:
        pol_m.update(compare_to_base(prompts, pol, base, judge))
    pol_m["eval/seconds"] = time.perf_counter() - t0
    samples = [{"mode": p.mode, "text": p.text, "base": b, "policy": g}
               for p, b, g in zip(prompts, base.groups, pol.groups)]
    return {"version": pol.version, "metrics": pol_m, "base_metrics": base_m, "samples": samples}

def reward_judge(reward_fn) -> Judge:
    """A judge from a reward function: the candidate with the higher total reward wins."""

    def judge(rp, a: str, b: str) -> float:
        r = reward_fn([rp, rp], [a, b]).total
        d = float(r[0] - r[1])
        return 0.0 if abs(d) <= 1e-9 else math.copysign(1.0, d)

    return judge

def rater_utility(rater, prompts: Sequence[EvalPrompt], s: Samples) -> float:
    """Mean of the simulated rater's hidden utility over the candidates (no noise)."""
    vals = [u for ep, g in zip(prompts, s.groups) for u in rater.utilities(g, ep.fields())]
    return float(sum(vals) / len(vals)) if vals else float("nan")

def rater_judge(name: str, embedder=None, seed: int = 0) -> Judge:
    """A judge from a simulated rater (reward.eval.raters.make_rater): its noisy pairwise preference."""

    rater = make_rater(name, seed=seed)

    def judge(rp, a: str, b: str) -> float:
        v = rater.judge(a, b, {"mode": rp.mode, "text": rp.source_text, "keywords": rp.keywords})
        return 1.0 if v == 1.0 else (-1.0 if v == 0.0 else 0.0)

    return judge
