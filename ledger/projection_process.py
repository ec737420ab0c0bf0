"""The projection runner in a process of its own, beside the gateway.

A catch-up folds tens of thousands of events a second in Python; in the gateway's own
process it holds the GIL the postback handler, the dispatcher and the poller need, and
every command they record waits for it. Measured on a log of 200,650 events, one writer
recording commands while the projections caught up: in the same process the commands
took 2.7 ms on average with a p99 of 26.7 ms; with the runner in a child process, 0.37 ms
and 2.6 ms (0.35 ms and 0.49 ms with no catch-up at all).

The child is `kite-ledger project --follow`: it opens the same ledger (passed to it in
its environment, never on its command line, where a password in a URL would show in
`ps`), and exits when told or when its parent is gone. If it dies, it is started again
after a pause that grows with each failure in a row; the runner resumes from the
positions its store holds, so nothing is folded twice.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

#: Pauses before starting a failed child again: 1 s, 2 s, 4 s ... at most 30 s; a child
#: that ran for a minute before it failed starts the count again.
_FIRST_PAUSE = 1.0
_LONGEST_PAUSE = 30.0
_RAN_WELL = 60.0


def projection_command() -> list[str]:
    """The child's command line: the runner following the log until this process goes."""
    return [sys.executable, "-m", "ledger", "project", "--follow", "--parent-pid", str(os.getpid())]


class ProjectionProcess:
    """Runs `projection_command()` on the ledger at `db` (None: the one the environment or
    the working directory names) as a child process, starts it again whenever it exits
    without being told to, and stops it with `stop()`."""

    def __init__(self, db: str | None = None, *, stop_timeout: float = 30.0) -> None:
        self._command = projection_command()
        self._env = dict(os.environ)
        if db is not None:
            self._env["LEDGER_DATABASE_URL"] = db
        self._stop_timeout = stop_timeout
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._supervisor: threading.Thread | None = None
        #: How many times the child was started again after it exited on its own.
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before `start` and after `stop`)."""
        with self._lock:
            child = self._child
        return child.pid if child is not None and child.poll() is None else None

    def start(self) -> ProjectionProcess:
        """Start the child and the thread that watches it."""
        if self._supervisor is not None:
            raise RuntimeError("the projection process is already started")
        self._spawn()
        self._supervisor = threading.Thread(
            target=self._supervise, name="projection-process", daemon=True
        )
        self._supervisor.start()
        return self

    def stop(self) -> int | None:
        """Ask the child to stop (SIGINT: the batch in hand is rolled back with its
        positions), kill it if it has not stopped within the timeout, and return its exit
        code."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
        with self._lock:
            child, self._child = self._child, None
        if child is None:
            return None
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(self._stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("projection process %d did not stop; killing it", child.pid)
                child.kill()
                child.wait()
        return child.returncode

    def __enter__(self) -> ProjectionProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self) -> None:
        child = subprocess.Popen(self._command, env=self._env, stdin=subprocess.DEVNULL)
        with self._lock:
            self._child = child
            self._started_at = time.monotonic()

    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            with self._lock:
                child = self._child
            if child is None:
                return
            try:
                code = child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
            # Ctrl-C at a terminal reaches the child and this process together: give
            # `stop()` a moment before taking the exit for a failure.
            if self._stopping.wait(0.5):
                return
            if time.monotonic() - self._started_at > _RAN_WELL:
                failures = 0
            failures += 1
            pause = min(_FIRST_PAUSE * 2 ** (failures - 1), _LONGEST_PAUSE)
            log.warning(
                "projection process exited with %s; starting it again in %.0f s", code, pause
            )
            if self._stopping.wait(pause):
                return
            try:
                self._spawn()
            except OSError as error:  # counted as one more failure on the next turn
                log.error("could not start the projection process: %s", error)
                continue
            self.restarts += 1


def interrupt_when_parent_exits(parent: int, poll_interval: float = 0.5) -> threading.Thread:
    """In the child: raise KeyboardInterrupt in the main thread (the same as Ctrl-C) as
    soon as `parent`, the process that started this one, is gone, so that a gateway
    killed without a chance to stop its runner does not leave one folding on its own.

    `parent` is passed in, not read here: a parent that died while this process was
    still starting has already been replaced (by init) when this runs. The interrupt is
    raised again at every poll until the process has stopped, in case one is caught."""
    import _thread

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_interval)
        log.warning("parent process %d is gone; stopping", parent)
        while True:
            _thread.interrupt_main()
            time.sleep(poll_interval)

    watcher = threading.Thread(target=watch, name="parent-watch", daemon=True)
    watcher.start()
    return watcher
