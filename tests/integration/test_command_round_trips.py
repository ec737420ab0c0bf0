"""What one command costs the database, counted (never timed): the guard for the command
path's levers. A command decides on the state it saved last (no read), and its append is
one transaction: on SQLite BEGIN, one INSERT per event, COMMIT; on PostgreSQL one message
(one execute) holding BEGIN, the table lock, NOTIFY, the INSERT and COMMIT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.sqlite import SQLiteConnectionPool

from ledger import recorders
from ledger.application import OrderLedger, open_ledger
from tests.support import accepted, fill, submit_command

ORDERS = 5
COMMANDS_PER_ORDER = 4  # submit, accept, two fills: one event each


def drive(ledger: OrderLedger) -> None:
    for i in range(ORDERS):
        order = ledger.submit(submit_command(client_order_id=f"rt-{i}", quantity=10))
        ledger.record(accepted(order, f"B-{i}"))
        ledger.record(fill(order, f"T-{i}-1", 4))
        ledger.record(fill(order, f"T-{i}-2", 6))


@pytest.fixture
def sqlite_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement SQLite runs on the ledger's connections (its trace callback)."""
    statements: list[str] = []
    create = SQLiteConnectionPool._create_connection

    def traced(pool: SQLiteConnectionPool) -> Any:
        connection = create(pool)
        connection._sqlite_conn.set_trace_callback(statements.append)
        return connection

    def traced_appender(*args: Any) -> Any:
        conn = make_appender(*args)
        conn.set_trace_callback(statements.append)
        return conn

    make_appender = recorders._appending_connection
    monkeypatch.setattr(SQLiteConnectionPool, "_create_connection", traced)
    monkeypatch.setattr(recorders, "_appending_connection", traced_appender)
    return statements


def test_a_sqlite_command_is_one_transaction_with_no_read(
    tmp_path: Path, sqlite_statements: list[str]
) -> None:
    ledger = open_ledger(tmp_path / "ledger.db")
    try:
        ledger.submit(submit_command(client_order_id="warm-up"))
        sqlite_statements.clear()
        recorder = ledger.recorder
        assert isinstance(recorder, recorders.LeanSQLiteRecorder)
        pool = recorder.datastore.pool
        taken = 0
        take = pool.get_connection

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal taken
            taken += 1
            return take(*args, **kwargs)

        pool.get_connection = counted  # type: ignore[method-assign]
        drive(ledger)
    finally:
        ledger.close()
    assert taken == 0, "a command appends on the recorder's own connection, not the pool's"
    commands = ORDERS * COMMANDS_PER_ORDER
    kinds = [statement.split()[0].upper() for statement in sqlite_statements]
    assert kinds.count("BEGIN") == commands, sqlite_statements
    assert kinds.count("INSERT") == commands
    assert kinds.count("COMMIT") == commands
    assert "SELECT" not in kinds  # decided on the remembered state, nothing loaded
    assert len(kinds) == 3 * commands  # nothing else: no pragma, no re-check per command


def test_a_postgres_command_is_one_message(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each command sends one message (`_exec_message`, straight to libpq) and nothing
    through psycopg's cursors, which every other statement (`conn.execute` included) goes
    through."""
    ledger = open_ledger(postgres_url)
    sent: list[str] = []
    others: list[str] = []
    execute = psycopg.Cursor.execute
    exec_message = recorders._exec_message

    def counted_message(conn: Any, query: bytes) -> Any:
        sent.append(query.decode())
        return exec_message(conn, query)

    def counted(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        others.append(query.decode() if isinstance(query, bytes) else str(query))
        return execute(cursor, query, *args, **kwargs)

    try:
        ledger.submit(submit_command(client_order_id="warm-up"))
        monkeypatch.setattr(recorders, "_exec_message", counted_message)
        monkeypatch.setattr(psycopg.Cursor, "execute", counted)
        drive(ledger)
    finally:
        monkeypatch.undo()
        ledger.close()
    commands = ORDERS * COMMANDS_PER_ORDER
    assert len(sent) == commands, sent[:3]
    assert others == []
    for message in sent:
        assert message.startswith("BEGIN;")
        assert "LOCK TABLE" in message
        assert "INSERT INTO" in message
        assert message.rstrip().endswith("COMMIT")


def test_sqlite_appends_make_no_cursor_for_the_collector_to_free(tmp_path: Path) -> None:
    """Every append goes through one cursor kept with the appending connection. A cursor
    made per append and caught in a conflict's reference cycle was freed later by the
    cyclic collector in whatever thread ran it, which takes that connection's mutex: held
    by SQLite while the connection waits for the write lock, so a thread holding the lock
    waited on it until the lock timeout (four ledgers on one file, under load)."""
    import gc
    import sqlite3

    first, second = (open_ledger(tmp_path / "ledger.db") for _ in range(2))
    order = first.submit(submit_command(quantity=100))
    first.record(accepted(order))
    second.get_order(order.id)  # remembered by both: each of them will decide on it

    def cursors() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, sqlite3.Cursor))

    enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # garbage in cycles stays until collected: count what the appends leave
    try:
        before = cursors()
        for n in range(10):  # each lands on a state the other ledger made stale: a conflict
            (first if n % 2 else second).record(fill(order, f"T{n}", 1))
        left = cursors() - before
    finally:
        if enabled:
            gc.enable()
    first.close()
    second.close()
    assert left <= 1, f"{left} cursors left behind by 10 appends"
