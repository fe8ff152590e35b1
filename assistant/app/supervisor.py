"""The learner's process, run beside `inkloop serve`: one `inkloop learn --all-profiles` for every
profile of the data dir, spawned, restarted with back-off, stopped when the server goes, and kept
off the CPU while the app generates (for any profile)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from storage.locks import Hold, LockHeld, learner_lock
from storage.store import Store

log = logging.getLogger(__name__)

PARENT_ENV = "INKLOOP_LEARNER_PARENT"

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
    dies, so a learner crash (or a kill) never takes the UI down. `busy()` wraps the app's
    generation so the learner waits at its next safe point while a person waits for suggestions.
    An exit is recorded (event, learner_state "error") for every profile of the store and
    `profile_id` (the server's)."""

    def __init__(self, argv: list[str], data_dir: str | Path, store: Store | None = None, profile_id: str = "default",
                 min_backoff_s: float = 2.0, max_backoff_s: float = 120.0, log_path: str | Path | None = None):
        self.argv, self.store, self.profile, self.data_dir = argv, store, profile_id, Path(data_dir)
        self.min_backoff_s, self.max_backoff_s = min_backoff_s, max_backoff_s
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.hold = Hold(data_dir)
        """Held while the app generates; the learner waits on it at its safe points."""
        self._spawn_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def learn_argv(data_dir: str | Path, model: str | None, profile: str | None = None,
                   extra: Sequence[str] = ()) -> list[str]:
        """The command line of `inkloop learn` for this interpreter and checkout: for `profile`, or
        (None) for every profile of the data dir."""
        import app

        root = str(Path(app.__file__).resolve().parent)
        argv = [sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r}); import app; sys.exit(app.main())",
                "learn", "--data-dir", str(data_dir), *(["--profile", profile] if profile else ["--all-profiles"])]
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
    def busy(self):
        """The Generator's `busy` hook: while it runs the learner waits at its next safe point
        (storage.locks.Hold; no signal ever stops it inside a database transaction)."""
        return self.hold.holding()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="inkloop-learner-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        backoff = self.min_backoff_s
        while True:
            with self._spawn_lock:  # stop() sets _stop under this lock: it never misses a new child
                if self._stop.is_set():
                    break
                self.proc = self._spawn()
            started = time.monotonic()
            while True:
                try:
                    rc = self.proc.wait(timeout=5.0)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if self._stop.is_set():
                break
            ran = time.monotonic() - started
            backoff = self.min_backoff_s if ran > 300 else min(self.max_backoff_s, backoff * 2 if self.restarts else backoff)
            self.restarts += 1
            msg = f"learner process exited with code {rc} after {ran:.0f} s; restarting in {backoff:.0f} s"
            log.warning(msg)
            if self.store is not None:
                try:
                    for p in dict.fromkeys([*self.store.profiles(), self.profile]):
                        self._record_exit(p, msg, rc)
                except Exception:  # noqa: BLE001 - supervision must go on
                    log.exception("could not record the learner exit")
            self._stop.wait(backoff)

    def _record_exit(self, profile: str, msg: str, rc: int) -> None:
        """The event and the error state of a profile, unless another learner process runs it now."""
        try:
            with learner_lock(self.data_dir, profile):
                self.store.add_event("learner", msg, profile, data={"returncode": rc})
                self.store.set_learner_state(profile, phase="error", message=msg, error=f"exit code {rc}")
        except LockHeld:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        with self._spawn_lock:
            self._stop.set()
            p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self._thread is not None:
            self._thread.join(timeout)
