"""What the reward model sees of a (context, suggestion): cheap text statistics, hashed words, and MiniLM embeddings cached by text hash."""

from __future__ import annotations

import math
import re
import zlib
from typing import Any, Sequence

import numpy as np

from assistant.lm.config import embedder_name
from storage.records import text_hash

CONTEXT_EMBED_CHARS = 800

_WORD = re.compile(r"\w+", re.UNICODE)

_SENT = re.compile(r"[.!?]+(?:\s|$)")

_PUNCT = re.compile(r"[^\w\s]|_", re.UNICODE)

_UPPER = re.compile(r"[A-Z]")

_DIGIT = re.compile(r"[0-9]")

STAT_NAMES = (
    "log_chars",
    "log_words",
    "mean_word_len",
    "type_token_ratio",
    "punct_frac",
    "upper_frac",
    "digit_frac",
    "log_newlines",
    "log_sentences",
    "mean_sentence_words",
    "log_len_ratio",
    "repeated_trigram_frac",
    "question_marks",
    "exclamations",
    "context_overlap",
    "novel_word_frac",
    "cos_context",  # cosine of the suggestion and context embeddings (added in raw_features)
)

TEXT_STAT_NAMES = STAT_NAMES[:-1]

RELATION_STAT_NAMES = (
    "coverage",
    "weighted_coverage",
    "bigram_overlap",
    "novel_content_frac",
    "ends_clean",
)

STYLE_STAT_NAMES = (
    "sentence_words_std",
    "dialogue_frac",
    "long_word_frac",
    "comma_rate",
    "ly_word_frac",
)
"""A small generic basis of prose properties (style_stats), beside the length and diversity ones
of STAT_NAMES: how much sentence lengths vary, the share of the text inside quotation marks, of
long words (7 letters or more), commas per word and the share of words ending in -ly."""

ALL_STAT_NAMES = STAT_NAMES + RELATION_STAT_NAMES + ("cos_context_head",) + STYLE_STAT_NAMES

TRAIN_STAT_NAMES = STAT_NAMES + ("sentence_words_std", "long_word_frac", "comma_rate")
"""What a reward model is trained with unless its config names others: STAT_NAMES plus three of
the style basis, chosen over all five, each alone and two other subsets by grouped 5-fold CV on
the training parts of benchmarks/reward_real_data.py's sets (never their held-out parts)."""

_STOP = frozenset(
    "a an the and or but if then so of to in on at by for with from as is are was were be been being am i me my "
    "mine we us our you your he him his she her it its they them their this that these those there here what which "
    "who whom when where why how not no yes do does did done have has had having will would can could should may "
    "might must just very really also too than about into over after before up down out off again all any some "
    "more most other such only own same s t don im ive id dont didnt cant wont isnt".split()
)

_END = re.compile(r"[.!?)\]\"'…]\s*$")

def relation_stats(context: str, text: str) -> np.ndarray:
    """RELATION_STAT_NAMES, in that order (see its docstring)."""
    words = _WORD.findall(text.lower())
    cwords_list = _WORD.findall(context.lower())
    cwords = set(cwords_list)
    content = [w for w in words if w not in _STOP and not w.isdigit()]
    ccontent = [w for w in cwords_list if w not in _STOP and not w.isdigit()]
    cset, sset = set(ccontent), set(content)
    coverage = len(cset & sset) / len(cset) if cset else 0.0
    weighted = sum(w in sset for w in ccontent) / len(ccontent) if ccontent else 0.0
    cbig = set(zip(cwords_list, cwords_list[1:]))
    big = list(zip(words, words[1:]))
    bigram = sum(b in cbig for b in big) / len(big) if big else 0.0
    novel = sum(w not in cwords for w in content) / len(content) if content else 0.0
    ends = 1.0 if _END.search(text.strip()) else 0.0
    return np.array([coverage, weighted, bigram, novel, ends], dtype=np.float32)

FEATURE_BLOCKS = ("s", "c", "sc", "absdiff", "sch", "words", "wvec")

WORD_VECTOR_SCALE = 8.0
"""The ``wvec`` block divides its sum of word vectors by this (about the content words of a short
suggestion), so the block is on the scale of the unit-norm sentence embeddings."""

def parse_feature_blocks(spec: str) -> tuple[str, ...]:
    """"s,sc,words" -> ("s", "sc", "words"); ValueError naming the choices for anything else."""
    out = tuple(x.strip() for x in spec.split(",") if x.strip())
    bad = [x for x in out if x not in FEATURE_BLOCKS]
    if bad or not out:
        raise ValueError(f"unknown feature block(s) {bad or spec!r}; choose from {', '.join(FEATURE_BLOCKS)}")
    return out

def hashed_words(text: str, dim: int) -> np.ndarray:
    """The ``words`` feature block: which words a text uses, as a unit-norm vector of ``dim``
    buckets (each distinct lower-cased word adds 1 to bucket crc32(word) % dim). It lets the head
    learn a person's taste for particular words (a vocabulary, a tone, their own keywords), which
    one sentence embedding of the whole text blurs."""
    v = np.zeros(dim, np.float32)
    for w in set(_WORD.findall(text.lower())):
        v[zlib.crc32(w.encode("utf-8")) % dim] += 1.0
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v

def content_words(text: str) -> list[str]:
    """The ``wvec`` block's words: lower-cased, stop words and numbers dropped, repeats kept (the
    block sums one embedding per occurrence, so a taste for more of a kind of word can show)."""
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP and not w.isdigit()]


def word_vector_sums(texts: Sequence[str], embed: Any, dim: int) -> np.ndarray:
    """The ``wvec`` feature block, ``dim`` wide: per text, the sum of the embeddings of its content
    words, each word embedded on its own (``embed``: list of words -> unit-norm vectors, the
    EmbeddingCache), divided by WORD_VECTOR_SCALE. A sentence embedding of the whole text is
    dominated by its topic; in a space of single words, words of one kind (colours, sounds, warm
    words) lie near each other, so a head can generalise a taste from the few such words it saw
    rated to others of their kind. A text without content words gives zeros."""
    words = [content_words(t) for t in texts]
    vocab = sorted({w for ws in words for w in ws})
    out = np.zeros((len(texts), dim), np.float32)
    if not vocab:
        return out
    vecs = embed(vocab)
    at = {w: i for i, w in enumerate(vocab)}
    for i, ws in enumerate(words):
        if ws:
            out[i] = vecs[[at[w] for w in ws]].sum(0) / WORD_VECTOR_SCALE
    return out


_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”")


def style_stats(text: str) -> np.ndarray:
    """STYLE_STAT_NAMES, in that order (see its docstring). Sentences end at . ! ? (a text without
    one is one sentence); quotation: "..." or “...”, quote marks included."""
    parts = [p for p in re.split(r"[.!?]+(?:\s|$)", text) if p.strip()]
    per = [len(_WORD.findall(p)) for p in parts] or [0]
    words = _WORD.findall(text.lower())
    nw = max(len(words), 1)
    quoted = sum(len(m) for m in _QUOTED.findall(text))
    return np.array([float(np.std(per)), quoted / max(len(text), 1), sum(len(w) >= 7 for w in words) / nw,
                     text.count(",") / nw, sum(len(w) > 3 and w.endswith("ly") for w in words) / nw],
                    dtype=np.float32)


def text_stats(context: str, text: str) -> np.ndarray:
    """Cheap, model-free statistics of a suggestion (and its relation to the context)."""
    n = max(len(text), 1)
    words = _WORD.findall(text.lower())
    cwords = set(_WORD.findall(context.lower()))
    nw = max(len(words), 1)
    sentences = max(len(_SENT.findall(text)), 1)
    trigrams = list(zip(words, words[1:], words[2:]))
    rep = 1.0 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
    overlap = sum(w in cwords for w in words) / nw if words else 0.0
    novel = len(set(words) - cwords) / max(len(set(words)), 1)
    return np.array(
        [
            math.log1p(len(text)),
            math.log1p(len(words)),
            sum(map(len, words)) / nw,
            len(set(words)) / nw,
            len(_PUNCT.findall(text)) / n,
            len(_UPPER.findall(text)) / n,
            len(_DIGIT.findall(text)) / n,
            math.log1p(text.count("\n")),
            math.log1p(sentences),
            len(words) / sentences,
            math.log1p(len(text)) - math.log1p(len(context)),
            rep,
            min(text.count("?"), 10) / 10,
            min(text.count("!"), 10) / 10,
            overlap,
            novel,
        ],
        dtype=np.float32,
    )

def context_for_embedding(context: str) -> str:
    return context if len(context) <= CONTEXT_EMBED_CHARS else context[-CONTEXT_EMBED_CHARS:]

def context_head_for_embedding(context: str) -> str:
    return context if len(context) <= CONTEXT_EMBED_CHARS else context[:CONTEXT_EMBED_CHARS]

# ----------------------------------------------------------------------------- embedding cache
def _embedder_name(embedder: Any) -> str:

    return embedder_name(embedder)

class EmbeddingCache:
    """Text -> unit-norm embedding, looked up in memory, then in the store (by text hash and
    embedder name); only texts never seen before are embedded, and those are written back."""

    def __init__(self, embedder: Any, store: Any = None, batch_size: int = 64):
        self.embedder, self.store, self.batch_size = embedder, store, batch_size
        self.name = _embedder_name(embedder) if embedder is not None else None
        self.memory: dict[str, np.ndarray] = {}
        self.n_embedded = 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:

        hashes = [text_hash(t) for t in texts]
        missing = [h for h in dict.fromkeys(hashes) if h not in self.memory]
        if missing and self.store is not None and self.name:
            self.memory.update(self.store.get_embeddings(missing, self.name))
            missing = [h for h in missing if h not in self.memory]
        if missing:
            if self.embedder is None:
                raise RuntimeError("texts are not in the embedding cache and no embedder is loaded")
            first = {}
            for h, t in zip(hashes, texts):
                first.setdefault(h, t)
            todo = [first[h] for h in missing]
            vecs = self.embedder.encode(
                todo, batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True,
                show_progress_bar=False,
            ).astype(np.float32)
            new = dict(zip(missing, vecs))
            self.n_embedded += len(new)
            self.memory.update(new)
            if self.store is not None and self.name:
                self.store.put_embeddings(new, self.name)
        return np.stack([self.memory[h] for h in hashes]) if hashes else np.zeros((0, 0), np.float32)
