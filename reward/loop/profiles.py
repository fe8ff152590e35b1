"""One learner process for every profile of a data directory (`inkloop learn --all-profiles`, what
`inkloop serve` starts): on a 2-core machine one process takes the profiles in turn instead of one
process each.

Each profile keeps its own `Learner` (its reward model, policy versions, learner_state, commands,
pause flag); a turn is that Learner's `run_once` under the profile's learner lock
(storage.locks), so `inkloop learn --profile P` beside it still never double-runs P: a profile
whose lock another process holds is skipped, and said so, not failed. The order is a queued
command first, then the oldest feedback not yet learnt from (feedback ids grow with time): a
profile that just ran a cycle has learnt from all it had, so every other pending profile comes
before its next cycle and no busy profile can starve another.

The base LM and the embedder are loaded once and shared: `make_learner` builds each profile's
Learner on the same `lm_factory` (a fresh copy of the base per RL run and evaluation, so peft
always wraps a clean model) and the same `pause` (the server's Hold, whatever profile the app is
generating for)."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reward.loop.learner import CycleResult, Learner
from storage import artifacts
from storage.locks import LockHeld, learner_lock
from storage.store import Store

log = logging.getLogger(__name__)

RAN = ("published", "discarded", "reward", "error")
"""Outcomes of a turn that ran a cycle (the others: skipped, locked)."""


@dataclass
class Turn:
    """What one profile's turn did."""

    profile: str
    outcome: str
    """A CycleResult outcome, or "locked" (another learner process holds the profile)."""
    reason: str
    result: CycleResult | None = None

    @property
    def ran(self) -> bool:
        return self.outcome in RAN


class ProfileLearners:
    """Runs every profile's learner cycles in one process (see the module docstring).

    make_learner(profile) -> the profile's Learner (built once and kept; rebuilt from the stored
    state after another process ran the profile). poll_s: seconds between passes when no profile
    had anything to do. beat_s: while one profile's cycle runs (a cycle of the real model can take
    many minutes), the other profiles' heartbeats are renewed this often, at its safe points, so
    their status does not look like a learner that died."""

    def __init__(self, store: Store, data_dir: str | Path, make_learner: Callable[[str], Learner],
                 poll_s: float = 5.0, beat_s: float = 60.0):
        self.store, self.data_dir, self.make_learner, self.poll_s = store, Path(data_dir), make_learner, poll_s
        self.beat_s = beat_s
        self._beat = time.monotonic()
        self.learners: dict[str, Learner] = {}
        self.locked: set[str] = set()
        """Profiles skipped at their last turn because another learner process holds them."""
        self.force = False
        """Train now, every profile with feedback, at its next turn (`inkloop learn --train-now`)."""
        self._forced: set[str] = set()
        self._housekept: set[str] = set()
        self._errors: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._stop = threading.Event()

    # ------------------------------------------------------------------ order
    def _last_learnt(self, profile: str) -> int:
        learner = self.learners.get(profile)
        if learner is not None:
            return learner.last_feedback_id
        st = self.store.learner_state(profile) or {}
        return int((st.get("metrics") or {}).get("learner/last_feedback_id", 0))

    def order(self) -> list[str]:
        """The data dir's profiles in the order their turns come: a queued command first, then the
        oldest feedback not yet learnt from, then the rest (in creation order). A profile whose
        cycle failed waits out its back-off unless a command is queued for it."""
        now = time.monotonic()
        keyed = []
        for i, p in enumerate(self.store.profiles()):
            command = bool((self.store.learner_state(p) or {}).get("command"))
            if not command and self._retry_at.get(p, 0.0) > now:
                continue
            first = self.store.feedback(p, since_id=self._last_learnt(p), limit=1)
            keyed.append(((0 if command else 1, first[0].id if first else math.inf, i), p))
        return [p for _, p in sorted(keyed)]

    # ------------------------------------------------------------------ one turn, one pass
    def turn(self, profile: str) -> Turn:
        """The profile's `run_once` under its learner lock; "locked" when another process holds it."""
        lock = learner_lock(self.data_dir, profile)
        try:
            lock.acquire()
        except LockHeld as e:
            self.learners.pop(profile, None)  # that process moves its state on: reread it when P is ours again
            if profile not in self.locked:
                log.warning("skipping profile %r: %s", profile, e)
            self.locked.add(profile)
            return Turn(profile, "locked", f"skipped: {e}")
        try:
            self.locked.discard(profile)
            if profile not in self._housekept:  # what a killed learner of this profile left behind
                artifacts.abandon_candidates(self.store, profile)
                self.store.trim_history(profile)
                self._housekept.add(profile)
            learner = self.learners.get(profile)
            if learner is None:
                learner = self.learners[profile] = self.make_learner(profile)
                inner = learner.pause  # its safe points also keep the other profiles' heartbeats

                def pause(inner=inner, running=profile) -> None:
                    if inner is not None:
                        inner()
                    self._keep_alive(running)

                learner.pause = pause
                if self.force and profile not in self._forced:  # as a train_now command: one cycle
                    learner.force = True
                    self._forced.add(profile)
            res = learner.run_once()
        finally:
            lock.release()
        if res.outcome == "error":
            self._errors[profile] = self._errors.get(profile, 0) + 1
            self._retry_at[profile] = time.monotonic() + self.poll_s * min(2 ** self._errors[profile], 12)
        elif res.outcome != "skipped":
            self._errors.pop(profile, None)
            self._retry_at.pop(profile, None)
        return Turn(profile, res.outcome, res.reason, res)

    def _keep_alive(self, running: str) -> None:
        """Renew the heartbeat of every other profile this process learns for (at most every
        beat_s; one another process holds is left alone)."""
        if time.monotonic() - self._beat < self.beat_s:
            return
        self._beat = time.monotonic()
        for p in [p for p in self.learners if p != running]:
            try:
                with learner_lock(self.data_dir, p):
                    self.store.set_learner_state(p, heartbeat=time.time())
            except LockHeld:
                pass

    def run_pass(self, until_cycle: bool = False) -> list[Turn]:
        """A turn for each profile in `order()`; with `until_cycle`, stop after the first turn that
        ran a cycle (the order is then worked out afresh)."""
        turns = []
        for p in self.order():
            if self._stop.is_set():
                break
            turns.append(self.turn(p))
            if until_cycle and turns[-1].ran:
                break
        return turns

    # ------------------------------------------------------------------ the loop
    def stop(self) -> None:
        self._stop.set()

    def run_forever(self) -> None:
        """Passes until stop(): straight on after a cycle, else after poll_s (sooner when a command
        is queued for some profile)."""
        while not self._stop.is_set():
            if any(t.ran for t in self.run_pass(until_cycle=True)):
                continue
            end = time.monotonic() + self.poll_s
            while not self._stop.is_set() and time.monotonic() < end:
                if any((self.store.learner_state(p) or {}).get("command") for p in self.store.profiles()):
                    break
                self._stop.wait(min(1.0, max(0.05, end - time.monotonic())))
        for p in list(self.learners):
            lock = learner_lock(self.data_dir, p)
            try:
                with lock:
                    self.store.set_learner_state(p, phase="stopped", progress=0.0, message="learner stopped",
                                                 heartbeat=time.time())
            except LockHeld:
                pass  # another learner runs it now: its state is that one's
