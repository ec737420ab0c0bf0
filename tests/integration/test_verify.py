"""`verify` finds a stored snapshot that disagrees with the events (SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
from psycopg import sql

from ledger.application import OrderLedger
from projections import all_projections
from projections.runner import LedgerLog, ProjectionRunner
from projections.store import store_for_ledger_url
from projections.verify import verify
from tests.support import accepted, fill, submit_command


def _rewrite_snapshot(ledger: OrderLedger, database_url: str, change: Any) -> None:
    assert ledger.storage is not None
    if ledger.storage.backend == "sqlite":
        lite = sqlite3.connect(database_url)
        (state,) = lite.execute("SELECT state FROM stored_snapshots").fetchone()
        lite.execute("UPDATE stored_snapshots SET state = ?", (change(bytes(state)),))
        lite.commit()
        lite.close()
        return
    base, _, query = database_url.partition("?schema=")
    table = sql.Identifier(query, "orders_snapshots")
    with psycopg.connect(base, autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT state FROM {}").format(table)).fetchone()
        assert row is not None
        conn.execute(sql.SQL("UPDATE {} SET state = %s").format(table), (change(bytes(row[0])),))


def test_verify_checks_snapshots_and_projections(ledger: OrderLedger, database_url: str) -> None:
    order = ledger.submit(submit_command(quantity=500))
    ledger.record(accepted(order))
    for n in range(110):
        ledger.record(fill(order, f"T{n}", 1))
    store = store_for_ledger_url(ledger.storage)
    try:
        ProjectionRunner(LedgerLog(ledger), store, all_projections()).catch_up()
        clean = verify(ledger, store, all_projections())
        assert clean.ok, clean.problems
        assert (clean.orders, clean.events, clean.projections) == (1, 112, 5)
        _rewrite_snapshot(ledger, database_url, lambda s: s.replace(b"812.35", b"812.40", 1))
        tampered = verify(ledger, store, all_projections())
        assert tampered.problems == [
            f"order {order.id}: snapshot at version 100 differs from its events"
        ]
    finally:
        store.close()
