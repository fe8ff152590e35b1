"""Training and evaluating the reward model.

``train_reward_model(train, cfg, embedder, store, eval)`` fits a reward model jointly on
Bradley-Terry pairs (with optional margins) and pointwise targets, then measures it on held-out
data (split by group -- request / prompt -- never by row):

- ``rm/accuracy``   P(r(chosen) > r(rejected)) on held-out pairs (ties count one half)
- ``rm/loss``       Bradley-Terry loss on held-out pairs
- ``rm/ece``        expected calibration error of sigmoid(r_c - r_r) as P(chosen wins)
- ``rm/length_floor``  accuracy of "longer wins" or "shorter wins", whichever is higher
- ``rm/shuffled_control``  held-out accuracy of the same model trained on shuffled labels (~0.5)
- ``rm/spearman``   rank correlation with held-out pointwise targets (when there are any)
- ``rm/n_train``, ``rm/n_eval``, ``rm/seconds``
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from assistant.lm.config import embedder_name
from assistant.lm.models import autocast_context
from reward.config import RewardTrainConfig
from reward.features import TRAIN_STAT_NAMES, EmbeddingCache
from reward.feedback import (
    PointwiseTarget,
    PreferencePair,
    RewardData,
    build_training_data,
)
from reward.losses import bradley_terry_loss, pointwise_loss
from reward.model import (
    EnsembleRewardModel,
    LMRewardConfig,
    LMRewardModel,
    RewardModel,
    RewardModelConfig,
)
from storage.artifacts import save_version

log = logging.getLogger(__name__)


def pair_accuracy(r_chosen: np.ndarray, r_rejected: np.ndarray) -> float:
    d = np.asarray(r_chosen, np.float64) - np.asarray(r_rejected, np.float64)
    return float(np.mean((d > 0) + 0.5 * (d == 0))) if len(d) else float("nan")


def expected_calibration_error(p_chosen: np.ndarray, n_bins: int = 10) -> float:
    """ECE of p = P(chosen beats rejected) when the chosen did win: each pair predicts the side it
    favours with confidence max(p, 1-p); bins by confidence, |accuracy - confidence| weighted."""
    p = np.asarray(p_chosen, np.float64)
    if len(p) == 0:
        return float("nan")
    conf = np.maximum(p, 1 - p)
    correct = (p > 0.5) + 0.5 * (p == 0.5)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def length_direction(pairs: Sequence[PreferencePair]) -> int:
    """+1 when "the longer text wins" is right on at least half of ``pairs`` (ties count one
    half), else -1 ("the shorter text wins"): the length rule a set of training pairs teaches."""
    longer = np.mean([_longer_wins(p) for p in pairs]) if pairs else 0.5
    return 1 if longer >= 0.5 else -1


def _longer_wins(p: PreferencePair) -> float:
    return 1.0 if len(p.chosen) > len(p.rejected) else 0.5 if len(p.chosen) == len(p.rejected) else 0.0


def length_floor(pairs: Sequence[PreferencePair], direction: int | None = None) -> float:
    """Accuracy of "the longer text wins" (direction +1), "the shorter text wins" (-1) or, when
    ``direction`` is None, whichever of the two is higher on these pairs."""
    if not pairs:
        return float("nan")
    longer = float(np.mean([_longer_wins(p) for p in pairs]))
    if direction is None:
        return max(longer, 1.0 - longer)
    return longer if direction > 0 else 1.0 - longer


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3:
        return float("nan")
    r = spearmanr(x, y).statistic
    return float(r) if r == r else float("nan")


def split_by_group(data: RewardData, eval_frac: float, seed: int = 0) -> tuple[RewardData, RewardData]:
    """Hold out ``eval_frac`` of the groups (at least one when there are two or more)."""
    groups = data.groups()
    if eval_frac <= 0 or len(groups) < 2:
        return data, RewardData()
    rng = random.Random(seed)
    order = groups[:]
    rng.shuffle(order)
    n_eval = min(max(1, round(eval_frac * len(groups))), len(groups) - 1)
    held = set(order[:n_eval])
    return data.select(g for g in groups if g not in held), data.select(held)


def grouped_folds(data: RewardData, k: int = 5, seed: int = 0) -> list[tuple[RewardData, RewardData]]:
    """k (train, held-out) splits for cross-validation: the groups, shuffled with ``seed``, are dealt
    round-robin into k folds, so every group is held out exactly once and never straddles a split."""
    groups = data.groups()
    if k < 2 or len(groups) < k:
        raise ValueError(f"need k >= 2 and at least k groups (k={k}, groups={len(groups)})")
    order = groups[:]
    random.Random(seed).shuffle(order)
    folds = [order[i::k] for i in range(k)]
    out = []
    for held in folds:
        h = set(held)
        out.append((data.select(g for g in groups if g not in h), data.select(held)))
    return out


def paired_bootstrap_ci(model_correct: Sequence[float], longer_wins: Sequence[float],
                        clusters: Sequence[Sequence[int]], n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95, direction: int | Sequence[int] | None = None) -> dict[str, float]:
    """Bootstrap CI of (model accuracy - length floor) on the same pairs.

    Per pair: ``model_correct`` (1, 0.5 for a tie, 0), ``longer_wins`` (1 when the chosen text is
    the longer, 0.5 equal, 0 shorter) and the ids of the clusters it belongs to (its post /
    conversation; a pair of two LAMP paragraphs belongs to both). Each resample draws clusters with
    replacement and weights a pair by the product of its clusters' draw counts; the floor is
    recomputed per resample as max(longer, shorter), as ``length_floor`` does -- unless
    ``direction`` fixes the rule (+1 longer wins, -1 shorter wins; one for all pairs or one per
    pair, e.g. each fold's training direction): then the floor is that rule's accuracy."""
    mc = np.asarray(model_correct, np.float64)
    lw = np.asarray(longer_wins, np.float64)
    if direction is not None:  # from here on: the fixed rule's correctness per pair
        lw = np.where(np.broadcast_to(np.asarray(direction), lw.shape) > 0, lw, 1.0 - lw)
    width = max(len(c) for c in clusters)
    cl = np.array([list(c) + [-1] * (width - len(c)) for c in clusters], np.int64)
    n_cl = int(cl.max()) + 1

    def stat(w: np.ndarray) -> float:
        acc = float((w * mc).sum() / w.sum())
        lon = float((w * lw).sum() / w.sum())
        return acc - (lon if direction is not None else max(lon, 1.0 - lon))

    point = stat(np.ones(len(mc)))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        counts = np.append(np.bincount(rng.integers(0, n_cl, n_cl), minlength=n_cl), 1).astype(np.float64)
        w = counts[cl].prod(axis=1)  # padding (-1) indexes the trailing 1
        if w.sum() > 0:
            draws.append(stat(w))
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"diff": point, "lo": float(lo), "hi": float(hi)}


def pairs_from_points(points: Sequence[PointwiseTarget], min_diff: float, max_pairs: int = 20000,
                      seed: int = 0, max_diff: float = math.inf, same_group: bool | None = None
                      ) -> list[PreferencePair]:
    """Evaluation pairs from pointwise targets that share a context and differ by >= min_diff
    (and < max_diff). ``same_group``: True keeps only pairs of two points of one group (versions
    of one story), False only pairs across groups, None both. A pair's group is
    "<group of the better>|<group of the worse>"."""
    by_ctx: dict[str, list[PointwiseTarget]] = {}
    for p in points:
        by_ctx.setdefault(p.context, []).append(p)
    out = []
    for ctx, pts in by_ctx.items():
        for i, a in enumerate(pts):
            for b in pts[i + 1 :]:
                d = abs(a.target - b.target)
                if (d >= min_diff - 1e-9 and d < max_diff - 1e-9 and a.text != b.text
                        and (same_group is None or (a.group == b.group) == same_group)):
                    hi, lo = (a, b) if a.target > b.target else (b, a)
                    out.append(PreferencePair(ctx, hi.text, lo.text, 0.0, 1.0, f"{hi.group}|{lo.group}", "points"))
    if len(out) > max_pairs:
        out = random.Random(seed).sample(out, max_pairs)
    return out


def shuffled_labels(data: RewardData, seed: int) -> RewardData:
    """The same texts with the signal destroyed: exactly half the pairs (a random half) have their
    order flipped, so no direction keeps a majority; pointwise targets permuted among the points."""
    rng = random.Random(seed + 7919)
    flip = set(rng.sample(range(len(data.pairs)), len(data.pairs) // 2))
    pairs = [replace(p, chosen=p.rejected, rejected=p.chosen) if i in flip else p for i, p in enumerate(data.pairs)]
    targets = [p.target for p in data.points]
    rng.shuffle(targets)
    points = [replace(p, target=t) for p, t in zip(data.points, targets)]
    return RewardData(pairs, points)


# ----------------------------------------------------------------------------- training
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _index_items(data: RewardData) -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray]:
    """Unique (context, text) items; pair index array (n_pairs, 2); point index array."""
    items: dict[tuple[str, str], int] = {}

    def ix(c: str, t: str) -> int:
        return items.setdefault((c, t), len(items))

    pair_ix = np.array([[ix(p.context, p.chosen), ix(p.context, p.rejected)] for p in data.pairs], np.int64).reshape(-1, 2)
    point_ix = np.array([ix(p.context, p.text) for p in data.points], np.int64)
    return list(items), pair_ix, point_ix


def _embedding_dim(embedder: Any) -> int:
    if embedder is None:
        return 384
    fn = getattr(embedder, "get_embedding_dimension", None) or embedder.get_sentence_embedding_dimension
    return int(fn())


def _fit_embedder_head(data: RewardData, cfg: RewardTrainConfig, embedder: Any, store: Any,
                       cache=None) -> RewardModel:
    _seed_all(cfg.seed)
    name = None
    if embedder is not None:

        name = embedder_name(embedder)
    emb_dim = _embedding_dim(embedder)
    model = RewardModel(RewardModelConfig(emb_dim=emb_dim, hidden=cfg.hidden, dropout=cfg.dropout,
                                          embedder=name or "all-MiniLM-L6-v2",
                                          emb_features=tuple(cfg.emb_features), words_dim=cfg.words_dim,
                                          stats=tuple(cfg.stats) if cfg.stats is not None else TRAIN_STAT_NAMES),
                    embedder, store)
    if cache is not None:
        model.cache = cache
    items, pair_ix, point_ix = _index_items(data)
    if not items:
        raise ValueError("no training data: give some feedback or pass --from FILE")
    feats = model.raw_features([c for c, _ in items], [t for _, t in items])
    model.fit_stat_normalisation(feats)

    margin = torch.tensor([p.margin if cfg.use_margin else 0.0 for p in data.pairs], dtype=torch.float32)
    pw = torch.tensor([p.weight for p in data.pairs], dtype=torch.float32)
    tgt = torch.tensor([p.target for p in data.points], dtype=torch.float32)
    tw = torch.tensor([p.weight for p in data.points], dtype=torch.float32)
    pair_t, point_t = torch.from_numpy(pair_ix), torch.from_numpy(point_ix)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_p, n_q = len(pair_t), len(point_t)
    steps_per_epoch = max(1, math.ceil(max(n_p, n_q) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)
    g = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _epoch in range(cfg.epochs):
        perm_p = torch.randperm(n_p, generator=g) if n_p else None
        perm_q = torch.randperm(n_q, generator=g) if n_q else None
        for step in range(steps_per_epoch):
            loss = torch.zeros(())
            used = set()
            if n_p:
                b = perm_p[(step * cfg.batch_size) % n_p :][: cfg.batch_size]
                used.update(pair_t[b].flatten().tolist())
            if n_q:
                bq = perm_q[(step * cfg.batch_size) % n_q :][: cfg.batch_size]
                used.update(point_t[bq].tolist())
            # score only the items this step needs
            idx = torch.tensor(sorted(used), dtype=torch.long)
            pos = torch.full((len(items),), -1, dtype=torch.long)
            pos[idx] = torch.arange(len(idx))
            r = model(feats[idx])
            if n_p:
                pr = pair_t[b]
                loss = loss + bradley_terry_loss(r[pos[pr[:, 0]]], r[pos[pr[:, 1]]], margin[b], pw[b])
            if n_q:
                loss = loss + cfg.pointwise_weight * pointwise_loss(r[pos[point_t[bq]]], tgt[bq], tw[bq])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        r = model(feats)
    model.reward_mean.fill_(float(r.mean()))
    model.reward_std.fill_(float(r.std()) if len(r) > 1 else 1.0)
    return model


def _fit_lm(data: RewardData, cfg: RewardTrainConfig, lm: Any) -> LMRewardModel:

    _seed_all(cfg.seed)
    model, tok = (lm.model, lm.tokenizer) if hasattr(lm, "model") and hasattr(lm, "tokenizer") else lm
    base_name = getattr(getattr(model, "config", None), "_name_or_path", "") or getattr(lm, "name", "")
    rm = LMRewardModel(model, tok, LMRewardConfig(base_model=str(base_name), max_length=cfg.lm_max_length,
                                                  lora_r=cfg.lm_lora_r, lora_alpha=2 * cfg.lm_lora_r))
    params = [p for p in rm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lm_lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    pairs, points = list(data.pairs), list(data.points)
    bs = cfg.lm_batch_size
    rm.train()
    for _epoch in range(cfg.lm_epochs):
        rng.shuffle(pairs)
        rng.shuffle(points)
        n_steps = max(math.ceil(len(pairs) / bs), math.ceil(len(points) / bs))
        for step in range(n_steps):
            bp = pairs[step * bs : (step + 1) * bs]
            bq = points[step * bs : (step + 1) * bs]
            ctx = [p.context for p in bp] * 2 + [q.context for q in bq]
            txt = [p.chosen for p in bp] + [p.rejected for p in bp] + [q.text for q in bq]
            if not txt:
                continue
            with autocast_context(rm.device):
                r = rm(ctx, txt)
            loss = torch.zeros((), device=r.device)
            if bp:
                m = torch.tensor([p.margin if cfg.use_margin else 0.0 for p in bp], device=r.device)
                w = torch.tensor([p.weight for p in bp], device=r.device)
                loss = loss + bradley_terry_loss(r[: len(bp)], r[len(bp) : 2 * len(bp)], m, w)
            if bq:
                t = torch.tensor([q.target for q in bq], device=r.device)
                w = torch.tensor([q.weight for q in bq], device=r.device)
                loss = loss + cfg.pointwise_weight * pointwise_loss(r[2 * len(bp) :], t, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    rm.eval()
    _set_reward_stats(rm, data, batch_size=bs)
    return rm


def bootstrap_by_group(data: RewardData, seed: int) -> RewardData:
    """A bootstrap resample of ``data`` by group (request): as many groups as there are, drawn with
    replacement; a group drawn k times keeps its pairs and points with k times their weight (one
    drawn 0 times is left out)."""
    groups = data.groups()
    rng = random.Random(seed)
    drawn = Counter(rng.choice(groups) for _ in groups) if groups else Counter()
    return RewardData(
        [replace(p, weight=p.weight * drawn[p.group]) for p in data.pairs if drawn[p.group]],
        [replace(p, weight=p.weight * drawn[p.group]) for p in data.points if drawn[p.group]],
    )


def _fit_ensemble(data: RewardData, cfg: RewardTrainConfig, embedder: Any, store: Any, cache=None):
    """``cfg.ensemble`` heads, head i on bootstrap_by_group(data, seed + i) with seed + i, and with
    ``cfg.ensemble_anchor`` one more on all of ``data`` (seed ``cfg.seed``) that gives the score;
    the ensemble's score statistics are those of its score over all of ``data``."""
    members = []
    for i in range(cfg.ensemble):
        sample = bootstrap_by_group(data, cfg.seed + 7919 * (i + 1))
        members.append(_fit_embedder_head(sample, replace(cfg, seed=cfg.seed + i), embedder, store, cache))
    anchor = _fit_embedder_head(data, cfg, embedder, store, cache) if cfg.ensemble_anchor else None
    ens = EnsembleRewardModel.from_members(members, anchor)
    _set_reward_stats(ens, data)
    return ens


def _set_reward_stats(model: Any, data: RewardData, **score_kw: Any) -> None:
    """The model's reward_mean/reward_std (what normalize=True standardises with): the mean and
    sample std of its scores over every distinct (context, text) of ``data``."""
    items, _, _ = _index_items(data)
    r = model.score([c for c, _ in items], [t for _, t in items], **score_kw)
    model.reward_mean.fill_(float(np.mean(r)))
    model.reward_std.fill_(float(np.std(r, ddof=1)) if len(r) > 1 else 1.0)


def _fit(data: RewardData, cfg: RewardTrainConfig, embedder: Any, store: Any, lm: Any, cache=None):
    if cfg.ensemble < 1:
        raise ValueError(f"ensemble must be at least 1, got {cfg.ensemble}")
    if cfg.backbone == "embedder":
        if cfg.ensemble > 1:
            return _fit_ensemble(data, cfg, embedder, store, cache)
        return _fit_embedder_head(data, cfg, embedder, store, cache)
    if cfg.backbone == "lm":
        if cfg.ensemble > 1:
            raise ValueError("a reward-model ensemble needs the embedder backbone (--rm-backbone lm trains one model)")
        if lm is None:
            raise ValueError("--rm-backbone lm needs the base language model")
        return _fit_lm(data, cfg, lm)
    raise ValueError(f"unknown reward backbone {cfg.backbone!r}; use 'embedder' or 'lm'")


def evaluate_reward_model(model: Any, eval: RewardData, cfg: RewardTrainConfig) -> dict[str, float]:
    """Held-out metrics (see module docstring); empty dict when there is nothing to evaluate."""
    pairs = list(eval.pairs) or pairs_from_points(eval.points, cfg.point_pair_min_diff, cfg.max_point_pairs, cfg.seed)
    m: dict[str, float] = {}
    if pairs:
        # score each distinct (context, text) once
        items, pair_ix, _ = _index_items(RewardData(pairs, []))
        r = model.score([c for c, _ in items], [t for _, t in items])
        rc, rr = r[pair_ix[:, 0]], r[pair_ix[:, 1]]
        d = torch.from_numpy((rc - rr).astype(np.float32))
        m["rm/accuracy"] = pair_accuracy(rc, rr)
        m["rm/loss"] = float(-F.logsigmoid(d).mean())
        m["rm/ece"] = expected_calibration_error(torch.sigmoid(d).numpy())
        m["rm/length_floor"] = length_floor(pairs)
        m["rm/n_eval_pairs"] = float(len(pairs))
    if eval.points:
        r = model.score([p.context for p in eval.points], [p.text for p in eval.points])
        m["rm/spearman"] = spearman(r, [p.target for p in eval.points])
    return m


def train_reward_model(train: RewardData, cfg: RewardTrainConfig, embedder: Any = None, store: Any = None,
                       eval: RewardData | None = None, lm: Any = None, lm_factory: Any = None):
    """Fit a reward model on ``train`` and measure it on ``eval`` (or, when eval is None, on a
    held-out ``cfg.eval_frac`` of train's groups). Returns (model, metrics).

    ``lm``: (model, tokenizer) for the LM backbone. ``lm_factory``: a callable returning a fresh
    (model, tokenizer), needed for the LM backbone's shuffled control (the first LM is wrapped)."""
    if eval is None:
        train, eval = split_by_group(train, cfg.eval_frac, cfg.seed)
    if not len(train):
        raise ValueError("no training data: give some feedback or pass --from FILE")
    t0 = time.perf_counter()
    cache = None
    if cfg.backbone == "embedder":

        cache = EmbeddingCache(embedder, store)
    model = _fit(train, cfg, embedder, store, lm, cache)
    seconds = time.perf_counter() - t0
    metrics: dict[str, float] = {
        "rm/n_train": float(len(train)),
        "rm/n_train_pairs": float(len(train.pairs)),
        "rm/n_train_points": float(len(train.points)),
        "rm/n_eval": float(len(eval)),
        "rm/seconds": round(seconds, 3),
    }
    if cfg.backbone == "embedder":
        metrics["rm/n_embedded"] = float(cache.n_embedded)
    tr_pairs = train.pairs[:2000]
    if tr_pairs:
        metrics["rm/train_accuracy"] = evaluate_reward_model(model, RewardData(tr_pairs, []), cfg)["rm/accuracy"]
    if len(eval):
        metrics.update(evaluate_reward_model(model, eval, cfg))
        if cfg.shuffled_control and "rm/accuracy" in metrics:
            other_lm = lm_factory() if (cfg.backbone == "lm" and lm_factory is not None) else None
            if cfg.backbone == "embedder" or other_lm is not None:
                ctrl = _fit(shuffled_labels(train, cfg.seed), cfg, embedder, store, other_lm, cache)
                metrics["rm/shuffled_control"] = evaluate_reward_model(ctrl, eval, cfg)["rm/accuracy"]
    if hasattr(model, "cache"):
        model.cache = cache if cache is not None else model.cache
    return model, metrics


def train_from_store(store: Any, profile_id: str, embedder: Any, cfg: RewardTrainConfig,
                     extra: RewardData | None = None, eval: RewardData | None = None, lm: Any = None,
                     lm_factory: Any = None):
    """Train on a profile's feedback (plus ``extra`` data, e.g. from --from files)."""
    data = build_training_data(store.requests_with_feedback(profile_id), cfg.tie_pick_weight)
    if extra is not None:
        data = data.extend(extra)
    model, metrics = train_reward_model(data, cfg, embedder, store, eval, lm=lm, lm_factory=lm_factory)
    metrics["rm/last_feedback_id"] = float(store.last_feedback_id(profile_id))
    return model, metrics


def save_reward_version(store: Any, data_dir: str | Path, profile_id: str, model: Any, metrics: dict[str, float],
                        cfg: RewardTrainConfig, publish: bool = True):
    """Write the model into a new versioned directory (atomic) and record it (kind "reward")."""

    parent = store.live_version(profile_id, "reward")
    config = {"train": asdict(cfg), "model": asdict(model.cfg)}
    return save_version(store, data_dir, kind="reward", profile_id=profile_id, writer=model.save,
                        metrics={k: float(v) for k, v in metrics.items() if v == v},
                        config=config, parent_id=parent.id if parent else None, publish=publish)


def load_live_reward_model(store: Any, profile_id: str, embedder: Any, lm: Any = None):
    """The profile's published reward model, or None when there is none (or its files are gone)."""
    v = store.live_version(profile_id, "reward")
    if v is None:
        return None
    if not Path(v.path).exists():
        log.warning("reward version %s: directory %s is missing", v.id, v.path)
        return None
    return RewardModel.load(v.path, embedder, store, lm)
