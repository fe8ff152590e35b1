"""Reward models: (context, text) -> scalar reward, higher is better.

Two backbones share one interface (``score``, ``save``, ``load``, ``reward_mean``/``reward_std``):

- ``RewardModel`` (default): a small torch head over MiniLM sentence embeddings plus cheap text
  statistics. Features per (context c, suggestion s): chosen blocks of [s, c, s*c, |s-c|]
  (training default: s and s*c) plus stats(c, s) and cos(s, c). Opt-in (named in the config, off by
  default): lexical relation stats (``RELATION_STAT_NAMES``: coverage of the context's content
  words, bigram overlap, ...), ``cos_context_head`` and the block ``sch`` (s times the embedding of
  the context's *beginning*). They did not beat the default on an inner cross-validation of the
  benchmark sets' training parts (see benchmarks/reward_real_data.py). Embeddings are cached in the
  store by ``text_hash`` and embedder name (and in memory), so retraining never re-embeds old
  text; training touches only the head.
- ``LMRewardModel`` (``--backbone lm``, for GPU users): the base causal LM with LoRA and a scalar
  head on the last token's hidden state. The head is saved beside the adapter
  (``adapter/`` + ``reward_head.safetensors``) so a reload gives the same rewards.
- ``EnsembleRewardModel`` (``--ensemble M``, opt-in): M embedder heads, each trained on a bootstrap
  resample of the rated requests; ``score`` is their mean and ``score_members`` lets the RL reward
  subtract their disagreement. Anchored (the training default): one more head, fitted on all the
  data, gives the score, and the bootstrap heads give only the spread around it. All heads live in
  one ``reward_head.safetensors``.

Files of a saved reward model: ``reward_config.json`` (backbone, sizes, embedder name) and
``reward_head.safetensors`` (all head weights, feature normalisation and reward mean/std)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from reward.features import (
    ALL_STAT_NAMES,
    FEATURE_BLOCKS,
    RELATION_STAT_NAMES,
    STAT_NAMES,
    STYLE_STAT_NAMES,
    TEXT_STAT_NAMES,
    EmbeddingCache,
    _embedder_name,
    context_for_embedding,
    context_head_for_embedding,
    hashed_words,
    relation_stats,
    style_stats,
    text_stats,
    word_vector_sums,
)

CONFIG_FILE = "reward_config.json"

HEAD_FILE = "reward_head.safetensors"

ADAPTER_DIR = "adapter"

"""The context is embedded from its end (the part a reply answers). MiniLM reads only its first
256 tokens, so the tail is cut short enough (~200 tokens of English) to be read to its end."""

"""Optional statistics of how a suggestion relates to its context (computed only when a model's
config names them): share of the context's distinct content words the text contains; the same
weighted by how often each word occurs in the context; share of the text's word bigrams found in
the context; share of the text's content words absent from the context; whether the text ends
with sentence punctuation (1) or stops mid-sentence (0)."""

"""cos_context_head: cosine of the suggestion with the embedding of the context's beginning."""

"""The feature blocks RewardModelConfig.emb_features may name."""

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
    sch (s times the embedding of the context's beginning), words (the suggestion's words,
    hashed into ``words_dim`` buckets, see ``hashed_words``) and wvec (the sum of its content
    words' own embeddings, see ``word_vector_sums``)."""
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
        if "wvec" in self.cfg.emb_features:
            parts["wvec"] = word_vector_sums(texts, self.cache, self.cfg.emb_dim)
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
        if any(n in STYLE_STAT_NAMES for n in names):
            st = np.stack([style_stats(t) for t in texts]).reshape(len(texts), -1)
            cols.update(zip(STYLE_STAT_NAMES, st.T))
        if "cos_context" in names:
            cols["cos_context"] = (s * c).sum(1)
        if "cos_context_head" in names:
            cols["cos_context_head"] = (s * self._head(contexts)).sum(1)
        if not names:
            return np.zeros((len(texts), 0), np.float32)
        return np.stack([cols[n] for n in names], axis=1).astype(np.float32)

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
    anchored: bool = False
    """One more head of the same shape (fitted on all the data) gives the score: every member's
    scores are shifted so that their mean is the anchor's, keeping their spread."""
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
    units as the score.

    A bootstrap head sees about 63% of the rated requests, so the members' mean ranks worse than
    one head fitted on them all. An *anchored* ensemble keeps that head as ``anchor``: member i
    scores anchor + (member_i - mean of the members), so ``score`` is the anchor's and the spread
    (and a Thompson draw's deviation) is the bootstrap heads'."""

    def __init__(self, cfg: EnsembleRewardConfig, embedder: Any = None, store: Any = None):
        super().__init__()
        if cfg.members < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {cfg.members}")
        self.cfg = cfg
        self.members = nn.ModuleList(RewardModel(cfg.member, embedder, store) for _ in range(cfg.members))
        self.anchor = RewardModel(cfg.member, embedder, store) if cfg.anchored else None
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))
        self.cache = self.members[0].cache

    @classmethod
    def from_members(cls, members: Sequence[RewardModel], anchor: RewardModel | None = None) -> "EnsembleRewardModel":
        """Wrap trained heads (same config), and optionally the head that anchors their mean;
        their weights are taken over as they are."""
        heads = list(members) + ([anchor] if anchor is not None else [])
        cfgs = {json.dumps(asdict(m.cfg), sort_keys=True) for m in heads}
        if len(cfgs) != 1:
            raise ValueError("ensemble members must share one RewardModelConfig")
        ens = cls(EnsembleRewardConfig(members=len(members), member=members[0].cfg, anchored=anchor is not None))
        ens.members = nn.ModuleList(members)
        ens.anchor = anchor
        ens.cache = members[0].cache
        return ens

    @property
    def cache(self) -> EmbeddingCache:
        return self._cache

    @cache.setter
    def cache(self, value: EmbeddingCache) -> None:
        object.__setattr__(self, "_cache", value)
        for m in [*getattr(self, "members", []), getattr(self, "anchor", None)]:
            if m is not None:
                m.cache = value

    def raw_features(self, contexts: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        return self.members[0].raw_features(contexts, texts)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(M, N) raw scores of every member (anchored: moved so that their mean is the anchor's)."""
        r = torch.stack([m(feats) for m in self.members])
        return r if self.anchor is None else r - r.mean(0, keepdim=True) + self.anchor(feats)

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
        config = {"members": self.cfg.members, "member": _config_json(self.cfg.member), "anchored": self.cfg.anchored,
                  "backbone": "ensemble"}
        _save_head(self, config, directory)

    @classmethod
    def load(cls, directory: str | Path, embedder: Any = None, store: Any = None) -> "EnsembleRewardModel":
        cfg = json.loads((Path(directory) / CONFIG_FILE).read_text())
        ens_cfg = EnsembleRewardConfig(members=int(cfg["members"]), member=_config_from_json(cfg["member"]),
                                       anchored=bool(cfg.get("anchored", False)))
        return _load_head(cls(ens_cfg, embedder, store), embedder, directory)

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
        """``lm``: (model, tokenizer) or an assistant.lm.models.LoadedLM of the same base model. The
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
