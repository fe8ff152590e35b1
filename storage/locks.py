"""One learner per profile: an exclusive ``flock`` on a file under the data directory.

The kernel holds the lock for the open file, so it is released when the holder exits, however it
exits (kill -9 included): there is never a stale lock to clean up. The file records the holder's
pid for the error message only; the lock itself is the flock, not the file's existence.
POSIX only (fcntl), as is the rest of inkloop's process control.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

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
