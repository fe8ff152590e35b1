"""Text-quality metrics for generated candidates.

Pure functions on strings (distinct-n, self-BLEU, repetition rate, length, win-rate with a Wilson
interval) and two model-based ones (perplexity under the reference model, KL of a policy to its
reference on the policy's own samples). Nothing here loads a model or touches storage.

Tokenisation for the pure metrics is `words(text)`: lower-cased runs of letters/digits (with inner
apostrophes kept: "don't" is one word); punctuation is dropped. It is deliberately simple so that
every value in the tests can be worked out by hand."""

from __future__ import annotations

import math
from collections import Counter
from contextlib import nullcontext
from typing import Callable, Sequence

from assistant.lm.logprobs import reference, text_logprobs
from reward.text import distinct_n, mean_repetition_rate, ngrams, words


def mean_length(texts: Sequence[str], tokenizer=None) -> float:
    """Mean length in words, or in model tokens when a tokenizer is given (0.0 for no texts)."""
    if not texts:
        return 0.0
    if tokenizer is None:
        return sum(len(words(t)) for t in texts) / len(texts)
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) / len(texts)

# ----------------------------------------------------------------------------- BLEU
def bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Sentence BLEU of one tokenised hypothesis against tokenised references.

    Papineni et al. 2002: the geometric mean of the modified (clipped) n-gram precisions p_1..p_N,
    times the brevity penalty BP = exp(1 - r/c) when the hypothesis length c is below the length r of
    the reference closest to it (ties: the shorter), else 1.

    Smoothing (Lin & Och 2004; "method 2" in Chen & Cherry 2014): for n >= 2 both the clipped match
    count and the n-gram count get +1, p_n = (m_n + 1) / (l_n + 1), so one missing 4-gram does not
    zero the score of a short sentence. p_1 is not smoothed: a hypothesis sharing no word with any
    reference scores 0. An empty hypothesis, or no references, scores 0.
    """
    if not hypothesis or not references:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        hyp = Counter(ngrams(hypothesis, n))
        max_ref: Counter = Counter()
        for ref in references:
            for g, c in Counter(ngrams(ref, n)).items():
                max_ref[g] = max(max_ref[g], c)
        matches = sum(min(c, max_ref[g]) for g, c in hyp.items())
        total = sum(hyp.values())
        if n == 1:
            if matches == 0:
                return 0.0
            p = matches / total
        else:
            p = (matches + 1) / (total + 1)
        log_p += math.log(p) / max_n
    c = len(hypothesis)
    r = min((abs(len(ref) - c), len(ref)) for ref in references)[1]
    bp = 1.0 if c >= r else math.exp(1.0 - r / c)
    return bp * math.exp(log_p)

def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Self-BLEU (Zhu et al. 2018) of one set of candidates: the mean over candidates of the BLEU
    of each against all the others as references. High = the candidates say the same thing;
    low = diverse. Needs at least two texts (fewer returns 0.0, nothing to compare)."""
    toks = [words(t) for t in texts]
    if len(toks) < 2:
        return 0.0
    scores = [bleu(h, toks[:i] + toks[i + 1 :], max_n) for i, h in enumerate(toks)]
    return sum(scores) / len(scores)

# ----------------------------------------------------------------------------- win-rate
def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (z = 1.96: 95 %).

    center = (p + z²/2n) / (1 + z²/n), half = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).
    `successes` may be fractional (ties counted as half a win). n = 0 gives (0, 1)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)

def win_rate(wins: int, losses: int, ties: int = 0, z: float = 1.96) -> dict[str, float]:
    """Win-rate of A over B from pairwise outcomes, ties counted as half a win, with a Wilson CI.

    Returns {"win_rate", "ci_low", "ci_high", "n"}; with no comparisons the rate is 0.5 and the
    interval (0, 1)."""
    if min(wins, losses, ties) < 0:
        raise ValueError("wins, losses and ties must be non-negative")
    n = wins + losses + ties
    if n == 0:
        return {"win_rate": 0.5, "ci_low": 0.0, "ci_high": 1.0, "n": 0}
    s = wins + 0.5 * ties
    lo, hi = wilson_interval(s, n, z)
    return {"win_rate": s / n, "ci_low": lo, "ci_high": hi, "n": n}

def pairwise_outcomes(a_scores: Sequence[float], b_scores: Sequence[float], eps: float = 1e-9) -> tuple[int, int, int]:
    """(wins, losses, ties) of A over B from paired scores (|a - b| <= eps is a tie)."""
    if len(a_scores) != len(b_scores):
        raise ValueError("a_scores and b_scores must pair up")
    w = sum(1 for a, b in zip(a_scores, b_scores) if a - b > eps)
    l = sum(1 for a, b in zip(a_scores, b_scores) if b - a > eps)
    return w, l, len(a_scores) - w - l

# ----------------------------------------------------------------------------- model-based metrics
def perplexity(model, tokenizer, texts: Sequence[str], contexts: Sequence[str] | None = None,
               use_reference: bool = True) -> float:
    """Perplexity exp(total NLL / total tokens) of `texts` (optionally each conditioned on
    contexts[i], whose tokens are not scored) under `model`.

    With use_reference=True a peft model is evaluated with its adapter disabled, i.e. under the
    reference (base) model. Texts with no tokens are skipped; nan when nothing is scored."""
    contexts = list(contexts) if contexts is not None else [""] * len(texts)
    if len(contexts) != len(texts):
        raise ValueError("contexts and texts must pair up")
    with reference(model) if use_reference else nullcontext():
        lps = text_logprobs(model, tokenizer, contexts, texts)
    nll, n = -sum(float(lp.sum()) for lp in lps), sum(len(lp) for lp in lps)
    return math.exp(nll / n) if n else float("nan")

# ----------------------------------------------------------------------------- summaries
def text_metrics(groups: Sequence[Sequence[str]]) -> dict[str, float]:
    """The pure metrics for K candidates per prompt (`groups[i]` = the candidates of prompt i):
    distinct-1/2 pooled over all candidates, self-BLEU averaged over prompts (groups of >= 2),
    repetition rate and length averaged over candidates."""
    flat = [t for g in groups for t in g]
    sb = [self_bleu(g) for g in groups if len(g) >= 2]
    return {
        "eval/distinct_1": distinct_n(flat, 1),
        "eval/distinct_2": distinct_n(flat, 2),
        "eval/self_bleu": sum(sb) / len(sb) if sb else 0.0,
        "eval/repetition": mean_repetition_rate(flat, 2),
        "eval/length_words": mean_length(flat),
        "eval/candidates": float(len(flat)),
    }

def mean_terms(term_scores: dict[str, Sequence[float]], prefix: str = "eval/reward/") -> dict[str, float]:
    """Mean of each reward term's per-candidate values, under namespaced names."""
    return {f"{prefix}{k}": (sum(v) / len(v) if len(v) else 0.0) for k, v in term_scores.items()}

Scorer = Callable[[Sequence[str], Sequence[str]], dict[str, Sequence[float]]]

"""(prompt texts, candidate texts) -> {term name: per-candidate values}."""
