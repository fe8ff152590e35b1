"""Reward models: (context, text) -> scalar reward, higher is better.

Two backbones share one interface (``score``, ``save``, ``load``, ``reward_mean``/``reward_std``):

- ``RewardModel`` (default): a small torch head over MiniLM sentence embeddings plus cheap text
  statistics. Features per (context c, suggestion s): chosen blocks of [s, c, s*c, |s-c|]
  (training default: s and s*c) plus stats(c, s) and cos(s, c). Opt-in (named in the config, off by
  default): lexical relation stats (``RELATION_STAT_NAMES``: coverage of the context's content
  words, bigram overlap, ...), ``cos_context_head`` and the block ``sch`` (s times the embedding of
  the context's *beginning*), and the sentence-level alignment stats ``ALIGN_STAT_NAMES`` (MiniLM
  embeddings of the context's and suggestion's sentences, cached like any text). They did not beat the default on an inner cross-validation of the
  benchmark sets' training parts (see benchmarks/reward_real_data.py). Embeddings are cached in the
  store by ``text_hash`` and embedder name (and in memory), so retraining never re-embeds old
  text; training touches only the head.
- ``LMRewardModel`` (``--rm-backbone lm``, for GPU users): the base causal LM with LoRA and a scalar
  head on the last token's hidden state. The head is saved beside the adapter
  (``adapter/`` + ``reward_head.safetensors``) so a reload gives the same rewards.
- ``EnsembleRewardModel`` (``--ensemble M``, opt-in): M embedder heads, each trained on a bootstrap
  resample of the rated requests; ``score`` is their mean and ``score_members`` lets the RL reward
  subtract their disagreement. All heads live in one ``reward_head.safetensors``.

Files of a saved reward model: ``reward_config.json`` (backbone, sizes, embedder name) and
``reward_head.safetensors`` (all head weights, feature normalisation and reward mean/std).
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_FILE = "reward_config.json"
HEAD_FILE = "reward_head.safetensors"
ADAPTER_DIR = "adapter"
CONTEXT_EMBED_CHARS = 800
"""The context is embedded from its end (the part a reply answers). MiniLM reads only its first
256 tokens, so the tail is cut short enough (~200 tokens of English) to be read to its end."""

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
"""Optional statistics of how a suggestion relates to its context (computed only when a model's
config names them): share of the context's distinct content words the text contains; the same
weighted by how often each word occurs in the context; share of the text's word bigrams found in
the context; share of the text's content words absent from the context; whether the text ends
with sentence punctuation (1) or stops mid-sentence (0)."""
ALIGN_STAT_NAMES = ("align_coverage", "align_faithfulness")
"""Optional sentence-level alignment of a suggestion with its context, from MiniLM embeddings of
their sentences (see ``alignment_stats``): coverage = mean over the context's sentences of the best
cosine to any sentence of the suggestion; faithfulness = mean over the suggestion's sentences of
the best cosine to any sentence of the context."""
ALL_STAT_NAMES = STAT_NAMES + RELATION_STAT_NAMES + ("cos_context_head",) + ALIGN_STAT_NAMES
"""cos_context_head: cosine of the suggestion with the embedding of the context's beginning."""
ALIGN_CONTEXT_CHARS = 3000
"""Alignment reads the context's last 3,000 characters ..."""
ALIGN_CONTEXT_SENTENCES = 40
"""... and at most its last 40 sentences ..."""
ALIGN_TEXT_SENTENCES = 8
"""... and the suggestion's first 8 sentences."""
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")

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


FEATURE_BLOCKS = ("s", "c", "sc", "absdiff", "sch", "words")
"""The feature blocks RewardModelConfig.emb_features may name."""


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


def split_sentences(text: str, min_words: int = 3) -> list[str]:
    """Sentences (split after . ! ? followed by space, and at line breaks) of at least ``min_words``
    words; the whole stripped text when none qualifies (so every text has one)."""
    out = [x.strip() for x in _SENT_SPLIT.split(text) if len(x.split()) >= min_words]
    return out or [text.strip()]


def alignment_sentences(context: str, text: str) -> tuple[list[str], list[str]]:
    """The context sentences and suggestion sentences ``alignment_stats`` compares."""
    c = split_sentences(context[-ALIGN_CONTEXT_CHARS:])[-ALIGN_CONTEXT_SENTENCES:]
    return c, split_sentences(text)[:ALIGN_TEXT_SENTENCES]


def alignment_stats(context_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """ALIGN_STAT_NAMES from unit-norm sentence embeddings of the context (m, d) and of the
    suggestion (n, d): [mean_i max_j cos(c_i, t_j), mean_j max_i cos(t_j, c_i)]."""
    sim = np.asarray(context_emb, np.float32) @ np.asarray(text_emb, np.float32).T
    return np.array([sim.max(1).mean(), sim.max(0).mean()], dtype=np.float32)


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
    from assistant.lm.models import embedder_name

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
        from storage.store import text_hash

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


# ----------------------------------------------------------------------------- embedder backbone
@dataclass
class RewardModelConfig:
    """Shape of the embedder-backbone reward head (saved as reward_config.json)."""

    emb_dim: int = 384
    """Sentence-embedding size (MiniLM: 384)."""
    hidden: int = 256
    """Hidden units of the MLP head (0: a linear head only)."""
    dropout: float = 0.1
    """Dropout on the head's hidden layer during training."""
    embedder: str = "all-MiniLM-L6-v2"
    """Name of the embedder the features come from (cache key)."""
    stats: tuple[str, ...] = STAT_NAMES
    """Names of the text statistics appended to the embedding features (from ALL_STAT_NAMES, in
    this order; older saved models name STAT_NAMES and load unchanged)."""
    emb_features: tuple[str, ...] = ("s", "c", "sc", "absdiff")
    """Feature blocks fed to the head: s (suggestion), c (context), sc (s*c), absdiff (|s-c|),
    sch (s times the embedding of the context's beginning), and words (the suggestion's words,
    hashed into ``words_dim`` buckets, see ``hashed_words``)."""
    words_dim: int = 2048
    """Buckets of the ``words`` block (unused without it)."""
    backbone: str = "embedder"

    @property
    def n_features(self) -> int:
        return self.n_emb_features + len(self.stats)

    @property
    def n_emb_features(self) -> int:
        """Width of the feature blocks (everything before the statistics)."""
        return sum(self.words_dim if f == "words" else self.emb_dim for f in self.emb_features)


def _collect_scores(chunks: list[torch.Tensor], mean: float, std: float, normalize: bool, dim: int = 0) -> np.ndarray:
    """Concatenate batched scores along ``dim`` (1 for an ensemble's (members, N) batches);
    optionally standardise them with the training mean/std."""
    r = torch.cat(chunks, dim=dim).numpy() if chunks else np.zeros(0, np.float32)
    if normalize:
        r = (r - float(mean)) / max(float(std), 1e-6)
    return r.astype(np.float32)


class RewardModel(nn.Module):
    """MLP (plus a linear skip) over [s, c, s*c, |s-c|, standardised stats]."""

    def __init__(self, cfg: RewardModelConfig, embedder: Any = None, store: Any = None):
        super().__init__()
        unknown = [f for f in cfg.emb_features if f not in FEATURE_BLOCKS]
        if unknown:
            raise ValueError(f"unknown feature block(s) {unknown}; choose from {', '.join(FEATURE_BLOCKS)}")
        self.cfg = cfg
        d = cfg.n_features
        self.mlp = (nn.Sequential(nn.Linear(d, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, 1))
                    if cfg.hidden > 0 else None)
        self.linear = nn.Linear(d, 1)
        self.register_buffer("stat_mean", torch.zeros(len(cfg.stats)))
        self.register_buffer("stat_std", torch.ones(len(cfg.stats)))
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))
        self.cache = EmbeddingCache(embedder, store)

    # -- features
    def raw_features(self, contexts: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        """Unnormalised features (N, n_features); stats are standardised in forward()."""
        if len(contexts) != len(texts):
            raise ValueError("contexts and texts must have the same length")
        s = self.cache(list(texts))
        c = self.cache([context_for_embedding(x) for x in contexts])
        stats = self._stats(contexts, texts, s, c)
        parts = {"s": s, "c": c, "sc": s * c, "absdiff": np.abs(s - c)}
        if "sch" in self.cfg.emb_features:
            parts["sch"] = s * self._head(contexts)
        if "words" in self.cfg.emb_features:
            parts["words"] = np.stack([hashed_words(t, self.cfg.words_dim) for t in texts]).reshape(len(texts), -1)
        feats = np.concatenate([parts[f] for f in self.cfg.emb_features] + [stats], axis=1)
        return torch.from_numpy(feats.astype(np.float32))

    def _head(self, contexts: Sequence[str]) -> np.ndarray:
        """Embeddings of the contexts' beginnings (a post's title and opening; a chat's first turn)."""
        return self.cache([context_head_for_embedding(x) for x in contexts])

    def _stats(self, contexts: Sequence[str], texts: Sequence[str], s: np.ndarray, c: np.ndarray) -> np.ndarray:
        """The statistics named in cfg.stats, in that order (N, len(cfg.stats))."""
        names = self.cfg.stats
        unknown = [n for n in names if n not in ALL_STAT_NAMES]
        if unknown:
            raise ValueError(f"unknown reward statistics {unknown}")
        cols: dict[str, np.ndarray] = {}
        if any(n in TEXT_STAT_NAMES for n in names):
            st = np.stack([text_stats(cx, t) for cx, t in zip(contexts, texts)]).reshape(len(texts), -1)
            cols.update(zip(TEXT_STAT_NAMES, st.T))
        if any(n in RELATION_STAT_NAMES for n in names):
            st = np.stack([relation_stats(cx, t) for cx, t in zip(contexts, texts)]).reshape(len(texts), -1)
            cols.update(zip(RELATION_STAT_NAMES, st.T))
        if any(n in ALIGN_STAT_NAMES for n in names):
            cols.update(zip(ALIGN_STAT_NAMES, self._alignment(contexts, texts).T))
        if "cos_context" in names:
            cols["cos_context"] = (s * c).sum(1)
        if "cos_context_head" in names:
            cols["cos_context_head"] = (s * self._head(contexts)).sum(1)
        if not names:
            return np.zeros((len(texts), 0), np.float32)
        return np.stack([cols[n] for n in names], axis=1).astype(np.float32)

    def _alignment(self, contexts: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """alignment_stats for each (context, text) (N, 2); all sentences embedded in one batch."""
        spans, flat = [], []
        for cx, t in zip(contexts, texts):
            cs, ts = alignment_sentences(cx, t)
            spans.append((len(flat), len(cs), len(ts)))
            flat += cs + ts
        emb = self.cache(flat) if flat else np.zeros((0, self.cfg.emb_dim), np.float32)
        out = [alignment_stats(emb[a : a + m], emb[a + m : a + m + n]) for a, m, n in spans]
        return np.stack(out).reshape(len(texts), 2) if out else np.zeros((0, 2), np.float32)

    def fit_stat_normalisation(self, feats: torch.Tensor) -> None:
        st = feats[:, self.cfg.n_emb_features :]
        self.stat_mean.copy_(st.mean(0))
        self.stat_std.copy_(st.std(0).clamp_min(1e-3) if len(st) > 1 else torch.ones_like(self.stat_std))

    def normalised_stats(self, feats: torch.Tensor) -> torch.Tensor:
        """The statistics columns of raw features, standardised as forward() sees them."""
        return (feats[:, self.cfg.n_emb_features :] - self.stat_mean) / self.stat_std

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        k = self.cfg.n_emb_features
        x = torch.cat([feats[:, :k], self.normalised_stats(feats)], dim=1)
        r = self.linear(x) if self.mlp is None else self.mlp(x) + self.linear(x)
        return r.squeeze(-1)

    @torch.no_grad()
    def score(self, contexts: Sequence[str], texts: Sequence[str], normalize: bool = False,
              batch_size: int = 512) -> np.ndarray:
        """Rewards for each (context, text), higher is better. normalize=True standardises them
        with the mean/std of the training rewards."""
        was = self.training
        self.eval()
        out = []
        for i in range(0, len(texts), batch_size):
            out.append(self(self.raw_features(contexts[i : i + batch_size], texts[i : i + batch_size])))
        self.train(was)
        return _collect_scores(out, self.reward_mean, self.reward_std, normalize)

    # -- persistence
    def save(self, directory: str | Path) -> None:
        _save_head(self, _config_json(self.cfg), directory)

    @classmethod
    def load(cls, directory: str | Path, embedder: Any = None, store: Any = None, lm: Any = None):
        """Load a saved reward model. An LM-backbone model needs ``lm`` (model, tokenizer)."""
        directory = Path(directory)
        cfg = json.loads((directory / CONFIG_FILE).read_text())
        if cfg.get("backbone", "embedder") == "lm":
            return LMRewardModel.load(directory, lm)
        if cfg.get("backbone") == "ensemble":
            return EnsembleRewardModel.load(directory, embedder, store)
        return _load_head(cls(_config_from_json(cfg), embedder, store), embedder, directory)


def _config_json(cfg: RewardModelConfig) -> dict[str, Any]:
    """A head's config as reward_config.json holds it (tuples as lists)."""
    d = asdict(cfg)
    d["stats"], d["emb_features"] = list(d["stats"]), list(d["emb_features"])
    return d


def _config_from_json(d: dict[str, Any]) -> RewardModelConfig:
    """The inverse of _config_json; older files without stats/emb_features get the defaults of their time."""
    d = dict(d)
    d["stats"] = tuple(d.get("stats", STAT_NAMES))
    d["emb_features"] = tuple(d.get("emb_features", ("s", "c", "sc", "absdiff")))
    return RewardModelConfig(**d)


def _save_head(model: nn.Module, config: dict[str, Any], directory: str | Path) -> None:
    """reward_config.json and every weight and buffer in reward_head.safetensors."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(directory / HEAD_FILE))


def _load_head(model: nn.Module, embedder: Any, directory: str | Path):
    """Fill a freshly built head (or ensemble) from reward_head.safetensors, after checking that
    ``embedder`` is the one it was trained on."""
    trained_on = model.cfg.embedder if isinstance(model.cfg, RewardModelConfig) else model.cfg.member.embedder
    if embedder is not None and _embedder_name(embedder) != trained_on:
        raise ValueError(f"reward model was trained on embedder {trained_on!r}, got {_embedder_name(embedder)!r}")
    model.cache.name = trained_on
    model.load_state_dict(load_file(str(Path(directory) / HEAD_FILE)))
    model.eval()
    return model


# ----------------------------------------------------------------------------- bootstrap ensemble
@dataclass
class EnsembleRewardConfig:
    """A bootstrap ensemble of embedder-backbone heads (saved as reward_config.json)."""

    members: int = 4
    """Heads in the ensemble."""
    member: RewardModelConfig = field(default_factory=RewardModelConfig)
    """The shape every head shares (so one set of features feeds them all)."""
    backbone: str = "ensemble"


class EnsembleRewardModel(nn.Module):
    """Several ``RewardModel`` heads on the same features, each fitted to its own bootstrap
    resample of the rated requests (reward.train does the resampling).

    ``score`` is the members' mean, so the ensemble drops in wherever one model is used.
    ``score_members`` gives every member's scores: where the ratings pin the reward down the
    members agree, and where a text is unlike anything rated (what RL against a learned reward
    drifts towards) they disagree. ``RewardConfig.rm_uncertainty`` turns that spread into a
    conservative RL reward, mean - alpha * std (Coste et al., "Reward Model Ensembles Help
    Mitigate Overoptimization", ICLR 2024). Standardised scores use the mean and std of the
    ensemble mean over the training texts, for the members as well, so the spread is in the same
    units as the score."""

    def __init__(self, cfg: EnsembleRewardConfig, embedder: Any = None, store: Any = None):
        super().__init__()
        if cfg.members < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {cfg.members}")
        self.cfg = cfg
        self.members = nn.ModuleList(RewardModel(cfg.member, embedder, store) for _ in range(cfg.members))
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))
        self.cache = self.members[0].cache

    @classmethod
    def from_members(cls, members: Sequence[RewardModel]) -> "EnsembleRewardModel":
        """Wrap trained heads (same config); their weights are taken over as they are."""
        cfgs = {json.dumps(asdict(m.cfg), sort_keys=True) for m in members}
        if len(cfgs) != 1:
            raise ValueError("ensemble members must share one RewardModelConfig")
        ens = cls(EnsembleRewardConfig(members=len(members), member=members[0].cfg))
        ens.members = nn.ModuleList(members)
        ens.cache = members[0].cache
        return ens

    @property
    def cache(self) -> EmbeddingCache:
        return self._cache

    @cache.setter
    def cache(self, value: EmbeddingCache) -> None:
        object.__setattr__(self, "_cache", value)
        for m in getattr(self, "members", []):
            m.cache = value

    def raw_features(self, contexts: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        return self.members[0].raw_features(contexts, texts)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(M, N) raw scores of every member."""
        return torch.stack([m(feats) for m in self.members])

    @torch.no_grad()
    def score_members(self, contexts: Sequence[str], texts: Sequence[str], normalize: bool = False,
                      batch_size: int = 512) -> np.ndarray:
        """(members, N) scores; normalize=True standardises them all with the ensemble's
        training mean/std."""
        was = self.training
        self.eval()
        out = [self(self.raw_features(contexts[i : i + batch_size], texts[i : i + batch_size]))
               for i in range(0, len(texts), batch_size)]
        self.train(was)
        if not out:
            return np.zeros((len(self.members), 0), np.float32)
        return _collect_scores(out, self.reward_mean, self.reward_std, normalize, dim=1)

    def score(self, contexts: Sequence[str], texts: Sequence[str], normalize: bool = False,
              batch_size: int = 512) -> np.ndarray:
        """The members' mean score for each (context, text)."""
        return self.score_members(contexts, texts, normalize, batch_size).mean(0)

    def save(self, directory: str | Path) -> None:
        config = {"members": self.cfg.members, "member": _config_json(self.cfg.member), "backbone": "ensemble"}
        _save_head(self, config, directory)

    @classmethod
    def load(cls, directory: str | Path, embedder: Any = None, store: Any = None) -> "EnsembleRewardModel":
        cfg = json.loads((Path(directory) / CONFIG_FILE).read_text())
        ens_cfg = EnsembleRewardConfig(members=int(cfg["members"]), member=_config_from_json(cfg["member"]))
        return _load_head(cls(ens_cfg, embedder, store), embedder, directory)


# ----------------------------------------------------------------------------- LM backbone
@dataclass
class LMRewardConfig:
    """LM-backbone reward model (saved as reward_config.json beside adapter/)."""

    base_model: str = ""
    """Name or path of the base causal LM (informational; the caller loads it)."""
    hidden_size: int = 0
    """Hidden size of the base LM (the head's input)."""
    max_length: int = 512
    """Tokens per (context, text); the context is cut from the left to fit."""
    lora_r: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    backbone: str = "lm"


class LMRewardModel(nn.Module):
    """Base causal LM + LoRA + scalar head on the last token's final hidden state."""

    def __init__(self, model: nn.Module, tokenizer: Any, cfg: LMRewardConfig, wrap: bool = True):
        super().__init__()
        if wrap:
            from peft import LoraConfig, get_peft_model

            lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                              target_modules=list(cfg.target_modules), bias="none")
            model = get_peft_model(model, lcfg)
        self.lm = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        cfg.hidden_size = cfg.hidden_size or int(model.config.hidden_size)
        device = next(model.parameters()).device
        self.head = nn.Linear(cfg.hidden_size, 1, device=device)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(cfg.hidden_size + 1))
        nn.init.zeros_(self.head.bias)
        self.register_buffer("reward_mean", torch.zeros((), device=device))
        self.register_buffer("reward_std", torch.ones((), device=device))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def _encode(self, contexts: Sequence[str], texts: Sequence[str]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        ids = []
        for c, t in zip(contexts, texts):
            ti = tok(t, add_special_tokens=False)["input_ids"][: self.cfg.max_length // 2]
            ci = tok(c + "\n\n", add_special_tokens=False)["input_ids"]
            ci = ci[-(self.cfg.max_length - len(ti)) :] if len(ci) + len(ti) > self.cfg.max_length else ci
            seq = ci + ti + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
            ids.append(seq[-self.cfg.max_length :])
        n = max(len(x) for x in ids)
        pad = tok.pad_token_id
        input_ids = torch.full((len(ids), n), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), n), dtype=torch.long)
        for i, x in enumerate(ids):  # left padding: the last position is the last real token
            input_ids[i, n - len(x) :] = torch.tensor(x)
            mask[i, n - len(x) :] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}

    def forward(self, contexts: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        enc = self._encode(contexts, texts)
        out = self.lm(**enc, output_hidden_states=True)
        h = out.hidden_states[-1][:, -1, :]
        return self.head(h.to(self.head.weight.dtype)).squeeze(-1).float()

    @torch.no_grad()
    def score(self, contexts: Sequence[str], texts: Sequence[str], normalize: bool = False,
              batch_size: int = 8) -> np.ndarray:
        was = self.training
        self.eval()
        out = [self(contexts[i : i + batch_size], texts[i : i + batch_size]).cpu()
               for i in range(0, len(texts), batch_size)]
        self.train(was)
        return _collect_scores(out, self.reward_mean, self.reward_std, normalize)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = asdict(self.cfg)
        cfg["target_modules"] = list(cfg["target_modules"])
        (directory / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
        self.lm.save_pretrained(str(directory / ADAPTER_DIR), safe_serialization=True)
        tensors = {f"head.{k}": v.detach().float().contiguous().cpu() for k, v in self.head.state_dict().items()}
        tensors["reward_mean"] = self.reward_mean.detach().float().reshape(1).cpu()
        tensors["reward_std"] = self.reward_std.detach().float().reshape(1).cpu()
        save_file(tensors, str(directory / HEAD_FILE))

    @classmethod
    def load(cls, directory: str | Path, lm: Any) -> "LMRewardModel":
        """``lm``: (model, tokenizer) or an assistant.models.LoadedLM of the same base model. The
        base model is wrapped in place with the saved adapter."""
        from peft import PeftModel

        if lm is None:
            raise ValueError("an LM-backbone reward model needs the base LM (pass lm=(model, tokenizer))")
        model, tok = (lm.model, lm.tokenizer) if hasattr(lm, "model") and hasattr(lm, "tokenizer") else lm
        directory = Path(directory)
        cfg = json.loads((directory / CONFIG_FILE).read_text())
        cfg["target_modules"] = tuple(cfg.get("target_modules", ()))
        cfg = LMRewardConfig(**cfg)
        peft_model = PeftModel.from_pretrained(model, str(directory / ADAPTER_DIR))
        rm = cls(peft_model, tok, cfg, wrap=False)
        t = load_file(str(directory / HEAD_FILE))
        rm.head.load_state_dict({"weight": t["head.weight"], "bias": t["head.bias"]})
        rm.reward_mean.fill_(float(t["reward_mean"][0]))
        rm.reward_std.fill_(float(t["reward_std"][0]))
        rm.eval()
        return rm


def load_reward_model(directory: str | Path, embedder: Any = None, store: Any = None, lm: Any = None):
    """Either backbone, by what reward_config.json says."""
    return RewardModel.load(directory, embedder, store, lm)
