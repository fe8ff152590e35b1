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

# ----------------------------------------------------------------------------- near duplicates
def near_duplicate_families(texts: Sequence[str], n: int = 5, min_jaccard: float = 0.05,
                            max_postings: int = 50) -> list[int]:
    """Family id of each text (0, 1, ... in order of first member): two texts whose word n-gram
    sets have a Jaccard similarity of at least ``min_jaccard`` are one family, and so are texts
    linked through a chain of such pairs (union-find). An n-gram found in more than
    ``max_postings`` texts (a stock phrase) links nothing. Versions of one paragraph (an original
    and its edits) share most of their n-grams; unrelated paragraphs share almost none."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [set(ngrams(words(t), n)) for t in texts]
    postings: dict[tuple[str, ...], list[int]] = {}
    for i, g in enumerate(grams):
        for x in g:
            postings.setdefault(x, []).append(i)
    shared: dict[tuple[int, int], int] = {}
    for ids in postings.values():
        if len(ids) <= max_postings:
            for a in range(len(ids)):
                for b in ids[a + 1 :]:
                    shared[(ids[a], b)] = shared.get((ids[a], b), 0) + 1
    parent = list(range(len(texts)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for (a, b), k in shared.items():
        if k / len(grams[a] | grams[b]) >= min_jaccard:
            parent[root(a)] = root(b)
    ids: dict[int, int] = {}
    return [ids.setdefault(root(i), len(ids)) for i in range(len(texts))]
