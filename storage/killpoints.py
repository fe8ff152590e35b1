"""Named points where the kill campaign (benchmarks/kills.py) can `kill -9` this process.

`kill_point("prune.policy.marked")` does nothing unless the environment variable INKLOOP_KILL_AT
names that point; then the process sends itself SIGKILL on the spot, exactly as `kill -9` from
outside would, so a test can land inside a window (between a rename and its row, between marking
a version and deleting its files) that a random delay almost never hits. Unset, it is one
environment lookup.
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "INKLOOP_KILL_AT"


def kill_point(name: str) -> None:
    """SIGKILL this process here when INKLOOP_KILL_AT equals `name` (a campaign's test hook)."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
