"""The learner's process, run beside `inkloop serve`: spawned, restarted with back-off, stopped when the server goes, and kept off the CPU while the app generates."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

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

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """The learner is frozen while the block runs (the Generator's `busy` hook); nested use is counted."""
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

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
