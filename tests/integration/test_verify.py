"""`verify` finds a stored snapshot that disagrees with the events (SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ledger.application import OrderLedger
from projections import all_projections
from projections import verify as verify_module
from projections.runner import LedgerLog, ProjectionRunner
from projections.store import ProjectionStore, store_for_ledger_url, table_name
from projections.verify import Lag, verify
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


def _caught_up(ledger: OrderLedger) -> ProjectionStore:
    for n in range(3):
        order = ledger.submit(submit_command(client_order_id=f"v{n}", quantity=100))
        ledger.record(accepted(order, f"B{n}"))
        ledger.record(fill(order, f"T{n}", 40))
    store = store_for_ledger_url(ledger.storage)
    ProjectionRunner(LedgerLog(ledger), store, all_projections()).catch_up()
    return store


def test_verify_names_projection_rows_that_differ_are_missing_or_unexpected(
    ledger: OrderLedger,
) -> None:
    store = _caught_up(ledger)
    reports = next(p for p in all_projections() if p.name == "reports")
    orders_table, fills_table = reports.tables[0], reports.tables[1]
    assert (orders_table.name, fills_table.name) == ("execution_reports", "execution_fills")
    view = store.load_view(reports)
    changed = sorted(view.rows("execution_reports"), key=lambda r: r.order_id)[0].order_id
    gone, copied = sorted(view.rows("execution_fills"), key=lambda r: r.order_id)[1:3]
    mark = store.placeholder
    fills = table_name(reports, fills_table)
    forged = ", ".join("'forged'" if c == "trade_id" else c for c in fills_table.columns)
    try:
        with store.transaction() as cur:
            cur.execute(
                f"UPDATE {table_name(reports, orders_table)} SET filled_quantity = 41"
                f" WHERE order_id = {mark}",
                (changed,),
            )
            cur.execute(
                f"DELETE FROM {fills} WHERE order_id = {mark} AND trade_id = {mark}",
                (gone.order_id, gone.trade_id),
            )
            cur.execute(
                f"INSERT INTO {fills} ({', '.join(fills_table.columns)}) SELECT {forged}"
                f" FROM {fills} WHERE order_id = {mark} AND trade_id = {mark}",
                (copied.order_id, copied.trade_id),
            )
        report = verify(ledger, store, all_projections())
    finally:
        store.close()
    where = f"projection reports v{reports.version}"
    assert sorted(report.problems) == sorted(
        [
            f"{where}: execution_reports ('{changed}',): differs",
            f"{where}: execution_fills ('{gone.order_id}', '{gone.trade_id}'): missing",
            f"{where}: execution_fills ('{copied.order_id}', 'forged'): unexpected",
        ]
    ), report.problems


def test_verify_says_how_far_a_stored_projection_lags_the_log(ledger: OrderLedger) -> None:
    """A store no runner has caught up since the last commands equals the log only up to
    its position: verify compares it there (no difference) and lists it as behind, with
    its position, the log's and the order events between, instead of counting it as
    equal to the log."""
    store = _caught_up(ledger)
    folded = LedgerLog(ledger).last_position()
    order = ledger.submit(submit_command(client_order_id="later", quantity=100))
    ledger.record(accepted(order, "B-later"))
    ledger.record(fill(order, "T-later", 100))
    last = LedgerLog(ledger).last_position()
    try:
        report = verify(ledger, store, all_projections())
        assert report.ok, report.problems
        assert report.projections == 5
        assert report.current == 0
        assert report.behind == [Lag(p.name, p.version, folded, last, 3) for p in all_projections()]
        ProjectionRunner(LedgerLog(ledger), store, all_projections()).catch_up()
        caught_up = verify(ledger, store, all_projections())
    finally:
        store.close()
    assert (caught_up.ok, caught_up.behind, caught_up.current) == (True, [], 5)


def test_verify_reads_the_store_in_one_snapshot_while_its_runner_goes_on(
    ledger: OrderLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve`'s runner commits while `verify` folds: the stored rows are compared as of
    the positions read with them, so the new batch is no difference."""
    store = _caught_up(ledger)
    order = ledger.submit(submit_command(client_order_id="late", quantity=100))
    ledger.record(accepted(order, "B-late"))
    live = store_for_ledger_url(ledger.storage)
    runner = ProjectionRunner(LedgerLog(ledger), live, all_projections())
    read_records = verify_module._LogUpTo.read_records
    moved: list[int] = []

    def meanwhile(self: Any, after: int, limit: int) -> Any:
        if not moved:  # once verify has read the stored positions, before it reads rows
            ledger.record(fill(order, "T-late", 30))
            moved.append(runner.run_once())
        return read_records(self, after, limit)

    monkeypatch.setattr(verify_module._LogUpTo, "read_records", meanwhile)
    try:
        report = verify(ledger, store, all_projections())
        assert moved == [3]  # the runner committed the two events and the late fill
        assert report.ok, report.problems
        assert report.events == ledger.count_events() - 1  # replayed before the late fill
    finally:
        live.close()
        store.close()


def test_verify_holds_orders_together_across_pages(
    ledger: OrderLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders are read a page at a time; an order whose events straddle pages is still
    replayed whole (pages of 2 rows here: every order of 3 events is split)."""
    store = _caught_up(ledger)
    monkeypatch.setattr(verify_module, "_PAGE", 2)
    try:
        report = verify(ledger, store, all_projections())
    finally:
        store.close()
    assert report.ok, report.problems
    assert (report.orders, report.events) == (3, 9)
