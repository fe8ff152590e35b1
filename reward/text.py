"""Pure text statistics shared by the reward terms, the raters and the evaluation metrics.

Tokenisation is `words(text)`: lower-cased runs of letters/digits (with inner apostrophes kept:
"don't" is one word); punctuation is dropped. It is deliberately simple so that every value in
the tests can be worked out by hand.
"""

from __future__ import annotations

import re
from typing import Sequence

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")

# ----------------------------------------------------------------------------- tokens and n-grams
def words(text: str) -> list[str]:
    """Lower-cased word tokens of `text` (punctuation dropped)."""
    return _WORD.findall((text or "").lower())

def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of a token list (empty if it is shorter than n)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]

# ----------------------------------------------------------------------------- diversity
def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / total n-grams, pooled across all `texts`.

    1.0 means no n-gram occurs twice anywhere in the set; 0.0 is returned when there are no n-grams
    at all (every text shorter than n words)."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        grams.extend(ngrams(words(t), n))
    return len(set(grams)) / len(grams) if grams else 0.0

def repetition_rate(text: str, n: int = 2) -> float:
    """Fraction of the n-grams in one text that repeat an earlier n-gram of the same text
    (1 - unique/total; "rep-n" of Welleck et al. 2019). 0.0 for a text with no n-grams."""
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0

def mean_repetition_rate(texts: Sequence[str], n: int = 2) -> float:
    """repetition_rate averaged over texts (0.0 for no texts)."""
    return sum(repetition_rate(t, n) for t in texts) / len(texts) if texts else 0.0
