"""Bounds on what one request may cost: the generation queue, its time limit, body size, exports.

`GenerationGate` sits in front of the generator: at most one suggestion generates at a time and at
most `ServeLimits.max_waiting` wait behind it; any more are refused at once (`Busy`, answered 429
with Retry-After) instead of piling up threads. Each admitted request holds a `Ticket`: its place
in the gate, a cancel flag (the client left) and a deadline started when it begins generating
(`ServeLimits.generation_seconds`); the generator polls `ticket.should_stop` after every token.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Iterator


@dataclass
class ServeLimits:
    """What one request may cost the server (`inkloop serve`)."""

    max_body_bytes: int = 1_000_000
    """Request bodies larger than this are refused with 413, counted as they arrive (chunked too)."""
    max_waiting: int = 4
    """Suggestion requests that may wait behind the one generating; more are answered 429."""
    generation_seconds: float = 60.0
    """Wall-time limit of one suggestion's generation: then it stops and returns what it has."""
    retry_after_seconds: int = 5
    """The Retry-After a refused (429) suggestion or export is told."""
    keep_exports: int = 5
    """Exports kept in <data_dir>/exports (older ones, and leftover temporary zips, are removed)."""


class Busy(RuntimeError):
    """The generation queue (or the export slot) is full: try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 5, status: int = 429):
        super().__init__(message)
        self.retry_after, self.status = retry_after, status


class Cancelled(RuntimeError):
    """The request was cancelled (its client left) before it could generate."""


class Ticket:
    """One admitted suggestion request: its cancel flag and deadline, released exactly once."""

    def __init__(self, gate: "GenerationGate", seconds: float | None):
        self._gate, self.seconds = gate, seconds
        self._cancel = threading.Event()
        self.deadline: float | None = None
        self._released = False

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def timed_out(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def should_stop(self) -> bool:
        """True once the request was cancelled or its generation ran past its time limit."""
        return self.cancelled or self.timed_out

    @contextlib.contextmanager
    def generating(self) -> Iterator["Ticket"]:
        """Wait for the generator (polling the cancel flag), then start the clock."""
        while not self._gate._run.acquire(timeout=0.1):
            if self.cancelled:
                raise Cancelled("the request was cancelled while waiting")
        try:
            if self.cancelled:
                raise Cancelled("the request was cancelled while waiting")
            if self.seconds is not None:
                self.deadline = time.monotonic() + float(self.seconds)
            yield self
        finally:
            self._gate._run.release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate._leave()


class GenerationGate:
    """1 running + `max_waiting` waiting suggestion requests; `admit` refuses the rest at once."""

    def __init__(self, limits: ServeLimits | None = None):
        self.limits = limits or ServeLimits()
        self._lock = threading.Lock()
        self._run = threading.Lock()
        self.admitted = 0
        self.refused = 0

    @property
    def capacity(self) -> int:
        return 1 + max(0, int(self.limits.max_waiting))

    def admit(self) -> Ticket:
        with self._lock:
            if self.admitted >= self.capacity:
                self.refused += 1
                raise Busy(
                    f"the model is busy ({self.admitted} suggestion requests running or waiting); "
                    f"try again in {self.limits.retry_after_seconds} s",
                    self.limits.retry_after_seconds,
                )
            self.admitted += 1
        return Ticket(self, self.limits.generation_seconds)

    def _leave(self) -> None:
        with self._lock:
            self.admitted -= 1
