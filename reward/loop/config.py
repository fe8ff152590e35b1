"""LearnerConfig (when and how the background learner trains, evaluates and publishes) and
SimConfig (a simulated run of that learner). Light: the CLI builds its flags from them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from reward.config import RewardTrainConfig
from reward.rl.config import RLConfig

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- configuration
@dataclass
class LearnerConfig:
    """When and how the background learner trains, evaluates and publishes."""

    min_new_feedback: int = 8
    """Feedback rows that must arrive since the last cycle before a new cycle starts (train_now skips this)."""
    rm_every: int = 1
    """Retrain the reward model every N cycles (the live reward model is reused in between)."""
    train_policy: bool = True
    """Run RL and publish policy versions each cycle; False retrains and publishes only the reward
    model (what the reward-guided choice serves with; the policy stays the base model)."""
    rl_seconds: float = 60.0
    """CPU-seconds (this process's time) of RL per cycle: the cycle keeps taking updates against
    the current reward model until they are spent, or the KL bound (rl_kl_stop) or patience
    (rl_patience) stops it first. 0: no time budget (rl_steps alone decides)."""
    rl_steps: int = 0
    """Cap on RL updates per cycle (0: no cap, the budget decides)."""
    rl_kl_stop: float = 0.75
    """Stop a cycle's RL once its rollouts' KL to the base model per reply (rl/kl) reaches this
    fraction of max_kl, so that the step does not trip the KL guard. It is a stop on the rollouts'
    estimate; the bound on what is published is the guard's (max_kl), which measures the KL to the
    base on held-out replies (eval/kl) and can find it higher than the rollouts did (5.39 nats in
    one 150-rating benchmark cell before that guard existed, README "Session 12"). 0: no KL stop."""
    rl_patience: int = 2
    """Stop a cycle's RL after this many updates in a row whose samples on a few of the person's
    held-out requests did not raise their mean reward above its best (0: no held-out checks)."""
    rl_patience_prompts: int = 2
    """Held-out requests each patience check samples (eval_samples each, eval_max_new_tokens long,
    the same seed every check); the cycle's RL rolls out on the person's other requests. A check
    costs about a third of an update per 4 prompts on SmolLM2 here (4.2-5.2 CPU-s against 15.8),
    so the default samples 2."""
    idle_cycles: int = 0
    """Cycles the learner may run between ratings, when no new feedback is due: RL on from the live
    policy against the live reward model, under the same budget and guards, published only when
    its held-out reward beats the live version's. Any cycle that is not published, or whose RL
    stopped at the KL bound or for patience, ends them until new feedback arrives. 0: off (see the
    README: against a fixed reward model more RL time did not pay)."""
    max_kl: float = 4.0
    """Guard: a candidate whose KL per reply (summed over its tokens, averaged over held-out replies)
    exceeds this, either to the version it was trained from (the cycle's step, eval/step_kl) or to
    the base model (eval/kl), is shrunk (fewer steps, lower lr) or discarded: no published version
    is further than this from the base. A live version found beyond it by the re-check (published
    under a larger max_kl) is rolled back to its parent."""
    kl_retries: int = 1
    """How many times a KL violation is retried with half the steps and half the learning rate."""
    reward_gain_eps: float = 0.0
    """Reward-hacking guard: the reward counts as rising when candidate - live exceeds this."""
    agreement_drop: float = 0.1
    """Reward-hacking guard: agreement with held-out feedback counts as falling when it drops by more."""
    min_agreement_pairs: int = 8
    """Fewer held-out pairs than this skip the agreement test of the reward-hacking guard: on 3
    pairs one flipped pair is a drop of 0.33. Measured (benchmarks/learning.py, seed 0): with no
    minimum, 3 of the first 7 cycles of concise and firstperson were discarded for a drop of one
    pair in 2-6 (0.50 -> 0.17, 0.50 -> 0.00, 1.00 -> 0.67)."""
    max_length_corr: float = 0.9
    """Reward-hacking guard: |corr(learned reward, length in words)| over held-out samples above this,
    together with a rising reward, means the gain is explained by length."""
    min_length_corr_samples: int = 6
    """Fewer held-out samples than this skip the length-correlation guard (too noisy)."""
    length_taste_share: float = 0.75
    """Length-correlation guard: when at least this share of the person's held-out rated pairs (of
    different length; at least min_agreement_pairs of them) chose the text a length-following reward
    favours, length is their taste and the guard does not fire. Measured (benchmarks/learning.py,
    concise seed 0, session 10): without it the guard rolled back a published concise policy at 140
    ratings (corr -0.90) and discarded the next candidate (-0.93): the concise rater wants shorter
    text, so its reward *should* follow length. With it: policy alone 0.508 -> 0.710, whole system
    0.711 -> 0.819 of decided held-out pairs against the base."""
    min_win_rate: float = 0.5
    """Publish only when the candidate beats the live version on at least this share of held-out
    samples (ties count half)."""
    publish_requires_gain: bool = True
    """Publish only when the candidate's held-out reward beats the live version's (by reward_gain_eps)
    under the current reward model, in every cycle (False: only idle cycles require it). Measured
    (benchmarks/learning.py, concise, seed 0, 150 ratings): without it and min_win_rate 6 of 7
    candidates were published, among them ones the reward model rated below their parent, and the
    final policy alone lost to the base (0.395 [0.327, 0.465] of decided pairs; whole system
    0.624); with both, 2 of 8 were published, policy alone 0.454 [0.377, 0.534], whole system
    0.722 [0.665, 0.781] (README, "Learning within 150 ratings")."""
    carry_cycles: int = 0
    """A candidate that only the publish rule turned down (its held-out reward did not beat the live
    version's, or its win-rate was below min_win_rate; no guard fired) is where the next cycle's RL
    starts, instead of the live version, for up to this many cycles in a row. With a few CPU-seconds
    per rating a cycle buys one or two updates, and a noisy comparison turns down about half of
    them: carried, that work adds up until a candidate beats the live version, which is still the
    only thing served and what each candidate is compared with (its step KL too). The carried
    weights live in the learner's memory (a restart starts from the live version again); a guard
    firing, a publish or a rollback drops them. 0 (the default): every cycle starts from the live
    version. Measured (benchmarks/learning.py, seed 0, 150 ratings, 2026-12-07, against the same
    code with 0): concise whole system 0.803 -> 0.797, policy alone 0.716 -> 0.699 (no gain);
    vivid 0.620 / 0.622 -> 0.356 [0.228, 0.488] / 0.324, KL to the base 0.14 -> 2.43: against a
    reward model that knows the taste poorly, more RL drifts the policy the wrong way."""
    recheck_live: bool = True
    """Re-evaluate the live version against its parent each cycle and roll back if it looks hacked."""
    eval_prompts: int = 8
    """Held-out prompts used to compare versions."""
    eval_samples: int = 2
    """Samples per held-out prompt and version."""
    eval_max_new_tokens: int = 24
    """Tokens per held-out sample."""
    eval_pairs: int = 32
    """At most this many held-out preference pairs for the agreement metric."""
    heldout_frac: float = 0.2
    """Share of requests (groups) held out for the agreement metric."""
    keep_versions: int = 5
    """Policy versions whose directories are kept (older ones are pruned; the live one always stays)."""
    poll_s: float = 5.0
    """Seconds between checks for new feedback."""
    threads: int = 1
    """torch threads in the learner process (leave the other cores to the app)."""
    nice: int = 10
    """Niceness added to the learner process (lower CPU priority than the app)."""
    seed: int = 0
    """Seed for the held-out split and the evaluation samples."""
    rl: RLConfig = field(default_factory=RLConfig)
    """The RL update each cycle runs (algorithm, sizes, learning rate, KL)."""
    rm: RewardTrainConfig = field(default_factory=lambda: RewardTrainConfig(shuffled_control=False, ensemble=4))
    """How each cycle retrains the reward model (its seed is this config's seed). A 4-head bootstrap
    ensemble by default, anchored (RewardTrainConfig.ensemble_anchor): a fifth head fitted on all
    the ratings gives the score and the bootstrap heads only the spread that the reward-guided
    choice needs (conservative score, Thompson exploration), so the ensemble ranks as well as one
    head (benchmarks/rm_from_logs.py); five heads train in a few seconds on a few hundred ratings."""

    def validate(self) -> None:
        if self.rl_seconds < 0 or self.rl_steps < 0 or self.rl_patience < 0 or self.idle_cycles < 0:
            raise ValueError("rl_seconds, rl_steps, rl_patience and idle_cycles must be >= 0")
        if self.train_policy and not self.rl_seconds and not self.rl_steps:
            raise ValueError("RL needs a CPU-time budget per cycle (rl_seconds > 0) or a cap on its updates (rl_steps > 0)")
        if not 0 <= self.rl_kl_stop <= 1:
            raise ValueError("rl_kl_stop is a fraction of max_kl: between 0 (off) and 1")
        if self.carry_cycles < 0:
            raise ValueError("carry_cycles must be >= 0")
        if not 0.5 <= self.length_taste_share <= 1:
            raise ValueError("length_taste_share must be between 0.5 and 1 (1: only when every held-out pair follows length)")


@dataclass
class SimConfig:
    """One simulated run. The learner, RL and reward-model settings are the product's dataclasses."""

    budget: int = 150
    """Star ratings the rater gives in total (one per suggestion shown)."""
    k: int = 4
    """Suggestions per request (the rater stars each and picks the best)."""
    max_new_tokens: int = 32
    """Length limit of the suggestions shown (RL rollouts use rl.max_new_tokens)."""
    temperature: float = 0.8
    """Sampling temperature of the suggestions shown (the UI's default)."""
    variety: bool = False
    """Show candidates written from different angles (GenerationSettings.variety); the held-out
    comparison always uses the prompt as asked."""
    heldout_samples: int = 2
    """Suggestions per held-out prompt from each of base and final for the pairwise judgement."""
    prompts_path: str | None = None
    """Prompt file with train and heldout splits (default assets/prompts.json)."""
    seed: int = 0
    """Seeds the prompt order and the suggestions' sampling."""
    learner_seconds_per_rating: float = 0.0
    """CPU-seconds the learner earns per rating (0: unrationed, every due cycle runs at once with
    the learner's own rl_seconds). A cycle due while the learner's spent time exceeds what it
    earned is postponed; a cycle that runs may spend all it has earned and not yet spent (its RL
    gets what the reward model, the recheck and the evaluation leave of it)."""
    heldout_limit: int = 0
    """Use only the first N held-out prompts (0: all)."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """The product's learner cycle: when it runs (min_new_feedback), the reward model, RL, the
    guards and the evaluation (its own config: the learner the run is given must use it)."""
