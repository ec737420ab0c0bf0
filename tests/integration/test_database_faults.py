"""Database faults: PostgreSQL connections cut in the middle of a run, SQLite locked by
another process. The ledger reconnects or waits within its bound; what fails, fails with a
clear error and was not acknowledged; nothing acknowledged is lost; nothing is doubled."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ledger import recorders
from ledger.application import OrderLedger, open_ledger
from ledger.checkpoints import check_integrity
from ledger.commands import CancelOrder, ModifyOrder, RecordModified
from ledger.persistence import StorageUnavailable
from tests.conftest import postgres_admin_url
from tests.scale import report, scaled
from tests.support import FakeClock, accepted, fill, submit_command


def _retry_until_acknowledged(call: Callable[[], Any], failures: list[str]) -> Any:
    """What a strategy does with StorageUnavailable: send the same command again."""
    for _ in range(50):
        try:
            return call()
        except StorageUnavailable as error:
            failures.append(str(error))
            time.sleep(0.05)
    raise AssertionError(f"the database never came back: {sorted(set(failures))[:5]}")


def _drive(
    ledger: OrderLedger,
    orders: int,
    tag: str,
    failures: list[str],
    until: Callable[[], bool] = lambda: True,
) -> list[str]:
    acknowledged: list[str] = []
    n = -1
    while len(acknowledged) < orders or not until():
        n += 1
        command = submit_command(client_order_id=f"{tag}-{n}", quantity=100)
        order = _retry_until_acknowledged(partial(ledger.submit, command), failures)
        acknowledged.append(f"{tag}-{n}")
        for update in (
            accepted(order, f"B-{tag}-{n}"),
            fill(order, f"T-{tag}-{n}-a", 40),
            fill(order, f"T-{tag}-{n}-b", 60),
        ):
            _retry_until_acknowledged(partial(ledger.record, update), failures)
    return acknowledged


@pytest.mark.postgres
def test_connections_cut_mid_run_lose_nothing_and_double_nothing(
    postgres_database: str, postgres_url: str
) -> None:
    url = postgres_url
    ledger = open_ledger(url, clock=FakeClock())
    stop = threading.Event()
    cuts: list[int] = []
    dbname = postgres_database.rsplit("/", 1)[1]

    def cut_connections() -> None:
        with psycopg.connect(postgres_admin_url(), autocommit=True) as admin:
            while not stop.is_set():
                rows = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (dbname,),
                ).fetchall()
                killed = sum(1 for (done,) in rows if done)
                if killed:
                    cuts.append(killed)
                stop.wait(random.uniform(0.5, 1.0))  # an outage, then a while without

    cutter = threading.Thread(target=cut_connections)
    cutter.start()
    failures: list[str] = []
    try:
        acknowledged = _drive(
            ledger, scaled(60, 1000), "cut", failures, until=lambda: len(cuts) >= scaled(8, 60)
        )
    finally:
        stop.set()
        cutter.join()
    try:
        assert len(cuts) >= scaled(8, 60), cuts  # the run really was cut, repeatedly
        for message in failures:
            assert "was not acknowledged and may be sent again" in message
        orders = {o.client_order_id: o for o in ledger.all_orders()}
        assert sorted(orders) == sorted(acknowledged)
        for order in orders.values():
            assert order.version == 4  # each command once, however often it was retried
            assert order.trade_ids == {
                f"T-{order.client_order_id}-a",
                f"T-{order.client_order_id}-b",
            }
            assert order.filled_quantity == 100
        integrity = check_integrity(ledger)
        assert integrity.ok, integrity.findings
        assert integrity.chains.chained == 4 * len(acknowledged)
        report(
            "database_faults",
            backend="postgres",
            outages=len(cuts),
            connections_cut=sum(cuts),
            commands=4 * len(acknowledged),
            errors_reported=len(failures),
            events_checked=integrity.chains.events,
        )
    finally:
        ledger.close()


_HOLD_LOCK = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
    """
)


def _lock_from_another_process(path: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_sqlite_locked_briefly_by_another_process_waits_and_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(path, clock=FakeClock(), lock_timeout=5)
    order = ledger.submit(submit_command())
    holder = _lock_from_another_process(path, 0.5)
    started = time.monotonic()
    ledger.record(accepted(order))  # waits for the other process, then writes
    waited = time.monotonic() - started
    holder.wait(10)
    assert waited >= 0.3
    assert ledger.get_order(order.id).version == 2
    ledger.close()


def test_sqlite_locked_past_the_bound_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(path, clock=FakeClock(), lock_timeout=1)
    order = ledger.submit(submit_command())
    holder = _lock_from_another_process(path, 4)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as raised:
        ledger.record(accepted(order))
    waited = time.monotonic() - started
    assert 0.9 <= waited < 3.5  # the bound, not forever
    message = str(raised.value)
    assert message.startswith(f"writing: the database at {path} is unavailable (")
    assert "database is locked" in message
    assert message.endswith("the command was not acknowledged and may be sent again")
    holder.wait(10)
    assert ledger.count_events() == 1
    again = ledger.record(accepted(order))  # sent again once the lock is gone
    assert again.version == 2
    assert ledger.count_events() == 2
    ledger.close()


@pytest.mark.postgres
def test_the_projection_runner_resumes_after_its_connections_are_cut(
    postgres_database: str, postgres_url: str
) -> None:
    from projections import all_projections
    from projections.runner import LedgerLog, ProjectionRunner
    from projections.store import store_for_ledger_url
    from projections.verify import verify

    url = postgres_url
    ledger = open_ledger(url, clock=FakeClock())
    store = store_for_ledger_url(ledger.storage)
    runner = ProjectionRunner(LedgerLog(ledger), store, all_projections(), batch_size=50)
    stop, done = threading.Event(), threading.Event()
    crashed: list[BaseException] = []
    cuts: list[int] = []
    dbname = postgres_database.rsplit("/", 1)[1]

    def follow() -> None:
        try:
            runner.run_forever(stop, poll_interval=0.02)
        except BaseException as error:  # reported below: the runner must not die
            crashed.append(error)

    def cut_connections() -> None:
        with psycopg.connect(postgres_admin_url(), autocommit=True) as admin:
            while not done.is_set():
                rows = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (dbname,),
                ).fetchall()
                if any(killed for (killed,) in rows):
                    cuts.append(len(rows))
                done.wait(random.uniform(0.3, 0.6))

    follower, cutter = threading.Thread(target=follow), threading.Thread(target=cut_connections)
    follower.start()
    cutter.start()
    failures: list[str] = []
    try:
        _drive(ledger, scaled(40, 400), "proj", failures, until=lambda: len(cuts) >= scaled(5, 30))
    finally:
        done.set()
        cutter.join()
    try:
        deadline = time.monotonic() + 30
        while runner.position < LedgerLog(ledger).last_position() and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        follower.join(30)
        assert crashed == []
        assert runner.position == LedgerLog(ledger).last_position()
        checked = verify(ledger, store, all_projections())
        assert checked.ok, checked.problems
        report("database_faults", backend="postgres", suite_part="runner", outages=len(cuts))
    finally:
        stop.set()
        store.close()
        ledger.close()


@pytest.mark.postgres
def test_a_commit_whose_reply_is_lost_is_not_written_twice(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server commits, then the connection drops before its reply arrives. The retry
    conflicts with the rows the first try wrote; they hold the very bytes sent, so the
    append succeeded. Decided again instead, a cancel or modify request (which may be
    repeated) was written a second time."""
    ledger = open_ledger(postgres_url, clock=FakeClock())
    order = ledger.submit(submit_command(client_order_id="lost-reply", quantity=10))
    ledger.record(accepted(order, "B-lost"))
    real = recorders._exec_message
    lose = {"replies": 0}

    def lossy(conn: Any, query: bytes) -> Any:
        results = real(conn, query)  # committed on the server
        if lose["replies"]:
            lose["replies"] -= 1
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return results

    monkeypatch.setattr(recorders, "_exec_message", lossy)
    lose["replies"] = 1
    ledger.record(fill(order, "T-lost", 4))
    lose["replies"] = 1
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("812.40")))
    lose["replies"] = 1
    ledger.record(RecordModified(order_id=order.id, price=Decimal("812.40")))
    lose["replies"] = 1
    ledger.request_cancel(CancelOrder(order_id=order.id, reason="flatten"))
    monkeypatch.undo()
    kinds = [type(e).__name__ for e in ledger.history(order.id)]
    assert kinds == [
        "Submitted",
        "Accepted",
        "Filled",
        "ModifyRequested",
        "Modified",
        "CancelRequested",
    ]
    ledger.close()
