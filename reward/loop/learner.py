"""The live loop: new ratings -> retrain the reward model -> RL steps -> evaluate -> guards -> publish.

One cycle (`Learner.run_cycle`) reads like the algorithm:

1. reward   retrain the reward model on all feedback (every `rm_every` cycles) and publish it.
2. recheck  evaluate the live policy against its parent on held-out prompts and feedback; if the
            live one looks like reward hacking (reward up, agreement with held-out feedback down, or
            reward explained by length) roll back to the parent (the last good version).
3. rl       RL updates from the live policy with the composed reward, for the cycle's CPU-time
            budget (`rl_seconds`, or what `run_once(cpu_seconds=...)` leaves for RL), stopping early
            at the KL bound or when the reward on a few held-out requests stops rising (patience;
            reward.rl.budget) -> a *candidate* version (written atomically by storage.artifacts,
            recorded with status "candidate"). Rollouts use the person's other requests; with
            RLConfig.pref_pairs each update starts with DPO steps on their rated pairs
            (reward.rl.preference), the held-out requests' pairs excepted, and with
            RLConfig.served_pairs on the reward model's best over worst of the candidates
            those requests drew (the served samples, reward.rl.train.served_pairs).
4. guards   NaN/inf loss or reward -> discard; KL above the limit (the step's, or the candidate's
            to the base model) -> retry smaller, then discard.
5. evaluate candidate vs live on held-out prompts: mean reward, win-rate, KL to the base model,
            agreement with held-out feedback (implicit reward log pi/pi_ref of chosen > rejected).
6. publish  or discard with the reason. Prune old versions (keep the last N).

Between ratings (no new feedback due) the learner may run `idle_cycles` more cycles: no new reward
model and no recheck (nothing new to learn from or to check against), RL on from the live policy
under the same budget and guards, published only when the held-out reward beats the live one's.

Every guard firing is an event (``Store.add_event(kind="guard")``) with its reason; the learner's
phase/progress/message/metrics/heartbeat live in ``learner_state`` so the UI can show them and they
survive restarts. Commands (pause / resume / train_now) arrive through ``Store.take_learner_command``.

The learner runs in its own process (`inkloop learn`), started and restarted by `inkloop serve`
through `LearnerSupervisor`, with a low priority and one torch thread so the UI stays responsive."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from assistant.lm.adapters import adapter_dir
from reward.feedback import build_training_data, context_of
from reward.functions import RewardFunction, RolloutPrompt, embed_with
from reward.loop.config import LearnerConfig
from reward.loop.evaluation import LogpCache, PolicyEval, evaluate_policies, paired_win_rate
from reward.loop.guards import (
    GuardFiring,
    NonFiniteWatch,
    guard_kl,
    guard_length_hacking,
    guard_nonfinite,
    guard_reward_hacking,
    pearson,
)
from reward.rl.budget import StopRule, stop_reason
from reward.rl.policy import Policy
from reward.rl.preference import PolicyPair
from reward.rl.step import TrainerState
from reward.rl.train import policy_of, policy_pairs, prompts_from_store, served_pairs, train_policy
from reward.select import ChoiceConfig, conservative, member_scores
from reward.train import (
    load_live_reward_model,
    save_reward_version,
    split_by_group,
    train_from_store,
)
from storage import artifacts
from storage.records import ModelVersion, id_or_base
from storage.store import Store

log = logging.getLogger(__name__)

COMMANDS = ("pause", "resume", "train_now")

PHASES = ("idle", "waiting", "reward", "recheck", "rl", "evaluate", "publish", "paused", "error", "stopped")

# ----------------------------------------------------------------------------- the learner
LMFactory = Callable[[], tuple[torch.nn.Module, Any]]

"""Returns a fresh (base model, tokenizer); RL and evaluation each wrap their own copy."""

@dataclass
class Carried:
    """A candidate's trained weights that only the publish rule turned down: where the next cycle's
    RL starts (LearnerConfig.carry_cycles)."""

    live_id: int
    """The live version its RL started from (0: the base model); only used while it is still live."""
    weights: list[torch.Tensor]
    """Policy.trainable_parameters() (LoRA and value head), in order."""
    cycles: int
    """Cycles of RL the weights hold since they left the live version."""


@dataclass
class CycleResult:
    outcome: str
    """published | discarded | skipped | error | reward (only the reward model, train_policy off)"""
    reason: str
    version_id: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    guards: list[GuardFiring] = field(default_factory=list)


def served_score(rm: Any, request: Any, texts: list[str]) -> Any:
    """The reward-guided choice's conservative score of a served request's drawn texts, with the
    pessimism (kappa) it used when it served them: recorded with the request (a server's
    --choice-kappa), else ChoiceConfig's default."""
    kappa = ((getattr(request, "options", None) or {}).get("choice") or {}).get("kappa", ChoiceConfig.kappa)
    return conservative(member_scores(rm, context_of(request), texts), float(kappa))


class Learner:
    """Watches a profile's feedback and turns it into new policy versions (see the module docstring).

    lm_factory: fresh (model, tokenizer) of the base LM. embedder: for the reward model and the
    style term. reward_fn_factory(rm) -> reward function (default: reward.functions.RewardFunction
    with the default weights)."""

    def __init__(
        self,
        store: Store,
        data_dir: str | Path,
        profile_id: str,
        lm_factory: LMFactory,
        embedder: Any,
        cfg: LearnerConfig | None = None,
        reward_fn_factory: Callable[[Any], Callable[..., Any]] | None = None,
        pause: Callable[[], object] | None = None,
    ):
        self.store, self.data_dir, self.profile = store, Path(data_dir), profile_id
        self.pause = pause
        """Called at the cycle's safe points (decode steps, RL updates and minibatches), outside any
        database transaction: `inkloop learn` waits there while the server generates
        (storage.locks.Hold)."""
        self.lm_factory, self.embedder = lm_factory, embedder
        self.cfg = cfg or LearnerConfig()
        self.reward_fn_factory = reward_fn_factory or self._default_reward_fn
        self.force = False
        self._stop = threading.Event()
        st = store.learner_state(profile_id) or {}
        self.metrics: dict[str, float] = dict(st.get("metrics") or {})
        self.paused = bool(st.get("paused"))
        self.logp_cache = LogpCache()
        """Held-out log-probs per version, kept between cycles (evaluation.LogpCache)."""
        self.ref_logp: dict[tuple[str, str, int], float] = {}
        """The reference's log-probs of rated replies, kept between cycles (TrainerState.ref_logp)."""
        self.carried: Carried | None = None
        """The last candidate only the publish rule turned down (LearnerConfig.carry_cycles)."""
        self._trained: Carried | None = None
        """This cycle's candidate's weights, until the cycle ends."""

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

        return RewardFunction(rm=rm, embed=embed_with(self.embedder) if self.embedder is not None else None)

    def _reward_model(self, cycle: int, reuse: bool = False):

        live = self.store.live_version(self.profile, "reward")
        if live is not None and (reuse or cycle % max(1, self.cfg.rm_every) != 0):
            rm = load_live_reward_model(self.store, self.profile, self.embedder)
            if rm is not None:
                return rm, {}
        cfg = dataclasses.replace(self.cfg.rm, seed=self.cfg.seed)
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

    def _heldout(self, rm: Any = None) -> tuple[list[Any], list[PolicyPair], int, list[PolicyPair], list[PolicyPair]]:
        """Held-out prompts (RolloutPrompt), the held-out requests' rated pairs, how
        many of the prompts (the first ones) are held-out requests (the rest top them up), and what
        the preference steps of RL may learn from: the other requests' rated pairs, and (with `rm`
        and RLConfig.served_pairs) the reward model's best over worst of their drawn candidates."""

        groups = self.store.requests_with_feedback(self.profile)
        data = build_training_data(groups, self.cfg.rm.tie_pick_weight)
        train, held = split_by_group(data, self.cfg.heldout_frac, self.cfg.seed)
        by_id = {f"request:{g['request'].id}": g["request"] for g in groups}
        pairs = policy_pairs(groups, held)
        train_pairs = policy_pairs(groups, train)
        served: list[PolicyPair] = []
        if rm is not None and self.cfg.rl.served_pairs:
            served = served_pairs([by_id[g] for g in train.groups() if g in by_id],
                                  lambda req, texts: served_score(rm, req, texts))
        pairs = pairs[: self.cfg.eval_pairs]
        held_groups = [gid for gid in held.groups() if gid in by_id]
        reqs = [by_id[g] for g in held_groups if by_id[g].prompt]
        n_held = min(len(reqs), self.cfg.eval_prompts)
        # top up with the most recent requests so a small held-out set still gives enough prompts
        seen = {r.id for r in reqs}
        for r in self.store.recent_requests(self.profile, limit=4 * self.cfg.eval_prompts):
            if len(reqs) >= self.cfg.eval_prompts:
                break
            if r.id not in seen and r.prompt:
                reqs.append(r)
                seen.add(r.id)
        prompts = [RolloutPrompt.from_request(r) for r in reqs[: self.cfg.eval_prompts]]
        return prompts, pairs, n_held, train_pairs, served

    def _evaluate(self, versions: dict[int, ModelVersion | None], reward_fn, prompts, pairs,
                  only: set[int] | None = None, kl_to: dict[int, int] | None = None) -> dict[int, PolicyEval]:
        model, tok = self.lm_factory()
        dirs = {i: (str(adapter_dir(v.path)) if v is not None else None) for i, v in versions.items()}
        # what a later evaluation may ask for again: these versions, their parents and the base
        self.logp_cache.keep({0, *versions, *(v.parent_id for v in versions.values() if v is not None and v.parent_id)})
        return evaluate_policies(model, tok, dirs, prompts, pairs, reward_fn, self.cfg, only=only, kl_to=kl_to,
                                 pause=self.pause, cache=self.logp_cache)

    def _rl(self, reward_fn, parent: ModelVersion | None, rule: StopRule, lr_scale: float,
            progress: Callable[[float], None], heldout: list[Any], pairs: list[PolicyPair],
            served: list[PolicyPair]):
        """RL from `parent` until `rule` stops it. Rollouts: the person's recent requests other than
        the held-out ones the patience checks sample (all of them if nothing else is left); the
        preference steps (RLConfig.pref_pairs, served_pairs): `pairs`, the rated pairs of the other
        requests, and `served`, the reward model's best over worst of their drawn candidates."""
        model, tok = self.lm_factory()
        held = {p.prompt_text for p in heldout}
        pool = prompts_from_store(self.store, self.profile, self.cfg.rl.recent_requests)
        pool = [p for p in pool if p.prompt_text not in held] or pool
        policy, carried = self._start_policy(model, tok, parent)
        t0 = time.process_time()

        def on_step(i: int, _m: dict[str, float]) -> None:
            progress((time.process_time() - t0) / rule.seconds if rule.seconds else (i + 1) / rule.steps)

        version, metrics = train_policy(
            self.store, self.data_dir, self.profile, model, tok, reward_fn, self._rl_config(lr_scale), rule,
            publish=False, parent=parent, policy=policy, prompts=pool, heldout=heldout, pairs=pairs, served=served,
            on_step=on_step,
            extra_config={**artifacts.LEARNER_CANDIDATE,  # for artifacts.abandon_candidates
                          "carried_cycles": carried},
            state=TrainerState(pause_point=self.pause, ref_logp=self.ref_logp))
        if self.cfg.carry_cycles:  # keep the weights only when they may carry
            weights = [p.detach().clone() for p in policy.trainable_parameters()]
            self._trained = Carried(id_or_base(parent), weights, carried + 1)
        metrics["learner/carried_cycles"] = float(carried)
        return version, metrics

    def _start_policy(self, model: torch.nn.Module, tok: Any, parent: ModelVersion | None) -> tuple[Policy, int]:
        """The policy RL trains this cycle: the live version `parent` (or a fresh LoRA on the base
        model), with the carried candidate's weights copied in when they started from it. Returns
        it and how many cycles of RL the weights already hold (0: none carried)."""
        policy = policy_of(model, tok, parent)
        c = self.carried
        if c is None or c.live_id != id_or_base(parent):
            return policy, 0
        params = policy.trainable_parameters()
        if len(c.weights) != len(params) or any(w.shape != p.shape for w, p in zip(c.weights, params)):
            log.warning("carried weights do not fit the policy (its LoRA settings changed?): starting from the live version")
            return policy, 0
        with torch.no_grad():
            for p, w in zip(params, c.weights):
                p.copy_(w)
        return policy, c.cycles

    def _rl_config(self, lr_scale: float = 1.0):
        """cfg.rl, with the learning rate scaled down when the KL guard retries smaller."""
        rl = self.cfg.rl
        return dataclasses.replace(rl, lr=rl.lr * lr_scale) if lr_scale != 1.0 else rl

    # ------------------------------------------------------------------ one cycle
    def run_cycle(self, cpu_seconds: float | None = None, idle: bool = False) -> CycleResult:
        """One cycle (see the module doc). cpu_seconds: what the whole cycle may spend (simulate's
        rationing: what the learner earned and has not spent); RL gets what is left of it after
        the reward model and the recheck, less what the last candidate evaluation cost. None: RL
        gets cfg.rl_seconds. idle: a cycle between ratings (the live reward model, no recheck,
        published only if it beats the live version)."""
        cfg = self.cfg
        c0 = time.process_time()
        cycle = int(self.metrics.get("learner/cycles", 0))
        # an idle cycle learns from no feedback: what arrived meanwhile is left for the next cycle
        upto = self.last_feedback_id if idle else self.store.last_feedback_id(self.profile)
        metrics: dict[str, float] = {"learner/idle_cycle": float(idle)}
        guards: list[GuardFiring] = []

        # 1. reward model -------------------------------------------------------------------
        self._state("reward", 0.02, "loading the live reward model" if idle else "training the reward model")
        rm, rm_metrics = self._reward_model(cycle, reuse=idle)
        metrics.update(rm_metrics)
        reward_fn = NonFiniteWatch(self.reward_fn_factory(rm))
        if not cfg.train_policy:
            return self._finish(CycleResult("reward", "reward model retrained; policy learning is off",
                                            metrics=metrics), upto)
        prompts, pairs, n_held, train_pairs, served = self._heldout(rm)
        held_choices = [(p.chosen, p.rejected) for p in pairs]  # (chosen, rejected): what the length guard reads
        if not prompts:
            # finish (feedback counted as seen, phase idle): else every poll would retrain and
            # publish another reward model on the same feedback
            return self._finish(CycleResult("skipped", "no stored prompts to evaluate on yet", metrics=metrics), upto)

        # 2. recheck the live version against its parent -----------------------------------------
        live = self.store.live_version(self.profile, "policy")
        evals: dict[int, PolicyEval] = {}
        if live is not None and cfg.recheck_live and not idle:
            self._state("recheck", 0.2, f"re-checking live version {live.id} against its parent")
            parent = self._restorable(live.parent_id)
            # the base model is the KL reference either way; its own samples are needed only
            # when it is the parent
            evals = self._evaluate({0: None, live.id: live, **({parent.id: parent} if parent else {})},
                                   reward_fn, prompts, pairs, only={live.id, id_or_base(parent)})
            pe, le = evals[id_or_base(parent)], evals[live.id]
            failed = guard_reward_hacking(le.reward, pe.reward, le.agreement, pe.agreement,
                                          cfg.reward_gain_eps, cfg.agreement_drop, action="rollback",
                                          n_pairs=len(pairs), min_pairs=cfg.min_agreement_pairs) or \
                guard_length_hacking(le.rm_scores, le.lengths, le.reward - pe.reward, cfg, action="rollback",
                                     feedback_pairs=held_choices) or \
                guard_kl(None, cfg.max_kl, 0, base_kl=le.kl, action="rollback")  # published under a larger max_kl
            if failed is not None:
                failed.reason = f"live version {live.id}: {failed.reason}; rolled back to " + \
                    (f"version {parent.id}" if parent else "the base model")
                self._guard_event(failed, live.id)
                guards.append(failed)
                artifacts.rollback(self.store, self.profile, id_or_base(parent))
                live = self.store.live_version(self.profile, "policy")
        if live is None or live.id not in evals:
            evals.update(self._evaluate({0: None, **({live.id: live} if live else {})}, reward_fn, prompts, pairs))
        live_eval = evals[id_or_base(live)]

        # 3-4. RL for the cycle's budget, with the guards on NaN and KL ---------------------------
        if cpu_seconds is None:
            seconds = cfg.rl_seconds
        else:  # what the cycle has left, less the last evaluation's cost; at least one update
            spent = time.process_time() - c0
            seconds = max(1e-3, cpu_seconds - spent - float(self.metrics.get("learner/eval_cpu_s", 0.0)))
        heldout = prompts[: min(n_held, cfg.rl_patience_prompts)]
        steps, lr_scale, retries = cfg.rl_steps, 1.0, cfg.kl_retries
        while True:
            reward_fn.seen = False
            # the budget and the cap; the KL stop below the guard's bound; patience on held-out requests
            rule = StopRule(seconds=seconds, steps=steps, max_kl=cfg.rl_kl_stop * cfg.max_kl if cfg.rl_kl_stop > 0
                            else math.inf, patience=cfg.rl_patience if heldout else 0,
                            heldout_samples=cfg.eval_samples, heldout_max_new_tokens=cfg.eval_max_new_tokens)
            self._state("rl", 0.35, f"RL: {seconds:.0f} CPU-s" + (f", at most {steps} update(s)" if steps else "")
                        + " from " + (f"version {live.id}" if live else "the base model"))
            try:
                cand, rl_metrics = self._rl(reward_fn, live, rule, lr_scale,
                                            lambda f: self._state("rl", 0.35 + 0.35 * float(f)), heldout,
                                            train_pairs, served)
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
            e0 = time.process_time()
            ce = self._evaluate(versions, reward_fn, prompts, pairs, only={cand.id},
                                kl_to={cand.id: id_or_base(live)})[cand.id]
            metrics["learner/eval_cpu_s"] = time.process_time() - e0
            # from the base model the step is the KL to the base: checked once
            kl_g = guard_kl(ce.step_kl if live is not None else None, cfg.max_kl, retries, base_kl=ce.kl)
            if kl_g is None:
                break
            self._guard_event(kl_g, cand.id)
            guards.append(kl_g)
            artifacts.discard_version(self.store, cand.id)
            if kl_g.action == "discard":
                return self._finish(CycleResult("discarded", kl_g.reason, cand.id, metrics, guards), upto)
            steps, seconds = (max(1, steps // 2) if steps else 0), seconds / 2
            lr_scale, retries = lr_scale * 0.5, retries - 1

        eval_metrics = {
            "eval/reward": ce.reward, "eval/reward_live": live_eval.reward,
            "eval/reward_gain": ce.reward - live_eval.reward,
            "eval/win_rate": paired_win_rate(ce.rewards, live_eval.rewards),
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
                                 cfg.reward_gain_eps, cfg.agreement_drop, n_pairs=len(pairs),
                                 min_pairs=cfg.min_agreement_pairs),
            guard_length_hacking(ce.rm_scores, ce.lengths, gain, cfg, feedback_pairs=held_choices),
        ):
            if g is not None:
                self._guard_event(g, cand.id)
                guards.append(g)
                artifacts.discard_version(self.store, cand.id)
                return self._finish(CycleResult("discarded", g.reason, cand.id, metrics, guards), upto)
        if (idle or cfg.publish_requires_gain) and gain <= cfg.reward_gain_eps:  # only a better policy replaces the live one
            reason = (f"{'idle cycle: ' if idle else ''}held-out reward {ce.reward:+.3f} does not beat the live "
                      f"version's {live_eval.reward:+.3f}")
            return self._turned_down(reason, cand.id, metrics, guards, upto)
        if eval_metrics["eval/win_rate"] < cfg.min_win_rate:
            reason = f"win-rate {eval_metrics['eval/win_rate']:.2f} below {cfg.min_win_rate:.2f}"
            return self._turned_down(reason, cand.id, metrics, guards, upto)

        # 6. publish --------------------------------------------------------------------------------
        self._state("publish", 0.95, f"publishing version {cand.id}")
        artifacts.publish_version(self.store, cand.id)
        reason = (f"published version {cand.id}: reward {ce.reward:+.3f} (live {live_eval.reward:+.3f}), "
                  f"win-rate {eval_metrics['eval/win_rate']:.2f}, KL {ce.kl:.3f}; RL {metrics.get('rl/steps', 0):.0f} "
                  f"update(s) in {metrics.get('rl/seconds', 0):.0f} CPU-s, stopped: {stop_reason(metrics)}")
        self.store.add_event("publish", reason, self.profile, cand.id, eval_metrics)
        artifacts.prune_versions(self.store, self.profile, "policy", cfg.keep_versions)
        return self._finish(CycleResult("published", reason, cand.id, metrics, guards), upto)

    def _turned_down(self, reason: str, cand_id: int, metrics: dict[str, float], guards: list[GuardFiring],
                     upto: int) -> CycleResult:
        """The publish rule (not a guard) turned the candidate down: discard the version; its
        weights carry into the next cycle while they hold at most cfg.carry_cycles cycles of RL."""
        carry = self._trained is not None and self._trained.cycles <= self.cfg.carry_cycles
        if carry:
            reason += f"; its weights ({self._trained.cycles} cycle(s) of RL) carry into the next cycle"
        self.store.add_event("discard", reason, self.profile, cand_id)
        artifacts.discard_version(self.store, cand_id)
        return self._finish(CycleResult("discarded", reason, cand_id, metrics, guards), upto, carry=carry)

    def _restorable(self, version_id: int | None) -> ModelVersion | None:
        if not version_id:
            return None
        try:
            v = self.store.get_version(version_id)
        except Exception:  # noqa: BLE001 - a missing parent means "the base model"
            return None
        return v if artifacts.available(v) else None  # not discarded, abandoned or half-pruned

    def _finish(self, res: CycleResult, upto: int, carry: bool = False) -> CycleResult:
        # the carried weights survive only a candidate the publish rule turned down (_turned_down)
        self.carried, self._trained = (self._trained if carry else None), None
        m = res.metrics
        idle_left = float(self.metrics.get("learner/idle_left", 0)) - 1 if m.get("learner/idle_cycle") \
            else float(self.cfg.idle_cycles)
        if res.outcome != "published" or stop_reason(m) in ("kl", "patience"):
            idle_left = 0.0  # more of the same would not help: wait for new feedback
        self.metrics = {
            "learner/eval_cpu_s": float(self.metrics.get("learner/eval_cpu_s", 0.0)),  # kept until measured again
            **{k: v for k, v in m.items() if isinstance(v, (int, float)) and math.isfinite(float(v))},
            "learner/idle_left": max(0.0, idle_left),
            "learner/last_feedback_id": float(upto),
            "learner/cycles": float(self.metrics.get("learner/cycles", 0)) + 1,
            "learner/last_version": float(res.version_id or 0),
            "learner/last_published": float(res.outcome == "published"),
        }
        self._state("idle", 1.0, res.reason, metrics=self.metrics, error=None)
        return res

    # ------------------------------------------------------------------ loops
    def idle_due(self) -> bool:
        """Idle cycles are on, some are left since the last feedback cycle, and a reward model is live."""
        return (self.cfg.idle_cycles > 0 and self.cfg.train_policy
                and float(self.metrics.get("learner/idle_left", 0)) >= 1
                and self.store.live_version(self.profile, "reward") is not None)

    def run_once(self, force: bool = False, cpu_seconds: float | None = None) -> CycleResult:
        """One check: run a cycle when enough new feedback arrived (or `force`), else an idle
        cycle when one is due (LearnerConfig.idle_cycles), else skip. cpu_seconds: what the cycle
        may spend in all (see run_cycle)."""
        self.handle_commands()
        force = force or self.force
        if self.paused and not force:
            self._state("paused", message="paused")
            return CycleResult("skipped", "paused")
        n = self.new_feedback()
        idle = False
        if force and n == 0 and self.store.last_feedback_id(self.profile) > 0:
            pass  # train now: another cycle on the feedback there is
        elif n == 0 or (n < self.cfg.min_new_feedback and not force):
            if not self.idle_due():
                msg = f"waiting for feedback: {n} new of {self.cfg.min_new_feedback} needed"
                self._state("waiting", 0.0, msg, metrics={**self.metrics, "learner/new_feedback": float(n)})
                return CycleResult("skipped", msg)
            idle = True
        self.force = False
        t0 = time.perf_counter()
        try:
            res = self.run_cycle(cpu_seconds, idle=idle)
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

"""Set by LearnerSupervisor: the server's pid. The learner stops when that process is gone."""

def config_dict(cfg: LearnerConfig) -> dict[str, Any]:
    return asdict(cfg)
