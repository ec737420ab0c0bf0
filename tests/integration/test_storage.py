"""Storage properties: WAL and durable commits on SQLite; an own schema on PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg

from ledger.application import open_ledger
from tests.support import submit_command


def test_sqlite_uses_wal_and_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with open_ledger(path) as ledger:
        ledger.submit(submit_command())
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # 2 = FULL: in WAL mode each commit is synced before it returns.
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert conn.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0] == 1
    finally:
        conn.close()


def test_postgres_tables_live_in_their_own_schema(postgres_database: str) -> None:
    url = f"{postgres_database}?schema=desk_one"
    with open_ledger(url) as ledger:
        ledger.submit(submit_command())
        assert ledger.recorder.datastore.schema == "desk_one"  # type: ignore[attr-defined]
    with psycopg.connect(postgres_database) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_name LIKE 'orders%'"
        ).fetchall()
    assert rows
    assert {schema for schema, _ in rows} == {"desk_one"}


def test_postgres_keeps_the_table_lock(postgres_database: str) -> None:
    """The insert path must take the table lock (log order = commit order)."""
    with open_ledger(f"{postgres_database}?schema=lockcheck") as ledger:
        recorder = ledger.recorder
        assert recorder.datastore.enable_db_functions is False  # type: ignore[attr-defined]
        statement = recorder.lock_table_statements  # type: ignore[attr-defined]
        assert any("EXCLUSIVE MODE" in s.as_string(None) for s in statement)
