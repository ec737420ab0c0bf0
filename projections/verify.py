"""Verify: replay every order and every projection from the log and compare.

* Each order's events must run from version 1 without a gap, decode, and fold through the
  aggregate without error; the folded order must keep its invariants (filled quantity
  within the order quantity and equal to the sum of distinct fills), and each of its
  stored snapshots must equal the fold of its events to the snapshot's version.
* Each stored projection must equal the fold of the log up to the position it records.
  One that has not folded the whole log yet (no runner since the last commands, or one
  still catching up) is compared up to its position and listed in `behind` with how far
  it lags: that is no difference, but neither does it equal the log as it is now, and a
  reader of the store would see the older state.

Every difference is listed; an empty list means the ledger is consistent.

The memory it needs does not grow with the log. Orders are read in the order of the
events table's primary key (order id, version), so one order's events are held at a
time, not the whole log. Projections are folded again, by the same runner that keeps
them, into a scratch SQLite file of its own (bounded working sets, a writer process),
and compared with the stored ones table by table, both read a page at a time in key order.
The stored side is read in one snapshot with its positions (the runner of a live `serve`
may go on committing meanwhile), and never holds up that runner.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from ledger.application import OrderLedger
from ledger.domain.order import Order
from projections.base import Key, Projection, Record, Table
from projections.runner import LedgerLog, ProjectionRunner, decode, order_kind
from projections.store import ProjectionStore, SQLiteProjectionStore, WriterProcessStore

_PAGE = 5000


@dataclass(frozen=True)
class Lag:
    """A stored projection that has folded the log only up to `position` of `last`."""

    name: str
    version: int
    position: int
    last: int
    events: int  # order events in the log after `position` (positions can have gaps)


@dataclass
class VerifyReport:
    orders: int = 0
    events: int = 0
    projections: int = 0  # compared with the fold of the log up to their positions
    problems: list[str] = field(default_factory=list)
    behind: list[Lag] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No differences; projections that lag (`behind`) are not differences."""
        return not self.problems

    @property
    def current(self) -> int:
        """Projections that equal the whole log (as it stood when their positions were read)."""
        return self.projections - len(self.behind)


def verify(
    ledger: OrderLedger,
    store: ProjectionStore,
    projections: Sequence[Projection],
    *,
    on_events: Callable[[int], None] | None = None,
    max_rows_listed: int = 20,
) -> VerifyReport:
    report = VerifyReport()
    _verify_orders(ledger, report, on_events)
    _verify_projections(ledger, store, projections, report, max_rows_listed)
    return report


# ---------------------------------------------------------------------------- orders


def _verify_orders(
    ledger: OrderLedger, report: VerifyReport, on_events: Callable[[int], None] | None
) -> None:
    snapshotted = _orders_with_snapshots(ledger)
    for order_id, stored in _orders_of(ledger, on_events):
        events: list[Order.Event] = []
        for position, row in stored:
            if order_kind(row.topic, position) is None:
                continue  # another application's row in a shared table
            try:
                events += [event for _, event in decode(ledger.mapper, [(position, row)])]
            except Exception as error:  # a record that does not decode is itself a finding
                report.problems.append(f"log position {position}: cannot decode: {error}")
        if not events:
            continue
        report.orders += 1
        report.events += len(events)
        if _replays(order_id, events, report) and (snapshotted is None or order_id in snapshotted):
            _verify_snapshots(ledger, order_id, events, report)


def _orders_of(
    ledger: OrderLedger, on_events: Callable[[int], None] | None
) -> Iterator[tuple[UUID, list[tuple[int, StoredEvent]]]]:
    """Each order's stored events, (position, event) in version order, one order at a time
    (on any other recorder: the whole log read first, as it can only be read in log order)."""
    log = LedgerLog(ledger)
    rows = log.stored_rows_by_order(None, _PAGE)
    if rows is None:
        yield from _orders_in_memory(ledger, on_events)
        return
    current: UUID | None = None
    held: list[tuple[int, StoredEvent]] = []
    while rows:
        for position, stored_id, version, topic, state in rows:
            order_id = _uuid(stored_id)
            if order_id != current:
                if current is not None:
                    yield current, held
                current, held = order_id, []
            held.append((position, StoredEvent(order_id, version, topic, bytes(state))))
        if on_events is not None:
            on_events(len(rows))
        last = rows[-1]
        rows = log.stored_rows_by_order((last[1], last[2]), _PAGE)
    if current is not None:
        yield current, held


def _orders_in_memory(
    ledger: OrderLedger, on_events: Callable[[int], None] | None
) -> Iterator[tuple[UUID, list[tuple[int, StoredEvent]]]]:
    by_order: dict[UUID, list[tuple[int, StoredEvent]]] = defaultdict(list)
    after = 0
    while notifications := ledger.recorder.select_notifications(
        start=after, limit=_PAGE, inclusive_of_start=False
    ):
        for notification in notifications:
            by_order[_uuid(notification.originator_id)].append((notification.id, notification))
        after = notifications[-1].id
        if on_events is not None:
            on_events(len(notifications))
    for order_id, stored in by_order.items():
        stored.sort(key=lambda item: item[1].originator_version)
        yield order_id, stored


def _uuid(stored: Any) -> Any:
    """An order id as the library gives it: a UUID, or the stored value where that is not
    one (another application's row, skipped when decoded; an order's, a finding)."""
    if isinstance(stored, UUID):
        return stored
    try:
        return UUID(str(stored))
    except ValueError:
        return stored


def _replays(order_id: UUID, events: list[Order.Event], report: VerifyReport) -> bool:
    """The order's versions run 1..n, its events fold, and the fold keeps its invariants
    (a problem listed for each that does not)."""
    versions = [event.originator_version for event in events]
    if versions != list(range(1, len(versions) + 1)):
        report.problems.append(
            f"order {order_id}: versions in the log are {versions[:12]}, not 1..{len(versions)}"
        )
        return False
    order: Any = None
    try:
        for event in events:
            order = event.mutate(order)
    except Exception as error:
        report.problems.append(
            f"order {order_id}: replay fails at version {event.originator_version}: {error}"
        )
        return False
    assert isinstance(order, Order)
    if order.filled_quantity > order.quantity:
        report.problems.append(
            f"order {order_id}: filled {order.filled_quantity} of {order.quantity}"
        )
    if order.filled_quantity != sum(f.quantity for f in order.fills):
        report.problems.append(f"order {order_id}: filled quantity differs from its fills")
    if len(order.trade_ids) != len(order.fills):
        report.problems.append(f"order {order_id}: a trade id is counted twice")
    return True


def _orders_with_snapshots(ledger: OrderLedger) -> set[UUID] | None:
    """The orders that have stored snapshots (None: look for every order's), so that an
    order without any costs no query."""
    from eventsourcing.postgres import PostgresAggregateRecorder
    from eventsourcing.sqlite import SQLiteAggregateRecorder

    if ledger.snapshots is None:
        return set()
    recorder = ledger.snapshots.recorder
    if isinstance(recorder, SQLiteAggregateRecorder):
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(f"SELECT DISTINCT originator_id FROM {recorder.events_table_name}")
            return {UUID(row[0]) for row in cursor.fetchall()}
    if isinstance(recorder, PostgresAggregateRecorder):
        from psycopg.rows import tuple_row
        from psycopg.sql import SQL, Identifier

        statement = SQL("SELECT DISTINCT originator_id FROM {}.{}").format(
            Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)
        )
        with (
            recorder.datastore.get_connection() as connection,
            connection.cursor(row_factory=tuple_row) as cursor,
        ):
            cursor.execute(statement)
            return {_uuid(row[0]) for row in cursor.fetchall()}
    return None


def _verify_snapshots(
    ledger: OrderLedger, order_id: UUID, events: list[Order.Event], report: VerifyReport
) -> None:
    """Each stored snapshot of the order must equal the fold of its events to that version."""
    if ledger.snapshots is None or len(events) < 2:
        return
    for snapshot in ledger.snapshots.get(order_id):
        version = snapshot.originator_version
        folded: Any = None
        for event in events[:version]:
            folded = event.mutate(folded)
        try:
            restored: Any = snapshot.mutate(None)  # type: ignore[attr-defined]
        except Exception as error:
            report.problems.append(
                f"order {order_id}: snapshot at version {version} does not load: {error}"
            )
            continue
        if _state(restored) != _state(folded):
            report.problems.append(
                f"order {order_id}: snapshot at version {version} differs from its events"
            )


def _state(order: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(order).items() if k != "_pending_events"}


# ----------------------------------------------------------------------- projections


@dataclass
class _LogUpTo:
    """The live log, ending at `last` (what a stored projection has folded)."""

    log: LedgerLog
    last: int

    def read(self, after: int, limit: int) -> list[tuple[int, Order.Event]]:
        return [item for item in self.log.read(after, limit) if item[0] <= self.last]

    def read_records(self, after: int, limit: int) -> list[Record]:
        return [r for r in self.log.read_records(after, limit) if r.position <= self.last]


def _verify_projections(
    ledger: OrderLedger,
    store: ProjectionStore,
    projections: Sequence[Projection],
    report: VerifyReport,
    max_rows_listed: int,
) -> None:
    store.ensure(projections)
    log = LedgerLog(ledger)
    with store.consistent_reads() as stored:
        at: dict[int, list[Projection]] = defaultdict(list)
        for projection in projections:
            at[store.position_in(stored, projection)].append(projection)
        # Read after the positions: the log only grows, so no projection is past it.
        last = log.last_position()
        for position, group in sorted(at.items()):
            if position < last:
                events = _events_between(log, position, last)
                if events:
                    report.behind += [Lag(p.name, p.version, position, last, events) for p in group]
        for position, group in sorted(at.items()):
            with tempfile.TemporaryDirectory(prefix="kite-ledger-verify-") as folder:
                scratch = WriterProcessStore(Path(folder) / "folded.sqlite")
                try:
                    try:
                        ProjectionRunner(_LogUpTo(log, position), scratch, group).catch_up()
                    except Exception as error:  # an event the folds cannot take: a finding
                        names = ", ".join(p.name for p in group)
                        report.problems.append(
                            f"projections {names}: the log up to position {position} does not"
                            f" fold ({type(error).__name__}: {error}); an event was altered"
                            " or written past the ledger's rules"
                        )
                        continue
                    with scratch.consistent_reads() as folded:
                        for projection in group:
                            _compare(
                                projection, scratch, folded, store, stored, report, max_rows_listed
                            )
                finally:
                    scratch.close()


def _events_between(log: LedgerLog, after: int, last: int) -> int:
    """Order events at positions in (after, last]: what a projection at `after` has not
    folded (positions can have gaps, and another application's rows are no events)."""
    count = 0
    while rows := log.stored_rows(after, _PAGE):
        for position, _order_id, _version, topic, _state in rows:
            if position > last:
                return count
            if order_kind(topic, position) is not None:
                count += 1
        after = rows[-1][0]
    return count


def _compare(
    projection: Projection,
    scratch: ProjectionStore,
    folded: Any,
    store: ProjectionStore,
    stored: Any,
    report: VerifyReport,
    max_rows_listed: int,
) -> None:
    report.projections += 1
    listed = 0
    # Two stores that write rows alike (both SQLite files, the usual case) are compared as
    # stored, and a pair that differs there is decoded and compared again (rows written
    # by an older version may spell a number differently); otherwise, as row objects.
    as_stored = isinstance(scratch, SQLiteProjectionStore) and isinstance(
        store, SQLiteProjectionStore
    )
    for table in projection.tables:
        want = scratch.stream_rows(folded, projection, table, stored=as_stored)
        have = store.stream_rows(stored, projection, table, stored=as_stored)
        key_of = _stored_key(table) if as_stored else table.key_of
        for key, expected, found in _merged(key_of, table.name, want, have):
            if expected == found:
                continue
            if as_stored:
                expected = None if expected is None else scratch.row_of(table, expected)
                found = None if found is None else store.row_of(table, found)
                if expected == found:
                    continue
                key = table.key_of(expected if expected is not None else found)
            listed += 1
            if listed <= max_rows_listed:
                what = (
                    "missing" if found is None else "unexpected" if expected is None else "differs"
                )
                where = f"projection {projection.name} v{projection.version}: {table.name}"
                report.problems.append(f"{where} {key}: {what}")
    if listed > max_rows_listed:
        report.problems.append(
            f"projection {projection.name}: {listed - max_rows_listed} more rows differ"
        )


def _stored_key(table: Table) -> Callable[[Sequence[Any]], Key]:
    names = list(table.columns)
    at = [names.index(k) for k in table.key_fields]
    return lambda row: tuple(row[i] for i in at)


def _merged(
    key_of: Callable[[Any], Key], name: str, want: Iterator[Any], have: Iterator[Any]
) -> Iterator[tuple[Key, Any, Any]]:
    """(key, wanted row or None, stored row or None) for every key of either side, from two
    streams in key order."""
    wanted, stored = _in_key_order(key_of, name, want), _in_key_order(key_of, name, have)
    w, h = next(wanted, None), next(stored, None)
    while w is not None or h is not None:
        if h is None or (w is not None and w[0] < h[0]):
            assert w is not None
            yield w[0], w[1], None
            w = next(wanted, None)
        elif w is None or h[0] < w[0]:
            yield h[0], None, h[1]
            h = next(stored, None)
        else:
            yield w[0], w[1], h[1]
            w, h = next(wanted, None), next(stored, None)


def _in_key_order(
    key_of: Callable[[Any], Key], name: str, rows: Iterator[Any]
) -> Iterator[tuple[Key, Any]]:
    """(key, row) pairs, refusing a stream whose keys do not rise (a merge of it would
    report rows as missing that are not)."""
    last: Key | None = None
    for row in rows:
        key = key_of(row)
        if last is not None and not last < key:
            raise RuntimeError(f"{name}: rows came out of key order ({last} then {key})")
        last = key
        yield key, row
