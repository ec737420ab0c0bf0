"""How the runner batches, pipelines and forgets: guards that count transactions and
queries (never time), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ledger.application import OrderLedger
from ledger.commands import CancelOrder, RecordCancelled
from ledger.demo import run_session
from projections import all_projections
from projections.base import Projection
from projections.offline import ExportError, export_log, offline_rebuild
from projections.runner import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CATCH_UP_BATCH_SIZE,
    LedgerLog,
    ProjectionRunner,
)
from projections.store import (
    DuckDBProjectionStore,
    ProjectionStore,
    WriterProcessStore,
    store_for_file,
    store_for_ledger_url,
)
from tests.support import accepted, fill, log_events, submit_command

PER_ORDER_TABLES = 3  # execution reports, statistics tallies, audit labels


def tables(store: ProjectionStore, projections: list[Projection]) -> dict[str, Any]:
    return {p.name: store.load_view(p).contents() for p in projections}


def tables_in_file(path: Path, projections: list[Projection]) -> dict[str, Any]:
    """The tables of a rebuilt file (its store closed after reading)."""
    rebuilt = store_for_file(path)
    try:
        return tables(rebuilt, projections)
    finally:
        rebuilt.close()


def folded(ledger: OrderLedger, projections: list[Projection]) -> dict[str, Any]:
    events = log_events(ledger)
    return {p.name: p.fold(events).contents() for p in projections}


@pytest.fixture
def store(database_url: str) -> Iterator[ProjectionStore]:
    store = store_for_ledger_url(database_url)
    yield store
    store.close()


def late_fill_after_others(ledger: OrderLedger) -> None:
    """An order part filled and cancelled, many other orders, then its late fill."""
    order = ledger.submit(submit_command(client_order_id="late-1", quantity=10))
    ledger.record(accepted(order))
    ledger.record(fill(order, "L1", 4))
    ledger.request_cancel(CancelOrder(order_id=order.id, reason="enough"))
    ledger.record(RecordCancelled(order_id=order.id, reason="cancelled"))
    run_session(ledger)
    run_session(ledger)
    ledger.record(fill(order, "L2", 6))


@pytest.mark.parametrize("cached_orders", [0, 1, 5])
def test_rows_let_go_are_loaded_again_and_the_result_is_a_clean_fold(
    ledger: OrderLedger, store: ProjectionStore, cached_orders: int
) -> None:
    late_fill_after_others(ledger)
    projections = all_projections()
    runner = ProjectionRunner(
        LedgerLog(ledger), store, projections, batch_size=4, cached_orders=cached_orders
    )
    runner.catch_up()
    assert tables(store, projections) == folded(ledger, projections)
    for working in runner.working.values():
        for name, table in working.tables.items():
            if table.kind == "per_order":
                # bounded: at most the cap, plus the orders of the last batch
                assert len(working.cells[name]) <= cached_orders + 4
            if table.kind == "append":
                assert not working.cells[name]  # written, never kept


def test_rows_let_go_are_loaded_in_one_query_per_table_per_batch(
    ledger: OrderLedger, store: ProjectionStore
) -> None:
    late_fill_after_others(ledger)
    projections = all_projections()
    runner = ProjectionRunner(LedgerLog(ledger), store, projections, batch_size=6, cached_orders=0)
    loads: list[int] = []
    real_load = store.load_cells

    def counting_load(projection: Any, table: Any, keys: Any = None, **options: Any) -> Any:
        loads.append(len(keys) if keys is not None else -1)
        return real_load(projection, table, keys, **options)

    store.load_cells = counting_load  # type: ignore[method-assign]
    batches = 0

    def count(_records: int, _position: int) -> None:
        nonlocal batches
        batches += 1

    runner.on_batch = count
    runner.catch_up()
    assert loads, "with no rows cached, later events must load their order's rows"
    assert len(loads) <= batches * PER_ORDER_TABLES
    assert tables(store, projections) == folded(ledger, projections)


@pytest.mark.parametrize("cached_orders", [0, 3])
def test_rows_are_loaded_back_while_the_previous_batch_is_written_and_none_is_stale(
    ledger: OrderLedger, store: ProjectionStore, cached_orders: int
) -> None:
    """Catching up, the fold does not wait for the write in flight to load rows back: they
    come from the store's committed-reads connection. Rows that write carries are kept in
    memory, never loaded back (read before it commits, they would be stale): orders span
    batches here, so a stale read would show in the result."""
    late_fill_after_others(ledger)
    projections = all_projections()
    runner = ProjectionRunner(
        LedgerLog(ledger), store, projections, batch_size=3, cached_orders=cached_orders
    )
    loads_during_writes = 0
    real_write, real_load = store.write, store.load_cells

    def slow_write(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.02)  # long enough for the next batch to fold meanwhile
        real_write(*args, **kwargs)

    def watched_load(projection: Any, table: Any, keys: Any = None, **options: Any) -> Any:
        nonlocal loads_during_writes
        in_flight = runner._in_flight  # a write handed to the writer thread, not yet landed
        if in_flight is not None and not in_flight[0].done():
            assert options.get("beside_writes"), "a load during a write must not share it"
            loads_during_writes += 1
        return real_load(projection, table, keys, **options)

    store.write = slow_write  # type: ignore[method-assign]
    store.load_cells = watched_load  # type: ignore[method-assign]
    runner.catch_up()
    assert loads_during_writes > 0, "no row was loaded back while a write was in flight"
    assert tables(store, projections) == folded(ledger, projections)


def test_catch_up_commits_one_transaction_per_batch_in_order(
    ledger: OrderLedger, store: ProjectionStore
) -> None:
    run_session(ledger)
    events = ledger.count_events()
    projections = all_projections()
    runner = ProjectionRunner(LedgerLog(ledger), store, projections, batch_size=7)
    positions: list[int] = []
    real_write = store.write

    def recording_write(encoded: Any, position: int, expected: Any = None) -> None:
        positions.append(position)
        real_write(encoded, position, expected)

    store.write = recording_write  # type: ignore[method-assign]
    before = store.transactions_committed
    runner.catch_up()
    assert store.transactions_committed - before == -(-events // 7)
    assert positions == sorted(positions)
    assert runner.position == positions[-1] == LedgerLog(ledger).last_position()


def test_catching_up_takes_bigger_batches_than_following(
    ledger: OrderLedger, store: ProjectionStore
) -> None:
    """Far behind, `catch_up` commits `catch_up_batch_size` records at a time; following
    the log, `run_once` commits at most `batch_size`. Given only `batch_size`, both use it."""
    run_session(ledger)
    events = ledger.count_events()
    defaults = ProjectionRunner(LedgerLog(ledger), store, all_projections())
    assert (defaults.batch_size, defaults.catch_up_batch_size) == (
        DEFAULT_BATCH_SIZE,
        DEFAULT_CATCH_UP_BATCH_SIZE,
    )
    given = ProjectionRunner(LedgerLog(ledger), store, all_projections(), batch_size=3)
    assert given.catch_up_batch_size == 3

    runner = ProjectionRunner(
        LedgerLog(ledger), store, all_projections(), batch_size=4, catch_up_batch_size=10
    )
    before = store.transactions_committed
    assert runner.run_once() == 4
    assert store.transactions_committed - before == 1
    runner.catch_up()
    assert store.transactions_committed - before == 1 + -(-(events - 4) // 10)
    assert runner.position == LedgerLog(ledger).last_position()
    assert tables(store, all_projections()) == folded(ledger, all_projections())


def test_a_failed_commit_in_a_pipelined_catch_up_loses_nothing(
    ledger: OrderLedger, store: ProjectionStore
) -> None:
    run_session(ledger)
    run_session(ledger)
    projections = all_projections()
    runner = ProjectionRunner(LedgerLog(ledger), store, projections, batch_size=5)
    real_write = store.write
    calls = 0

    def failing_second_write(encoded: Any, position: int, expected: Any = None) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("database went away")
        real_write(encoded, position, expected)

    store.write = failing_second_write  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        runner.catch_up()
    assert runner.position == store.position(projections[0]) == 5
    store.write = real_write  # type: ignore[method-assign]
    runner.catch_up()
    assert tables(store, projections) == folded(ledger, projections)


def _live_then_exported(ledger: OrderLedger, store: ProjectionStore, tmp_path: Path) -> Path:
    """A log with a fill long after its order's rows were let go, folded live into
    `store` and exported to Parquet; the export's path."""
    late_fill_after_others(ledger)
    ProjectionRunner(LedgerLog(ledger), store, all_projections()).catch_up()
    export = tmp_path / "log.parquet"
    export_log(ledger, export)
    return export


def test_offline_rebuild_with_rows_let_go_equals_live(
    ledger: OrderLedger, store: ProjectionStore, tmp_path: Path
) -> None:
    projections = all_projections()
    export = _live_then_exported(ledger, store, tmp_path)
    into = tmp_path / "rebuilt.sqlite"
    offline_rebuild(export, into, projections, batch_size=3)
    assert tables_in_file(into, projections) == tables(store, projections)


def test_audit_details_leave_out_the_hash_chain(
    ledger: OrderLedger, store: ProjectionStore
) -> None:
    run_session(ledger)
    assert all(event.event_hash is not None for event in ledger.iter_log())  # the log has it
    ProjectionRunner(LedgerLog(ledger), store, all_projections()).catch_up()
    audit = next(p for p in all_projections() if p.name == "audit")
    rows = store.load_view(audit).rows("audit_trail")
    details = [json.loads(row.details) for row in rows]
    assert len(details) == ledger.count_events()
    assert all(d for d in details)  # each row holds the event's own fields...
    assert not any({"hash", "previous_hash"} & set(d) for d in details)  # ...not the chain


def test_new_rows_are_inserted_once_and_later_changes_upserted(
    ledger: OrderLedger, store: ProjectionStore
) -> None:
    late_fill_after_others(ledger)
    projections = all_projections()
    runner = ProjectionRunner(LedgerLog(ledger), store, projections, batch_size=5, cached_orders=0)
    inserted: dict[str, int] = {}
    upserted: dict[str, int] = {}
    real_insert, real_write = store._insert, store._write

    def counting_insert(cur: Any, projection: Any, table: Any, rows: list[Any]) -> None:
        inserted[table.name] = inserted.get(table.name, 0) + len(rows)
        real_insert(cur, projection, table, rows)

    def counting_write(cur: Any, projection: Any, table: Any, rows: list[Any]) -> None:
        upserted[table.name] = upserted.get(table.name, 0) + len(rows)
        real_write(cur, projection, table, rows)

    store._insert = counting_insert  # type: ignore[method-assign]
    store._write = counting_write  # type: ignore[method-assign]
    runner.catch_up()
    orders = len(ledger.all_orders())
    assert inserted["execution_reports"] == inserted["stats_orders"] == orders
    assert inserted["audit_trail"] == ledger.count_events()
    assert "audit_trail" not in upserted  # append-only: never written twice
    assert upserted["execution_reports"] > 0  # orders whose events span batches
    assert tables(store, projections) == folded(ledger, projections)


def test_offline_rebuild_commits_each_batch_once_through_its_writer_process(
    ledger: OrderLedger, store: ProjectionStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One message, one transaction per batch in the writer process; the same rows as live."""
    projections = all_projections()
    export = _live_then_exported(ledger, store, tmp_path)
    messages: list[str] = []
    real_call = WriterProcessStore._call

    def counting_call(self: WriterProcessStore, message: Any) -> tuple[Any, ...]:
        messages.append("close" if message is None else message[0])
        return real_call(self, message)

    monkeypatch.setattr(WriterProcessStore, "_call", counting_call)
    batches: list[int] = []
    stats: dict[str, int] = {}
    into = tmp_path / "rebuilt.sqlite"
    offline_rebuild(
        export,
        into,
        projections,
        batch_size=4,
        on_batch=lambda n, _: batches.append(n),
        stats=stats,
    )
    assert messages == ["write"] * len(batches) + ["close"]
    assert stats["writer_peak_kb"] > 0
    assert tables_in_file(into, projections) == tables(store, projections)


class _CountingCursor:
    """A DuckDB cursor that counts the statements run through it."""

    def __init__(self, cursor: Any, counts: dict[str, int]) -> None:
        self._cursor = cursor
        self._counts = counts

    def execute(self, *args: Any) -> Any:
        self._counts["execute"] += 1
        return self._cursor.execute(*args)

    def executemany(self, *args: Any) -> Any:
        self._counts["executemany"] += 1
        return self._cursor.executemany(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def test_offline_rebuild_into_duckdb_writes_each_table_in_one_statement_per_batch(
    ledger: OrderLedger, store: ProjectionStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB runs `executemany` a statement per row (about 2 ms each): a batch's rows of
    a table go in as one Arrow table, one statement, however many rows there are."""
    projections = all_projections()
    export = _live_then_exported(ledger, store, tmp_path)
    counts = {"execute": 0, "executemany": 0, "transactions": 0}
    real_transaction = DuckDBProjectionStore.transaction

    @contextmanager
    def counting(self: DuckDBProjectionStore) -> Iterator[Any]:
        with real_transaction(self) as cursor:
            counts["transactions"] += 1
            yield _CountingCursor(cursor, counts)

    monkeypatch.setattr(DuckDBProjectionStore, "transaction", counting)
    into = tmp_path / "rebuilt.duckdb"
    folded_records = offline_rebuild(export, into, projections, batch_size=8)
    tables_count = sum(len(p.tables) for p in projections)
    assert counts["executemany"] == 0
    assert folded_records > 8 * 3  # several batches, each with several rows per table
    # Per transaction: the position check and move, and at most an insert and an upsert
    # per table (schema transactions: a statement per table and two per projection).
    assert counts["execute"] <= counts["transactions"] * (2 * tables_count + 2 * len(projections))
    assert tables_in_file(into, projections) == tables(store, projections)


def test_a_writer_process_that_dies_leaves_the_target_as_it_was(
    ledger: OrderLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_session(ledger)
    export = tmp_path / "log.parquet"
    export_log(ledger, export)
    into = tmp_path / "rebuilt.sqlite"
    offline_rebuild(export, into, all_projections())
    before = into.read_bytes()
    real_call = WriterProcessStore._call
    calls = 0

    def dying_call(self: WriterProcessStore, message: Any) -> tuple[Any, ...]:
        nonlocal calls
        calls += 1
        if calls == 2:
            self._process.kill()
            self._process.wait()
        return real_call(self, message)

    monkeypatch.setattr(WriterProcessStore, "_call", dying_call)
    with pytest.raises(ExportError, match="writer process ended"):
        offline_rebuild(export, into, all_projections(), batch_size=5)
    assert into.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name]


def _two_runners_race(ledger: OrderLedger, store: ProjectionStore) -> None:
    """Two runners load the same positions; the first commits a batch; the second's batch,
    folded from the old position, must be refused (not added on top), and it carries on
    from where the first got to."""
    run_session(ledger)
    projections = all_projections()
    first = ProjectionRunner(LedgerLog(ledger), store, projections, batch_size=5)
    second = ProjectionRunner(LedgerLog(ledger), store, all_projections(), batch_size=5)
    assert first.run_once() == 5
    committed = store.transactions_committed
    assert second.run_once() == 5  # read and folded, then refused at commit
    assert store.transactions_committed == committed  # nothing of it was written
    second.catch_up()
    first.catch_up()
    assert tables(store, projections) == folded(ledger, projections)


def test_a_batch_folded_from_a_stale_position_is_refused(
    ledger: OrderLedger, store: ProjectionStore
) -> None:
    _two_runners_race(ledger, store)


def test_the_writer_process_refuses_a_stale_batch_too(ledger: OrderLedger, tmp_path: Path) -> None:
    store = WriterProcessStore(tmp_path / "scratch.sqlite")
    try:
        _two_runners_race(ledger, store)
    finally:
        store.close()
