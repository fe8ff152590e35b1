"""One learner per profile (an exclusive ``flock`` on a file under the data directory), and the
server's hold on the learners while it generates (`Hold`).

The kernel holds the lock for the open file, so it is released when the holder exits, however it
exits (kill -9 included): there is never a stale lock to clean up. The file records the holder's
pid for the error message only; the lock itself is the flock, not the file's existence.
POSIX only (fcntl), as is the rest of inkloop's process control.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Iterator

from .paths import profile_dirname

LOCKS_DIR = "locks"


class LockHeld(RuntimeError):
    """Another process holds the lock (the message says which pid and what to do)."""


class ProfileLock:
    """An exclusive, non-blocking lock named `name` for one profile. Use as a context manager, or
    acquire() / release(); acquire() raises LockHeld at once when another process holds it."""

    def __init__(self, data_dir: str | Path, profile_id: str, name: str = "learner"):
        self.profile_id, self.name = profile_id, name
        self.path = Path(data_dir) / LOCKS_DIR / f"{name}-{profile_dirname(profile_id)}.lock"
        self._fd: int | None = None

    def acquire(self) -> "ProfileLock":
        if self._fd is not None:
            raise RuntimeError(f"{self.name} lock of profile {self.profile_id!r} is already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise LockHeld(
                f"another {self.name} (pid {holder}) is already running for profile {self.profile_id!r}; "
                f"stop it first (or pause it with `inkloop learner pause`) — one {self.name} per profile"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "ProfileLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def learner_lock(data_dir: str | Path, profile_id: str) -> ProfileLock:
    """The lock a learner of `profile_id` holds for as long as it runs (acquire it at start)."""
    return ProfileLock(data_dir, profile_id, "learner")


class Hold:
    """The server holds the learners off the CPU while a person waits for suggestions.

    One hold per data directory, whatever profile the app is generating for: every learner of the
    data dir (the all-profiles one `inkloop serve` starts, or `inkloop learn --profile P`) waits on
    it. Server side, `with hold.holding():` around each generation takes an exclusive flock on
    <data>/locks/hold.lock (nested and concurrent uses in one process share it). Learner
    side, `hold.wait()` at its safe points (each decode step of its sampling, between RL updates —
    never inside a database transaction) returns at once when the lock is free and otherwise
    waits until it is, at most `max_wait_s` per call. The kernel releases the lock with its holder,
    so a killed server never leaves the learner waiting. This replaces freezing the learner with
    SIGSTOP, which could land inside a write transaction and stall every other writer."""

    def __init__(self, data_dir: str | Path, max_wait_s: float = 20.0):
        self.path = Path(data_dir) / LOCKS_DIR / "hold.lock"
        self.max_wait_s = max_wait_s
        self._mutex = threading.Lock()
        self._depth = 0
        self._fd: int | None = None  # the holder's descriptor while held
        self._wait_fd: int | None = None  # the waiter's, opened once

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        with self._mutex:
            self._depth += 1
            if self._depth == 1:
                fd = self._open()
                fcntl.flock(fd, fcntl.LOCK_EX)  # only servers take it: never contended for long
                self._fd = fd
        try:
            yield
        finally:
            with self._mutex:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fd, self._fd = self._fd, None
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)

    def wait(self) -> float:
        """Block while the lock is held (at most max_wait_s); the seconds waited."""
        if self._wait_fd is None:
            self._wait_fd = self._open()
        t0 = time.monotonic()
        while True:
            try:
                fcntl.flock(self._wait_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(self._wait_fd, fcntl.LOCK_UN)
                break
            except BlockingIOError:
                if time.monotonic() - t0 >= self.max_wait_s:
                    break
                time.sleep(0.01)
        return time.monotonic() - t0
