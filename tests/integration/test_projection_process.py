"""`serve`'s projection runner in a process of its own: it keeps every projection current,
is started again when it dies (and resumes exactly where its store stands), stops when
told, and stops by itself when its parent is gone. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable

import psycopg

from ledger.application import OrderLedger
from ledger.demo import run_session
from ledger.projection_process import ProjectionProcess
from projections import all_projections
from projections.runner import LedgerLog
from projections.store import store_for_ledger_url
from tests.support import log_events

DEADLINE = 90.0


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _projected(ledger: OrderLedger, database_url: str) -> Callable[[], bool]:
    """True once every projection's stored position is the log's last position."""

    def check() -> bool:
        last = LedgerLog(ledger).last_position()
        store = store_for_ledger_url(database_url)
        try:
            return all(store.position(p) == last for p in all_projections())
        except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):
            return False  # the child has not made its tables yet
        finally:
            store.close()

    return check


def _equal_to_a_clean_fold(ledger: OrderLedger, database_url: str) -> None:
    everything = log_events(ledger)
    store = store_for_ledger_url(database_url)
    try:
        for projection in all_projections():
            assert store.load_view(projection).contents() == projection.fold(everything).contents()
    finally:
        store.close()


def test_keeps_projections_current_restarts_after_a_kill_and_stops(
    ledger: OrderLedger, database_url: str
) -> None:
    run_session(ledger)
    child = ProjectionProcess(database_url).start()
    try:
        _until(_projected(ledger, database_url), "the first catch-up")
        first = child.pid
        assert first is not None

        os.kill(first, signal.SIGKILL)  # no cleanup: whatever was in hand is rolled back
        _until(lambda: child.restarts == 1 and child.pid not in (None, first), "a restart")
        run_session(ledger)
        _until(_projected(ledger, database_url), "the restarted child to follow the log")
    finally:
        code = child.stop()
    assert code == 0  # told to stop while following: a clean exit
    assert child.pid is None
    _equal_to_a_clean_fold(ledger, database_url)


def test_the_child_stops_when_its_parent_is_gone(ledger: OrderLedger, database_url: str) -> None:
    """A gateway killed outright leaves no runner behind: the child sees its parent go."""
    run_session(ledger)
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from ledger.projection_process import ProjectionProcess\n"
            "child = ProjectionProcess(sys.argv[1]).start()\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(600)\n",
            database_url,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    _until(_projected(ledger, database_url), "the child's catch-up")
    parent.kill()
    parent.wait(timeout=30)
    _until(_gone(child_pid), "the orphaned child to exit")


def test_the_child_stops_when_its_parent_dies_while_it_is_starting(
    ledger: OrderLedger, database_url: str
) -> None:
    """The parent dies before the child has even imported its code: the child must not
    take init for its parent and run on."""
    run_session(ledger)
    parent = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys\n"
            "from ledger.projection_process import ProjectionProcess\n"
            "print(ProjectionProcess(sys.argv[1]).start().pid, flush=True)\n"
            "os._exit(0)\n",
            database_url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    _until(_gone(int(parent.stdout)), "the orphaned child to exit")


def _gone(pid: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # An exited child of a dead parent is reaped by init; until then it is a zombie.
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1].startswith("Z")

    return check
