"""RewardTrainConfig: how to train (and evaluate) a reward model. Kept apart from reward.train so
the CLI can build flags from it without importing torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from reward.features import ALL_STAT_NAMES, parse_feature_blocks


@dataclass
class RewardTrainConfig:
    """How to train (and evaluate) a reward model."""

    epochs: int = 40
    """Passes over the training pairs (embedder backbone)."""
    lr: float = 1e-3
    """AdamW learning rate of the head (embedder backbone)."""
    weight_decay: float = 2.0
    """AdamW weight decay."""
    hidden: int = 256
    """Hidden units of the MLP head."""
    dropout: float = 0.2
    """Dropout on the head's hidden layer."""
    emb_features: tuple[str, ...] = ("s", "sc")
    """Embedding blocks the head sees: s (suggestion), c (context), sc (s*c), absdiff (|s-c|).
    ("s", "sc") with weight_decay 2.0 was chosen on an inner split of the benchmark sets' training
    parts (never their held-out parts) over the full four blocks and linear-only heads. Opt-in:
    sch, words (the suggestion's vocabulary hashed into words_dim buckets) and wvec (the sum of
    its content words' own embeddings); benchmarks/rm_from_logs.py measures what they add on the
    simulated raters' tastes, benchmarks/reward_real_data.py what they cost on real judgments."""
    words_dim: int = 2048
    """Hash buckets of the "words" feature block (when emb_features names it)."""
    ensemble: int = 1
    """Heads trained (embedder backbone). Above 1: a bootstrap ensemble
    (reward.model.EnsembleRewardModel), each head fitted to its own resample, with replacement, of
    the rated requests; the RL reward then subtracts ``RewardConfig.rm_uncertainty`` times the
    heads' disagreement. Training costs that many times one head (under a second each for a few
    hundred ratings)."""
    ensemble_anchor: bool = True
    """With ensemble above 1: also fit one head on all the data, which gives the score; the
    bootstrap heads give only the spread around it (each sees ~63% of the rated requests, so their
    mean ranks worse than one head on them all; see benchmarks/rm_from_logs.py). One more head's
    training time."""
    stats: tuple[str, ...] | None = None
    """Text statistics the head sees (names from reward.features.ALL_STAT_NAMES); None:
    reward.features.TRAIN_STAT_NAMES (STAT_NAMES and three generic prose properties: how much
    sentence lengths vary, the share of long words, commas per word)."""
    batch_size: int = 128
    """Pairs (and, separately, pointwise targets) per optimisation step."""
    use_margin: bool = True
    """Use the pairs' margins in the BT loss (stars: 0.25 per star of difference)."""
    pointwise_weight: float = 1.0
    """Weight of the pointwise (BCE on sigmoid(r)) term relative to the BT term."""
    tie_pick_weight: float = 0.25
    """Weight of the pair a best pick makes with a sibling the person gave the same stars (a
    tie-break: noise when none of them has the person's taste; reward.feedback). 0 drops them.
    0.25 by benchmarks/rm_from_logs.py (2026-12-07): on LAMP-R requests, 7 raters x 3 seeds, true
    acc 0.696 (weight 1) -> 0.705 (0.5) -> 0.714 (0.25), pick gain +0.134 -> +0.135; 5-fold CV on
    nine learning-cell logs 0.689 (1) -> 0.694 (0.25) -> 0.683 (0). The real-data sets carry no
    best picks, so benchmarks/reward_real_data.py is unchanged by it."""
    eval_frac: float = 0.2
    """Fraction of groups held out when no explicit eval set is given (0 = no held-out metrics)."""
    point_pair_min_diff: float = 0.2
    """Held-out pointwise targets in the same context form evaluation pairs when their targets
    differ by at least this much (stars: 1 star = 0.25)."""
    max_point_pairs: int = 20000
    """Cap on evaluation pairs built from pointwise targets (sampled with the seed)."""
    shuffled_control: bool = True
    """Also train on shuffled labels and report its held-out accuracy (should be ~0.5)."""
    seed: int = 0
    """Seed for the split, initialisation, batching and the shuffled control."""
    backbone: str = "embedder"
    """"embedder" (MiniLM features + small head, default) or "lm" (base LM + LoRA + scalar head)."""
    lm_epochs: int = 2
    """Epochs for the LM backbone."""
    lm_lr: float = 2e-4
    """Learning rate for the LM backbone (LoRA and head)."""
    lm_batch_size: int = 8
    """Pairs per step for the LM backbone."""
    lm_max_length: int = 512
    """Tokens per (context, text) for the LM backbone."""
    lm_lora_r: int = 8
    """LoRA rank for the LM backbone."""

    def validate(self) -> None:
        """ValueError naming the field for a setting no training can use."""
        if self.backbone not in ("embedder", "lm"):
            raise ValueError(f"backbone must be embedder or lm, got {self.backbone!r}")
        parse_feature_blocks(",".join(self.emb_features))
        unknown = [n for n in (self.stats or ()) if n not in ALL_STAT_NAMES]
        if unknown:
            raise ValueError(f"unknown reward statistics {unknown}; use names from {', '.join(ALL_STAT_NAMES)}")
        for name in ("epochs", "ensemble", "hidden", "batch_size", "lm_epochs", "lm_batch_size", "words_dim",
                     "lm_max_length", "lm_lora_r"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "lm_lr"):  # nan fails every comparison: `not x > 0` catches it
            if not 0.0 < float(getattr(self, name)) < math.inf:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        for name in ("weight_decay", "pointwise_weight", "point_pair_min_diff"):
            if not 0.0 <= float(getattr(self, name)) < math.inf:
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.eval_frac < 1.0:
            raise ValueError(f"eval_frac must be in [0, 1), got {self.eval_frac}")
        if not 0.0 <= self.tie_pick_weight <= 1.0:
            raise ValueError(f"tie_pick_weight must be in [0, 1], got {self.tie_pick_weight}")


# ----------------------------------------------------------------------------- metrics (the losses live in reward.losses)
