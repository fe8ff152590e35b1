"""The live loop: new ratings -> retrain the reward model -> RL steps -> evaluate -> guards -> publish.

One cycle (`Learner.run_cycle`) reads like the algorithm:

1. reward   retrain the reward model on all feedback (every `rm_every` cycles) and publish it.
2. recheck  evaluate the live policy against its parent on held-out prompts and feedback; if the
            live one looks like reward hacking (reward up, agreement with held-out feedback down, or
            reward explained by length) roll back to the parent (the last good version).
3. rl       RL updates from the live policy with the composed reward -> a *candidate* version
            (written atomically by storage.artifacts, recorded with status "candidate").
4. guards   NaN/inf loss or reward -> discard; KL above the limit -> retry smaller, then discard.
5. evaluate candidate vs live on held-out prompts: mean reward, win-rate, KL to the base model,
            agreement with held-out feedback (implicit reward log pi/pi_ref of chosen > rejected).
6. publish  or discard with the reason. Prune old versions (keep the last N).

Every guard firing is an event (``Store.add_event(kind="guard")``) with its reason; the learner's
phase/progress/message/metrics/heartbeat live in ``learner_state`` so the UI can show them and they
survive restarts. Commands (pause / resume / train_now) arrive through ``Store.take_learner_command``.

The learner runs in its own process (`inkloop learn`), started and restarted by `inkloop serve`
through `LearnerSupervisor`, with a low priority and one torch thread so the UI stays responsive.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from storage import artifacts
from storage.store import ModelVersion, Store

log = logging.getLogger(__name__)

COMMANDS = ("pause", "resume", "train_now")
PHASES = ("idle", "waiting", "reward", "recheck", "rl", "evaluate", "publish", "paused", "error", "stopped")


# ----------------------------------------------------------------------------- configuration
@dataclass
class LearnerConfig:
    """When and how the background learner trains, evaluates and publishes."""

    min_new_feedback: int = 8
    """Feedback rows that must arrive since the last cycle before a new cycle starts (train_now skips this)."""
    rm_every: int = 1
    """Retrain the reward model every N cycles (the live reward model is reused in between)."""
    rl_steps: int = 4
    """RL updates per cycle."""
    algo: str = "ppo"
    """RL algorithm passed to reward.policy.RLConfig (when it has an `algo` field)."""
    max_kl: float = 4.0
    """Guard: a candidate whose KL to the version it was trained from (KL of this cycle's step,
    summed over a reply's tokens, averaged over held-out replies) exceeds this is shrunk (fewer
    steps, lower lr) or discarded. The KL to the base model is reported as eval/kl."""
    kl_retries: int = 1
    """How many times a KL violation is retried with half the steps and half the learning rate."""
    reward_gain_eps: float = 0.0
    """Reward-hacking guard: the reward counts as rising when candidate - live exceeds this."""
    agreement_drop: float = 0.1
    """Reward-hacking guard: agreement with held-out feedback counts as falling when it drops by more."""
    max_length_corr: float = 0.9
    """Reward-hacking guard: |corr(learned reward, length in words)| over held-out samples above this,
    together with a rising reward, means the gain is explained by length."""
    min_length_corr_samples: int = 6
    """Fewer held-out samples than this skip the length-correlation guard (too noisy)."""
    min_win_rate: float = 0.0
    """Publish only when the candidate beats the live version on at least this share of held-out samples."""
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
    rl_overrides: dict[str, Any] = field(default_factory=dict)
    """Fields set on reward.policy.RLConfig (e.g. {"lr": 1e-5, "max_new_tokens": 16})."""


# ----------------------------------------------------------------------------- guards (pure)
@dataclass
class GuardFiring:
    guard: str
    """nonfinite | kl | reward_hacking | length_hacking"""
    action: str
    """discard | shrink | rollback"""
    reason: str
    data: dict[str, float] = field(default_factory=dict)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; 0 when either side has no variance or there are fewer than 2 points."""
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(a) < 2 or len(a) != len(b):
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return 0.0 if den == 0.0 else float((a * b).sum() / den)


def guard_nonfinite(metrics: dict[str, Any], saw_nonfinite_reward: bool = False) -> GuardFiring | None:
    """Any NaN/inf metric (loss, reward, KL...) or reward seen during the update discards it."""
    bad = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not math.isfinite(float(v)))
    if saw_nonfinite_reward:
        bad = ["reward (during rollouts)", *bad]
    if not bad:
        return None
    return GuardFiring("nonfinite", "discard", f"non-finite values in {', '.join(bad)}: update discarded")


def guard_kl(kl: float, max_kl: float, retries_left: int) -> GuardFiring | None:
    """KL above the limit: shrink (retry smaller) while retries are left, else discard."""
    if not math.isfinite(kl):
        return GuardFiring("kl", "discard", f"KL is {kl}: update discarded", {"kl": kl})
    if kl <= max_kl:
        return None
    action = "shrink" if retries_left > 0 else "discard"
    what = "retrying with fewer steps and a lower learning rate" if action == "shrink" else "update discarded"
    return GuardFiring("kl", action, f"KL {kl:.3f} above the limit {max_kl:.3f}: {what}",
                       {"kl": kl, "max_kl": max_kl})


def guard_reward_hacking(
    reward_new: float, reward_old: float, agreement_new: float, agreement_old: float,
    gain_eps: float, agreement_drop: float, action: str = "discard",
) -> GuardFiring | None:
    """Reward rising while agreement with held-out feedback falls."""
    gain, drop = reward_new - reward_old, agreement_old - agreement_new
    if gain > gain_eps and drop > agreement_drop:
        return GuardFiring(
            "reward_hacking", action,
            f"reward rose by {gain:.3f} while agreement with held-out feedback fell by {drop:.3f} "
            f"({agreement_old:.2f} -> {agreement_new:.2f})",
            {"reward_gain": gain, "agreement_drop": drop},
        )
    return None


def guard_length_hacking(
    rm_scores: Sequence[float], lengths: Sequence[float], reward_gain: float, cfg: LearnerConfig,
    action: str = "discard",
) -> GuardFiring | None:
    """The learned reward is explained mostly by length (|corr| above the limit) while the reward rises."""
    if len(rm_scores) < cfg.min_length_corr_samples or reward_gain <= cfg.reward_gain_eps:
        return None
    r = pearson(rm_scores, lengths)
    if abs(r) > cfg.max_length_corr:
        return GuardFiring(
            "length_hacking", action,
            f"learned reward is explained by length (corr {r:+.2f}, limit {cfg.max_length_corr:.2f}) "
            f"while the reward rose by {reward_gain:.3f}",
            {"length_corr": r, "reward_gain": reward_gain},
        )
    return None


def win_rate(new: Sequence[float], old: Sequence[float]) -> float:
    """Share of paired samples where new beats old (ties count half); 0.5 when there are none."""
    from .train import pair_accuracy

    return pair_accuracy(new, old) if len(new) else 0.5


class NonFiniteWatch:
    """Wraps a reward function; remembers whether it ever returned NaN/inf (the guard reads it)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn, self.seen = fn, False

    def __call__(self, prompts: Any, texts: Any, extras: Any = None) -> Any:
        from .policy import accepts_extras

        out = self.fn(prompts, texts, extras=extras) if extras is not None and accepts_extras(self.fn) \
            else self.fn(prompts, texts)
        total = getattr(out, "total", out)
        if not np.all(np.isfinite(np.asarray(total, np.float64))):
            self.seen = True
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fn, name)


# ----------------------------------------------------------------------------- evaluation
@dataclass
class PolicyEval:
    """How one policy version does on the held-out prompts and feedback of this cycle."""

    version_id: int
    rewards: list[float]
    rm_scores: list[float]
    lengths: list[float]
    kl: float
    """KL to the base model on this policy's own held-out samples (k1 estimate, summed per reply)."""
    agreement: float
    texts: list[str] = field(default_factory=list)
    step_kl: float | None = None
    """KL to the `kl_to` version (the one it was trained from), when asked for."""

    @property
    def reward(self) -> float:
        return float(np.mean(self.rewards)) if self.rewards else 0.0


def _token_logprobs(model, tokenizer, prompts: Sequence[str], texts: Sequence[str], device, batch: int = 8) -> list[float]:
    """Sum of log p(text tokens | prompt) per (prompt, text)."""
    out: list[float] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for i in range(0, len(texts), batch):
        rows, spans = [], []
        for p, t in zip(prompts[i:i + batch], texts[i:i + batch]):
            pi = tokenizer(p, add_special_tokens=False)["input_ids"]
            ti = tokenizer(t, add_special_tokens=False)["input_ids"][:256] or [pad]
            rows.append(pi + ti)
            spans.append((len(pi), len(pi) + len(ti)))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        att = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):  # right padding: positions stay as in an unpadded pass
            ids[j, : len(r)] = torch.tensor(r)
            att[j, : len(r)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        for j, (a, b) in enumerate(spans):
            out.append(float(logp[j, a - 1 : b - 1].sum()))
    return out


def evaluate_policies(
    model, tokenizer, adapters: dict[int, str | None], prompts: Sequence[Any], pairs: Sequence[tuple[str, str, str]],
    reward_fn: Callable[..., Any], cfg: LearnerConfig, device=None,
    only: set[int] | None = None, kl_to: dict[int, int] | None = None,
) -> dict[int, PolicyEval]:
    """Evaluate several policy versions on the same held-out prompts and pairs.

    model: a fresh base model (it gets wrapped in a PeftModel here). adapters: version id ->
    adapter dir (None = the base model, id 0). prompts: RolloutPrompt. pairs: (prompt_text,
    chosen, rejected) from held-out feedback. Reference for KL and agreement = the base model.
    only: evaluate just these ids (the others are loaded as KL targets). kl_to: id -> id whose
    log-probs on the first one's samples give its step KL."""
    from peft import PeftModel

    from assistant.generate import clean_candidate

    device = device or next(model.parameters()).device
    names = {vid: f"v{vid}" for vid, d in adapters.items() if d is not None}
    peft_model = None
    for vid, d in adapters.items():
        if d is None:
            continue
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, str(d), adapter_name=names[vid])
        else:
            peft_model.load_adapter(str(d), adapter_name=names[vid])
    runner = peft_model if peft_model is not None else model
    runner.eval()

    def use(vid: int):
        if vid == 0 or adapters.get(vid) is None:
            return runner.disable_adapter() if peft_model is not None else _nullcontext()
        runner.set_adapter(names[vid])
        return _nullcontext()

    rep_prompts = [p for p in prompts for _ in range(cfg.eval_samples)]
    prompt_texts = [p.prompt_text for p in rep_prompts]
    pair_prompts = [p for p, _, _ in pairs]
    with use(0):
        ref_pair_c = _token_logprobs(runner, tokenizer, pair_prompts, [c for _, c, _ in pairs], device)
        ref_pair_r = _token_logprobs(runner, tokenizer, pair_prompts, [r for _, _, r in pairs], device)

    results: dict[int, PolicyEval] = {}
    for vid in adapters:
        if only is not None and vid not in only:
            continue
        texts: list[str] = []
        with use(vid):
            tokenizer.padding_side = "left"
            enc = tokenizer([p.prompt_text for p in prompts], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            torch.manual_seed(cfg.seed)
            with torch.no_grad():
                out = runner.generate(
                    **enc, max_new_tokens=cfg.eval_max_new_tokens, do_sample=True, temperature=0.8, top_p=0.95,
                    top_k=0, num_return_sequences=cfg.eval_samples, pad_token_id=tokenizer.pad_token_id,
                )
            new = out[:, enc["input_ids"].shape[1]:]
            for row, p in zip(new.tolist(), rep_prompts):
                eos = set(getattr(tokenizer, "all_special_ids", [tokenizer.eos_token_id]))
                finished = any(t in eos for t in row)
                raw = tokenizer.decode(row, skip_special_tokens=True)
                texts.append(clean_candidate(raw, p.mode, p.source_text, finished) or raw.strip() or ".")
            pol_samples = _token_logprobs(runner, tokenizer, prompt_texts, texts, device)
            pol_c = _token_logprobs(runner, tokenizer, pair_prompts, [c for _, c, _ in pairs], device)
            pol_r = _token_logprobs(runner, tokenizer, pair_prompts, [r for _, _, r in pairs], device)
        with use(0):
            ref_samples = _token_logprobs(runner, tokenizer, prompt_texts, texts, device)
        step_kl = None
        if kl_to and vid in kl_to:
            with use(kl_to[vid]):
                prev_samples = _token_logprobs(runner, tokenizer, prompt_texts, texts, device)
            step_kl = float(np.mean(np.asarray(pol_samples) - np.asarray(prev_samples))) if texts else 0.0
        rout = reward_fn(rep_prompts, texts)
        total = np.asarray(getattr(rout, "total", rout), np.float64)
        rm = np.asarray(getattr(rout, "terms", {}).get("rm", total), np.float64)
        margins = [(pc - rc) - (pr - rr) for pc, rc, pr, rr in zip(pol_c, ref_pair_c, pol_r, ref_pair_r)]
        agreement = win_rate(margins, [0.0] * len(margins)) if margins else 0.5
        kl = float(np.mean(np.asarray(pol_samples) - np.asarray(ref_samples))) if texts else 0.0
        results[vid] = PolicyEval(
            version_id=vid, rewards=total.tolist(), rm_scores=rm.tolist(),
            lengths=[float(len(t.split())) for t in texts], kl=kl, agreement=agreement, texts=texts,
            step_kl=step_kl,
        )
    if peft_model is not None:
        peft_model.unload()
    return results


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ----------------------------------------------------------------------------- the learner
LMFactory = Callable[[], tuple[torch.nn.Module, Any]]
"""Returns a fresh (base model, tokenizer); RL and evaluation each wrap their own copy."""


@dataclass
class CycleResult:
    outcome: str
    """published | discarded | skipped | error"""
    reason: str
    version_id: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    guards: list[GuardFiring] = field(default_factory=list)


class Learner:
    """Watches a profile's feedback and turns it into new policy versions (see the module docstring).

    lm_factory: fresh (model, tokenizer) of the base LM. embedder: for the reward model and the
    style term. reward_fn_factory(rm) -> reward function (default: reward.functions.RewardFunction
    with the default weights). train_policy: reward.policy.train_policy (injectable for tests)."""

    def __init__(
        self,
        store: Store,
        data_dir: str | Path,
        profile_id: str,
        lm_factory: LMFactory,
        embedder: Any,
        cfg: LearnerConfig | None = None,
        rm_cfg: Any = None,
        reward_fn_factory: Callable[[Any], Callable[..., Any]] | None = None,
        train_policy: Callable[..., Any] | None = None,
        rl_config: Any = None,
    ):
        self.store, self.data_dir, self.profile = store, Path(data_dir), profile_id
        self.lm_factory, self.embedder = lm_factory, embedder
        self.cfg = cfg or LearnerConfig()
        self.rm_cfg = rm_cfg
        self.reward_fn_factory = reward_fn_factory or self._default_reward_fn
        self._train_policy = train_policy
        self.rl_config = rl_config
        self.force = False
        self._stop = threading.Event()
        st = store.learner_state(profile_id) or {}
        self.metrics: dict[str, float] = dict(st.get("metrics") or {})
        self.paused = bool(st.get("paused"))

    # ------------------------------------------------------------------ state
    def _state(self, phase: str, progress: float | None = None, message: str | None = None, **extra: Any) -> None:
        fields: dict[str, Any] = {"phase": phase, "heartbeat": time.time(), "paused": self.paused}
        if progress is not None:
            fields["progress"] = float(max(0.0, min(1.0, progress)))
        if message is not None:
            fields["message"] = message
        fields.update(extra)
        self.store.set_learner_state(self.profile, **fields)

    def _guard_event(self, g: GuardFiring, version_id: int | None) -> None:
        log.warning("guard %s (%s): %s", g.guard, g.action, g.reason)
        self.store.add_event("guard", g.reason, self.profile, version_id,
                             {"guard": g.guard, "action": g.action, **g.data})

    @property
    def last_feedback_id(self) -> int:
        return int(self.metrics.get("learner/last_feedback_id", 0))

    def new_feedback(self) -> int:
        return len(self.store.feedback(self.profile, since_id=self.last_feedback_id))

    def handle_commands(self) -> None:
        cmd = self.store.take_learner_command(self.profile)
        if cmd == "pause":
            self.paused = True
            self._state("paused", message="paused")
        elif cmd == "resume":
            self.paused = False
            self._state("idle", message="resumed")
        elif cmd == "train_now":
            self.force = True

    # ------------------------------------------------------------------ pieces
    def _default_reward_fn(self, rm: Any) -> Callable[..., Any]:
        from .functions import RewardFunction, embed_with

        return RewardFunction(rm=rm, embed=embed_with(self.embedder) if self.embedder is not None else None)

    def _reward_model(self, cycle: int):
        from .train import RewardTrainConfig, load_live_reward_model, save_reward_version, train_from_store

        live = self.store.live_version(self.profile, "reward")
        if live is not None and cycle % max(1, self.cfg.rm_every) != 0:
            rm = load_live_reward_model(self.store, self.profile, self.embedder)
            if rm is not None:
                return rm, {}
        cfg = self.rm_cfg or RewardTrainConfig(shuffled_control=False, seed=self.cfg.seed)
        rm, metrics = train_from_store(self.store, self.profile, self.embedder, cfg)
        # undefined statistics (e.g. rm/spearman without pointwise data) are NaN by design: the
        # guard looks at the losses only
        g = guard_nonfinite({k: v for k, v in metrics.items() if k.startswith("rm/") and "loss" in k})
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if g is not None:
            self._guard_event(GuardFiring("nonfinite", "discard", "reward model: " + g.reason), None)
            old = load_live_reward_model(self.store, self.profile, self.embedder)
            if old is None:
                raise RuntimeError("the reward model could not be trained (non-finite metrics) and none is live")
            return old, {}
        save_reward_version(self.store, self.data_dir, self.profile, rm, metrics, cfg, publish=True)
        artifacts.prune_versions(self.store, self.profile, "reward", self.cfg.keep_versions)
        return rm, metrics

    def _heldout(self) -> tuple[list[Any], list[tuple[str, str, str]]]:
        """Held-out prompts (RolloutPrompt) and preference pairs (prompt_text, chosen, rejected)."""
        from .feedback import build_training_data
        from .functions import RolloutPrompt
        from .train import split_by_group

        groups = self.store.requests_with_feedback(self.profile)
        data = build_training_data(groups)
        _train, held = split_by_group(data, self.cfg.heldout_frac, self.cfg.seed)
        by_id = {f"request:{g['request'].id}": g["request"] for g in groups}
        pairs = [(by_id[p.group].prompt, p.chosen, p.rejected) for p in held.pairs if p.group in by_id]
        pairs = pairs[: self.cfg.eval_pairs]
        held_groups = [gid for gid in held.groups() if gid in by_id]
        reqs = [by_id[g] for g in held_groups]
        # top up with the most recent requests so a small held-out set still gives enough prompts
        seen = {r.id for r in reqs}
        for r in self.store.recent_requests(self.profile, limit=4 * self.cfg.eval_prompts):
            if len(reqs) >= self.cfg.eval_prompts:
                break
            if r.id not in seen and r.prompt:
                reqs.append(r)
                seen.add(r.id)
        prompts = [RolloutPrompt.from_request(r) for r in reqs[: self.cfg.eval_prompts] if r.prompt]
        return prompts, pairs

    def _evaluate(self, versions: dict[int, ModelVersion | None], reward_fn, prompts, pairs,
                  only: set[int] | None = None, kl_to: dict[int, int] | None = None) -> dict[int, PolicyEval]:
        from assistant.generate import ADAPTER_SUBDIR

        model, tok = self.lm_factory()
        adapters = {vid: (str(Path(v.path) / ADAPTER_SUBDIR) if v is not None else None) for vid, v in versions.items()}
        return evaluate_policies(model, tok, adapters, prompts, pairs, reward_fn, self.cfg, only=only, kl_to=kl_to)

    def _rl(self, reward_fn, parent: ModelVersion | None, steps: int, lr_scale: float, progress: Callable[[float], None]):
        train_policy = self._train_policy
        if train_policy is None:
            from .policy import train_policy  # noqa: PLC0415 (H4's module; imported when needed)
        rl_cfg = self._rl_config(lr_scale)
        model, tok = self.lm_factory()
        kwargs: dict[str, Any] = dict(steps=steps, publish=False, parent=parent)
        params = inspect.signature(train_policy).parameters
        if "on_step" in params:
            kwargs["on_step"] = lambda i, _m: progress((i + 1) / steps)
        if "extra_config" in params:  # marks it as this learner's, for artifacts.abandon_candidates
            kwargs["extra_config"] = dict(artifacts.LEARNER_CANDIDATE)
        return train_policy(self.store, self.data_dir, self.profile, model, tok, reward_fn, rl_cfg, **kwargs)

    def _rl_config(self, lr_scale: float = 1.0):
        cfg = self.rl_config
        if cfg is None:
            from .policy import RLConfig

            cfg = RLConfig()
        names = {f.name for f in dataclasses.fields(cfg)} if dataclasses.is_dataclass(cfg) else set()
        changes = {k: v for k, v in self.cfg.rl_overrides.items() if k in names}
        if "algo" in names and "algo" not in changes and self.rl_config is None:
            changes["algo"] = self.cfg.algo
        if lr_scale != 1.0:
            for lr_name in ("lr", "learning_rate"):
                if lr_name in names:
                    changes[lr_name] = float(changes.get(lr_name, getattr(cfg, lr_name))) * lr_scale
        return dataclasses.replace(cfg, **changes) if changes else cfg

    # ------------------------------------------------------------------ one cycle
    def run_cycle(self) -> CycleResult:
        cfg = self.cfg
        cycle = int(self.metrics.get("learner/cycles", 0))
        upto = self.store.last_feedback_id(self.profile)
        metrics: dict[str, float] = {}
        guards: list[GuardFiring] = []

        # 1. reward model -------------------------------------------------------------------
        self._state("reward", 0.02, "training the reward model")
        rm, rm_metrics = self._reward_model(cycle)
        metrics.update(rm_metrics)
        reward_fn = NonFiniteWatch(self.reward_fn_factory(rm))
        prompts, pairs = self._heldout()
        if not prompts:
            # finish (feedback counted as seen, phase idle): else every poll would retrain and
            # publish another reward model on the same feedback
            return self._finish(CycleResult("skipped", "no stored prompts to evaluate on yet", metrics=metrics), upto)

        # 2. recheck the live version against its parent -----------------------------------------
        live = self.store.live_version(self.profile, "policy")
        evals: dict[int, PolicyEval] = {}
        if live is not None and cfg.recheck_live:
            self._state("recheck", 0.2, f"re-checking live version {live.id} against its parent")
            parent = self._restorable(live.parent_id)
            evals = self._evaluate({0: None, live.id: live, **({parent.id: parent} if parent else {})},
                                   reward_fn, prompts, pairs)
            pe, le = evals[parent.id if parent else 0], evals[live.id]
            hack = guard_reward_hacking(le.reward, pe.reward, le.agreement, pe.agreement,
                                        cfg.reward_gain_eps, cfg.agreement_drop, action="rollback") or \
                guard_length_hacking(le.rm_scores, le.lengths, le.reward - pe.reward, cfg, action="rollback")
            if hack is not None:
                hack.reason = f"live version {live.id}: {hack.reason}; rolled back to " + \
                    (f"version {parent.id}" if parent else "the base model")
                self._guard_event(hack, live.id)
                guards.append(hack)
                artifacts.rollback(self.store, self.profile, parent.id if parent else 0)
                live = self.store.live_version(self.profile, "policy")
        if live is None or live.id not in evals:
            evals.update(self._evaluate({0: None, **({live.id: live} if live else {})}, reward_fn, prompts, pairs))
        live_eval = evals[live.id if live else 0]

        # 3-4. RL with the guards on NaN and KL --------------------------------------------------
        steps, lr_scale, retries = cfg.rl_steps, 1.0, cfg.kl_retries
        while True:
            reward_fn.seen = False
            self._state("rl", 0.35, f"RL: {steps} update(s) from " + (f"version {live.id}" if live else "the base model"))
            try:
                cand, rl_metrics = self._rl(reward_fn, live, steps, lr_scale,
                                            lambda f: self._state("rl", 0.35 + 0.35 * float(f)))
            except Exception as e:  # noqa: BLE001 - a NaN can also surface as an exception
                if reward_fn.seen:
                    g = GuardFiring("nonfinite", "discard", f"non-finite reward during RL ({e}): update discarded")
                    self._guard_event(g, None)
                    return self._finish(CycleResult("discarded", g.reason, None, metrics, [*guards, g]), upto)
                raise
            rl_metrics = {k: float(v) for k, v in (rl_metrics or {}).items() if isinstance(v, (int, float))}
            metrics.update(rl_metrics)
            g = guard_nonfinite(rl_metrics, reward_fn.seen)
            if g is not None:
                self._guard_event(g, cand.id)
                artifacts.discard_version(self.store, cand.id)
                return self._finish(CycleResult("discarded", g.reason, cand.id, metrics, [*guards, g]), upto)

            # 5. evaluate the candidate against the live version --------------------------------
            self._state("evaluate", 0.75, f"evaluating candidate {cand.id} against " +
                        (f"version {live.id}" if live else "the base model"))
            versions = {cand.id: cand, **({live.id: live} if live else {})}
            ce = self._evaluate(versions, reward_fn, prompts, pairs, only={cand.id},
                                kl_to={cand.id: live.id if live else 0})[cand.id]
            kl_g = guard_kl(ce.step_kl if ce.step_kl is not None else ce.kl, cfg.max_kl, retries)
            if kl_g is None:
                break
            self._guard_event(kl_g, cand.id)
            guards.append(kl_g)
            artifacts.discard_version(self.store, cand.id)
            if kl_g.action == "discard":
                return self._finish(CycleResult("discarded", kl_g.reason, cand.id, metrics, guards), upto)
            steps, lr_scale, retries = max(1, steps // 2), lr_scale * 0.5, retries - 1

        eval_metrics = {
            "eval/reward": ce.reward, "eval/reward_live": live_eval.reward,
            "eval/reward_gain": ce.reward - live_eval.reward,
            "eval/win_rate": win_rate(ce.rewards, live_eval.rewards),
            "eval/kl": ce.kl, "eval/step_kl": float(ce.step_kl or 0.0), "eval/agreement": ce.agreement, "eval/agreement_live": live_eval.agreement,
            "eval/length_corr": pearson(ce.rm_scores, ce.lengths), "eval/n_prompts": float(len(prompts)),
            "eval/n_pairs": float(len(pairs)),
        }
        metrics.update(eval_metrics)
        self.store.update_version_metrics(cand.id, {**rm_metrics, **eval_metrics})
        self.store.log_metrics(cand.id, eval_metrics)

        # guards on reward hacking, then the publish rule -------------------------------------------
        gain = eval_metrics["eval/reward_gain"]
        for g in (
            guard_reward_hacking(ce.reward, live_eval.reward, ce.agreement, live_eval.agreement,
                                 cfg.reward_gain_eps, cfg.agreement_drop),
            guard_length_hacking(ce.rm_scores, ce.lengths, gain, cfg),
        ):
            if g is not None:
                self._guard_event(g, cand.id)
                guards.append(g)
                artifacts.discard_version(self.store, cand.id)
                return self._finish(CycleResult("discarded", g.reason, cand.id, metrics, guards), upto)
        if eval_metrics["eval/win_rate"] < cfg.min_win_rate:
            reason = f"win-rate {eval_metrics['eval/win_rate']:.2f} below {cfg.min_win_rate:.2f}"
            self.store.add_event("discard", reason, self.profile, cand.id)
            artifacts.discard_version(self.store, cand.id)
            return self._finish(CycleResult("discarded", reason, cand.id, metrics, guards), upto)

        # 6. publish --------------------------------------------------------------------------------
        self._state("publish", 0.95, f"publishing version {cand.id}")
        artifacts.publish_version(self.store, cand.id)
        reason = (f"published version {cand.id}: reward {ce.reward:+.3f} (live {live_eval.reward:+.3f}), "
                  f"win-rate {eval_metrics['eval/win_rate']:.2f}, KL {ce.kl:.3f}")
        self.store.add_event("publish", reason, self.profile, cand.id, eval_metrics)
        artifacts.prune_versions(self.store, self.profile, "policy", cfg.keep_versions)
        return self._finish(CycleResult("published", reason, cand.id, metrics, guards), upto)

    def _restorable(self, version_id: int | None) -> ModelVersion | None:
        if not version_id:
            return None
        try:
            v = self.store.get_version(version_id)
        except Exception:  # noqa: BLE001 - a missing parent means "the base model"
            return None
        return v if artifacts.available(v) else None  # not discarded, abandoned or half-pruned

    def _finish(self, res: CycleResult, upto: int) -> CycleResult:
        self.metrics = {
            **{k: v for k, v in res.metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))},
            "learner/last_feedback_id": float(upto),
            "learner/cycles": float(self.metrics.get("learner/cycles", 0)) + 1,
            "learner/last_version": float(res.version_id or 0),
            "learner/last_published": float(res.outcome == "published"),
        }
        self._state("idle", 1.0, res.reason, metrics=self.metrics, error=None)
        return res

    # ------------------------------------------------------------------ loops
    def run_once(self, force: bool = False) -> CycleResult:
        """One check: run a cycle when enough new feedback arrived (or `force`), else skip."""
        self.handle_commands()
        force = force or self.force
        if self.paused and not force:
            self._state("paused", message="paused")
            return CycleResult("skipped", "paused")
        n = self.new_feedback()
        if force and n == 0 and self.store.last_feedback_id(self.profile) > 0:
            pass  # train now: another cycle on the feedback there is
        elif n == 0 or (n < self.cfg.min_new_feedback and not force):
            msg = f"waiting for feedback: {n} new of {self.cfg.min_new_feedback} needed"
            self._state("waiting", 0.0, msg, metrics={**self.metrics, "learner/new_feedback": float(n)})
            return CycleResult("skipped", msg)
        self.force = False
        t0 = time.perf_counter()
        try:
            res = self.run_cycle()
        except Exception as e:
            log.exception("learner cycle failed")
            self._state("error", 0.0, f"cycle failed: {e}", error=f"{type(e).__name__}: {e}")
            self.store.add_event("error", f"{type(e).__name__}: {e}", self.profile)
            return CycleResult("error", f"{type(e).__name__}: {e}")
        log.info("learner cycle %s in %.1f s: %s", res.outcome, time.perf_counter() - t0, res.reason)
        return res

    def stop(self) -> None:
        self._stop.set()

    def run_forever(self) -> None:
        """Poll for feedback and commands until stop() (or SIGTERM in the learn command)."""
        self._state("idle", 0.0, "learner started")
        errors = 0
        while not self._stop.is_set():
            res = self.run_once()
            errors = errors + 1 if res.outcome == "error" else 0
            wait = self.cfg.poll_s * (min(2 ** errors, 12) if errors else 1)
            end = time.monotonic() + wait
            while not self._stop.is_set() and time.monotonic() < end:
                self.handle_commands()
                if self.force:
                    break
                self._state("paused" if self.paused else self._current_phase(), None)
                self._stop.wait(min(1.0, max(0.05, end - time.monotonic())))
        self._state("stopped", 0.0, "learner stopped")

    def _current_phase(self) -> str:
        st = self.store.learner_state(self.profile) or {}
        ph = st.get("phase") or "idle"
        return "idle" if ph == "paused" else ph


# ----------------------------------------------------------------------------- process control
def apply_resource_limits(cfg: LearnerConfig) -> None:
    """Lower this process's priority and cap torch's threads (call before any heavy work)."""
    if cfg.nice:
        try:
            # Linux applies niceness per thread: renice every thread that exists already; threads
            # started later inherit it from the (reniced) main thread
            target = os.getpriority(os.PRIO_PROCESS, 0) + int(cfg.nice)
            tids = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
            for tid in tids:
                try:
                    os.setpriority(os.PRIO_PROCESS, tid, target)
                except OSError:
                    pass
        except (OSError, AttributeError):
            log.warning("could not renice the learner")
    torch.set_num_threads(max(1, int(cfg.threads)))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set (parallel work has started)


def send_command(store: Store, profile_id: str, action: str) -> dict[str, Any]:
    """Queue pause / resume / train_now for the learner process (it polls every second).
    pause/resume also flip the stored flag at once so the UI reflects it immediately."""
    if action not in COMMANDS:
        raise ValueError(f"unknown learner action {action!r}; use one of {', '.join(COMMANDS)}")
    fields: dict[str, Any] = {"command": action}
    if action in ("pause", "resume"):
        fields["paused"] = action == "pause"
    store.set_learner_state(profile_id, **fields)
    return store.learner_state(profile_id) or {}


PARENT_ENV = "INKLOOP_LEARNER_PARENT"
"""Set by LearnerSupervisor: the server's pid. The learner stops when that process is gone."""


def watch_parent(on_gone: Callable[[], None], interval_s: float = 2.0) -> threading.Thread | None:
    """When started by a server (PARENT_ENV set), call `on_gone` once the server has died, so a
    killed server never leaves an orphan learner behind."""
    want = os.environ.get(PARENT_ENV)
    if not want:
        return None

    def loop() -> None:
        while True:
            if os.getppid() != int(want):
                log.warning("the server (pid %s) is gone: stopping the learner", want)
                on_gone()
                return
            time.sleep(interval_s)

    t = threading.Thread(target=loop, name="inkloop-parent-watch", daemon=True)
    t.start()
    return t


class LearnerSupervisor:
    """Runs `inkloop learn` as a child process beside the server and restarts it with backoff if it
    dies, so a learner crash (or a kill) never takes the UI down. `yielding(fn)` wraps the app's
    generation so the learner is frozen (SIGSTOP/SIGCONT) while a person waits for suggestions."""

    def __init__(self, argv: list[str], store: Store | None = None, profile_id: str = "default",
                 min_backoff_s: float = 2.0, max_backoff_s: float = 120.0, log_path: str | Path | None = None):
        self.argv, self.store, self.profile = argv, store, profile_id
        self.min_backoff_s, self.max_backoff_s = min_backoff_s, max_backoff_s
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.max_freeze_s = 20.0
        """The longest the learner stays frozen for one generation (checked every 5 s). Kept below
        the store's 30 s busy timeout: a learner frozen inside a (millisecond) write transaction
        then never makes another writer fail."""
        self._freeze_lock = threading.Lock()
        self._frozen = 0
        self._frozen_pid: int | None = None
        self._frozen_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def learn_argv(data_dir: str | Path, model: str | None, profile: str, extra: Sequence[str] = ()) -> list[str]:
        """The command line of `inkloop learn` for this interpreter and checkout."""
        import app

        root = str(Path(app.__file__).resolve().parent)
        argv = [sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r}); import app; sys.exit(app.main())",
                "learn", "--data-dir", str(data_dir), "--profile", profile]
        if model:
            argv += ["--model", str(model)]
        return argv + list(extra)

    def _spawn(self) -> subprocess.Popen:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               PARENT_ENV: str(os.getpid())}
        try:
            return subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    # ------------------------------------------------------------------ yielding the CPU to the app
    def freeze(self) -> None:
        """Suspend the learner (SIGSTOP) while the app generates; nested calls are counted.
        Safe for the database: the app's reads never wait on a writer (WAL) and the learner is
        resumed before the app writes the request."""
        import signal

        with self._freeze_lock:
            self._frozen += 1
            p = self.proc
            if self._frozen == 1 and p is not None and p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGSTOP)
                    self._frozen_pid = p.pid
                    self._frozen_at = time.monotonic()
                except OSError:
                    self._frozen_pid = None

    def thaw(self) -> None:
        with self._freeze_lock:
            self._frozen = max(0, self._frozen - 1)
            if self._frozen == 0:
                self._resume_locked()

    def _resume_locked(self) -> None:
        """SIGCONT the frozen learner, if any (the caller holds _freeze_lock)."""
        import signal

        if self._frozen_pid is not None:
            try:
                os.kill(self._frozen_pid, signal.SIGCONT)
            except OSError:
                pass
            self._frozen_pid = None

    def yielding(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap `fn` (e.g. Generator.suggest) so the learner is frozen while it runs."""
        import functools

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            self.freeze()
            try:
                return fn(*args, **kwargs)
            finally:
                self.thaw()

        return run

    def _unfreeze_if_stuck(self) -> None:
        """A generation that never ends must not starve the learner forever."""
        with self._freeze_lock:
            if self._frozen_pid is not None and time.monotonic() - self._frozen_at > self.max_freeze_s:
                log.warning("learner frozen for over %.0f s: letting it run", self.max_freeze_s)
                self._resume_locked()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="inkloop-learner-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        backoff = self.min_backoff_s
        while True:
            with self._freeze_lock:  # stop() sets _stop under this lock: it never misses a new child
                if self._stop.is_set():
                    break
                self.proc = self._spawn()
            started = time.monotonic()
            while True:
                try:
                    rc = self.proc.wait(timeout=5.0)
                    break
                except subprocess.TimeoutExpired:
                    self._unfreeze_if_stuck()
            if self._stop.is_set():
                break
            ran = time.monotonic() - started
            backoff = self.min_backoff_s if ran > 300 else min(self.max_backoff_s, backoff * 2 if self.restarts else backoff)
            self.restarts += 1
            msg = f"learner process exited with code {rc} after {ran:.0f} s; restarting in {backoff:.0f} s"
            log.warning(msg)
            if self.store is not None:
                try:
                    self.store.add_event("learner", msg, self.profile, data={"returncode": rc})
                    self.store.set_learner_state(self.profile, phase="error", message=msg, error=f"exit code {rc}")
                except Exception:  # noqa: BLE001 - supervision must go on
                    log.exception("could not record the learner exit")
            self._stop.wait(backoff)

    def stop(self, timeout: float = 10.0) -> None:
        with self._freeze_lock:
            self._stop.set()
            self._frozen = 1
            p = self.proc
        self.thaw()  # a frozen process cannot act on SIGTERM
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self._thread is not None:
            self._thread.join(timeout)


def config_dict(cfg: LearnerConfig) -> dict[str, Any]:
    return asdict(cfg)
