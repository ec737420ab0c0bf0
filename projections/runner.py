"""Keep projections up to date from the log: in batches, exactly once, resumable.

The runner reads the log after the lowest position its projections have reached, folds a
batch of events into each projection that has not seen them, and commits the changed rows
of every projection together with their new positions in one transaction. A crash at any
point loses at most the batch in flight, which the next run folds again from the committed
position: nothing is skipped and nothing is counted twice.

What it folds are records (the stored JSON state, parsed, with position, order id, version
and kind), read with the recorder's own keyset query; no event objects are made. Each
projection keeps a working set of mutable rows: the bounded tables whole, the per-order
rows of recent orders (let go, once written, beyond `cached_orders`, and loaded again in
one query per table when a later event needs them), nothing of the append-only tables.
`catch_up` folds the next batch while the previous one is being written.

Positions are notification ids. They can have gaps (a failed insert burns a sequence
value); the runner never waits for a gap to fill, because on PostgreSQL the table lock the
writers take makes insert order equal commit order, and on SQLite there is one writer at a
time: an id below the last one read that is not there now will never appear.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Protocol
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent

from ledger.application import OrderLedger
from ledger.domain.order import Order
from projections.base import (
    EVENT_CLASSES,
    KIND_OF_TOPIC,
    ORDER_TOPIC_PREFIX,
    Key,
    Loader,
    Projection,
    Record,
    Table,
    View,
    Working,
    parse_state,
    record_of,
)
from projections.store import ProjectionConflict, ProjectionSourceMismatch, ProjectionStore

DEFAULT_BATCH_SIZE = 2000
#: Records per transaction while catching up (`catch_up`), where `batch_size` is not given.
#: Far behind, a bigger transaction costs less per event: the per-order tables' random
#: (order id) index pages a batch dirties are written once for more of its rows. Catching
#: up 1,000,000 events on SQLite: 2,000 a batch 20,900-21,400 events/s (peak RSS 123 MB),
#: 5,000 22,900 (149 MB), 10,000 24,200 (183 MB), 20,000 25,600 (221 MB).
DEFAULT_CATCH_UP_BATCH_SIZE = 10_000
#: Per-order rows kept in memory per table before the written ones are let go.
DEFAULT_CACHED_ORDERS = 5_000


log = logging.getLogger(__name__)


class EventSource(Protocol):
    """Where events come from: the live log, or an export file."""

    def read(self, after: int, limit: int) -> list[tuple[int, Order.Event]]:
        """Up to `limit` events with position above `after`, in log order."""
        ...


class RecordSource(Protocol):
    """A source that also gives records (the stored form), which folds read fastest."""

    def read_records(self, after: int, limit: int) -> list[Record]:
        """Up to `limit` order event records with position above `after`, in log order."""
        ...


def records_of(source: EventSource, after: int, limit: int) -> list[Record]:
    """Records from any source: stored records if it has them, else made from events."""
    read_records = getattr(source, "read_records", None)
    if read_records is not None:
        return read_records(after, limit)  # type: ignore[no-any-return]
    return [record_of(position, event) for position, event in source.read(after, limit)]


@dataclass
class LedgerLog:
    """The live log of an `OrderLedger` (SQLite or PostgreSQL)."""

    ledger: OrderLedger

    # Another application's rows in the same table are skipped; a page of nothing but
    # theirs must not read as the end of the log (every reader stops at an empty batch),
    # so reading goes on past such pages until an order event or the end.

    def read(self, after: int, limit: int) -> list[tuple[int, Order.Event]]:
        while True:
            notifications = self.ledger.recorder.select_notifications(
                start=after, limit=limit, inclusive_of_start=False
            )
            events = decode(self.ledger.mapper, ((n.id, n) for n in notifications))
            if events or len(notifications) < limit:
                return events
            after = notifications[-1].id

    def read_records(self, after: int, limit: int) -> list[Record]:
        """The recorder's own keyset query (rows after `after`, in id order), without
        making notification objects or UUIDs on the way."""
        while True:
            rows = self.stored_rows(after, limit)
            records = stored_records(rows)
            if records or len(rows) < limit:
                return records
            after = rows[-1][0]

    def stored_rows(self, after: int, limit: int) -> list[tuple[int, str, int, str, bytes | str]]:
        """Up to `limit` stored (position, order id, version, topic, state) rows of the
        log after `after`, in log order (the state as text where the database gives it)."""
        from eventsourcing.postgres import PostgresApplicationRecorder
        from eventsourcing.sqlite import SQLiteApplicationRecorder

        recorder = self.ledger.recorder
        if isinstance(recorder, SQLiteApplicationRecorder):
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(  # the state as stored (bytes): orjson parses UTF-8 itself
                    f"SELECT rowid, {_SQLITE_CANONICAL_ID}, originator_version, topic, state"
                    f" FROM {recorder.events_table_name} WHERE rowid>? ORDER BY rowid LIMIT ?",
                    (after, limit),
                )
                return [tuple(row) for row in cursor.fetchall()]
        if isinstance(recorder, PostgresApplicationRecorder):
            from psycopg.rows import tuple_row
            from psycopg.sql import SQL, Identifier

            statement = SQL(  # the state as text: the server decodes it, not Python
                "SELECT notification_id, originator_id::text, originator_version, topic,"
                " convert_from(state, 'UTF8')"
                " FROM {}.{} WHERE notification_id>%s ORDER BY notification_id LIMIT %s"
            ).format(Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
            with (
                recorder.datastore.get_connection() as connection,
                connection.cursor(row_factory=tuple_row) as cursor,
            ):
                cursor.execute(statement, (after, limit), prepare=True)
                return cursor.fetchall()
        return [  # any other recorder: its own notifications
            (n.id, str(n.originator_id), n.originator_version, n.topic, n.state)
            for n in recorder.select_notifications(
                start=after, limit=limit, inclusive_of_start=False
            )
        ]

    def stored_rows_by_order(
        self, after: tuple[Any, int] | None, limit: int
    ) -> list[tuple[int, Any, int, str, bytes]] | None:
        """Up to `limit` stored (position, order id as stored, version, topic, state) rows
        in order id and version order (the table's primary key), after `after`, the (order
        id as stored, version) of the last row read (None: from the start). One order's
        events come together, so a reader needs to hold only one order. None where the
        recorder is neither SQLite's nor PostgreSQL's."""
        from eventsourcing.postgres import PostgresApplicationRecorder
        from eventsourcing.sqlite import SQLiteApplicationRecorder

        recorder = self.ledger.recorder
        if isinstance(recorder, SQLiteApplicationRecorder):
            where = "WHERE (originator_id, originator_version) > (?, ?)" if after else ""
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(
                    "SELECT rowid, originator_id, originator_version, topic, state"
                    f" FROM {recorder.events_table_name} {where}"
                    " ORDER BY originator_id, originator_version LIMIT ?",
                    (*(after or ()), limit),
                )
                return [tuple(row) for row in cursor.fetchall()]
        if isinstance(recorder, PostgresApplicationRecorder):
            from psycopg.rows import tuple_row
            from psycopg.sql import SQL, Identifier

            statement = SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state"
                " FROM {}.{} {} ORDER BY originator_id, originator_version LIMIT %s"
            ).format(
                Identifier(recorder.datastore.schema),
                Identifier(recorder.events_table_name),
                SQL("WHERE (originator_id, originator_version) > (%s, %s)" if after else ""),
            )
            with (
                recorder.datastore.get_connection() as connection,
                connection.cursor(row_factory=tuple_row) as cursor,
            ):
                cursor.execute(statement, (*(after or ()), limit))
                return cursor.fetchall()
        return None

    def last_position(self) -> int:
        return self.ledger.recorder.max_notification_id() or 0

    def first_event(self) -> str | None:
        """The log's identity for a projection store: its first stored row's position, order,
        version and a digest of its state exactly as stored (None for an empty log)."""
        rows = self.stored_rows(0, 1)
        if not rows:
            return None
        position, order_id, version, _topic, state = rows[0]
        data = state.encode("utf-8") if isinstance(state, str) else bytes(state)
        digest = hashlib.sha256(data).hexdigest()[:32]
        return f"{position}:{canonical_id(order_id)}:{version}:{digest}"


def decode(
    mapper: Mapper[UUID], records: Iterable[tuple[int, StoredEvent]]
) -> list[tuple[int, Order.Event]]:
    """(position, event) pairs for stored records; anything that is not an order event
    (another application sharing the table) is skipped."""
    events: list[tuple[int, Order.Event]] = []
    for position, stored in records:
        event = mapper.to_domain_event(stored)
        if isinstance(event, Order.Event):
            events.append((position, event))
    return events


_MAX_CLASS_VERSION: Final = max(cls.class_version for cls in EVENT_CLASSES.values())


def stored_records(rows: Iterable[tuple[int, str, int, str, bytes | str]]) -> list[Record]:
    """Records for stored (position, order id, version, topic, state) rows. Rows of other
    applications sharing the table are skipped; an order event of an unknown kind or a
    newer class version than this code knows is refused (ValueError)."""
    records: list[Record] = []
    kind_of = KIND_OF_TOPIC.get
    for position, order_id, version, topic, state in rows:
        kind = kind_of(topic) or order_kind(topic, position)
        if kind is None:
            continue
        parsed = parse_state(state)
        if parsed.get("class_version", 1) > _MAX_CLASS_VERSION:
            raise ValueError(
                f"{topic} v{parsed['class_version']} at position {position} is newer than"
                " this code (upgrade kite-ledger)"
            )
        if len(order_id) != 36:
            order_id = canonical_id(order_id)
        records.append(Record(position, order_id, version, kind, parsed))
    return records


#: SQLite keeps an order id as its 32 hex digits: the canonical (dashed) text made by the
#: database as it reads (what `canonical_id` does, at 1.3 us a record in Python);
#: anything that is not 32 lowercase hex digits comes as it is stored, for `canonical_id`.
_SQLITE_CANONICAL_ID: Final = (
    f"CASE WHEN originator_id GLOB '{'[0-9a-f]' * 32}'"
    # GLOB and substr stop at a NUL: the whole value must be the 32 digits.
    " AND length(CAST(originator_id AS BLOB)) = 32 THEN substr(originator_id, 1, 8)"
    " || '-' || substr(originator_id, 9, 4) || '-' || substr(originator_id, 13, 4)"
    " || '-' || substr(originator_id, 17, 4) || '-' || substr(originator_id, 21)"
    " ELSE originator_id END"
)


def canonical_id(order_id: str) -> str:
    """The canonical text of an order id (SQLite keeps the hex form)."""
    if len(order_id) == 32 and order_id.islower():
        return (
            f"{order_id[:8]}-{order_id[8:12]}-{order_id[12:16]}-{order_id[16:20]}-{order_id[20:]}"
        )
    return str(UUID(order_id))


def order_kind(topic: str, position: int) -> str | None:
    """The kind of order event a stored topic names; None for another application's
    event; ValueError for an order event this code does not know."""
    kind = KIND_OF_TOPIC.get(topic)
    if kind is None and topic.startswith(ORDER_TOPIC_PREFIX):
        raise ValueError(f"unknown order event topic {topic!r} at position {position}")
    return kind


def _transient_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    import psycopg
    from eventsourcing.persistence import InterfaceError, OperationalError

    return (
        psycopg.OperationalError,
        psycopg.InterfaceError,
        sqlite3.OperationalError,
        OperationalError,
        InterfaceError,
    )


#: Errors after which the runner reconnects and resumes instead of stopping.
TRANSIENT_ERRORS: Final = _transient_errors()


class ProjectionRunner:
    """Folds the log into projections held in `store`.

    Each batch: read the records after the lowest position, load (in one query per table)
    the rows of the batch's orders that are not in memory, fold, and write the changed
    rows with every projection's new position in one transaction. Per-order rows are let
    go after they are written once there are more than `cached_orders` of them, so memory
    stays bounded however long the log.

    Following the log (`run_once`, `run_forever`) a batch is up to `batch_size` records
    (default 2,000), so what has just been written is visible soon; `catch_up` reads up
    to `catch_up_batch_size` (default `batch_size` if that is given, else 10,000), since
    far behind a bigger transaction costs less per event.
    """

    def __init__(
        self,
        source: EventSource,
        store: ProjectionStore,
        projections: Sequence[Projection],
        *,
        batch_size: int | None = None,
        on_batch: Callable[[int, int], None] | None = None,
        cached_orders: int = DEFAULT_CACHED_ORDERS,
        catch_up_batch_size: int | None = None,
    ) -> None:
        if catch_up_batch_size is None:
            catch_up_batch_size = (
                batch_size if batch_size is not None else DEFAULT_CATCH_UP_BATCH_SIZE
            )
        if batch_size is None:
            batch_size = DEFAULT_BATCH_SIZE
        if batch_size < 1 or catch_up_batch_size < 1:
            raise ValueError("batch_size and catch_up_batch_size must be at least 1")
        self.source = source
        self.store = store
        self.projections = list(projections)
        self.batch_size = batch_size
        self.catch_up_batch_size = catch_up_batch_size
        self.on_batch = on_batch
        self.cached_orders = cached_orders
        #: The per-order keys the write in flight changes, by projection and table.
        self._in_flight_keys: dict[str, dict[str, set[Key]]] = {}
        store.ensure(self.projections)
        self._load()
        self._source_checked = False
        self._check_source()

    def _load(self) -> None:
        """Start from what the store holds: positions, and the bounded tables, read in one
        snapshot of the store (`consistent_reads`).

        Another runner on the same store (a second `project --follow`, a `project` run
        beside `serve`) may commit while they are read: read each in a read of its own,
        rows from before its commit with positions from after it passed the next commit's
        position check and wrote over that runner's batch (a fill lost from the
        positions, P&L and statistics for good)."""
        # Built aside and assigned together: a load that fails half way (a lost connection)
        # leaves the runner as it was, to be loaded again, never half loaded.
        loaded: dict[str, Working] = {}
        with self.store.consistent_reads() as cur:
            positions = {p.name: self.store.position_in(cur, p) for p in self.projections}
            for projection in self.projections:
                working = projection.working(self._loader(projection))
                for table in projection.tables:
                    if table.kind == "bounded":
                        rows = self.store.load_cells(projection, table, cursor=cur)
                        working.load(table.name, rows)
                loaded[projection.name] = working
        self.working: dict[str, Working] = loaded
        self.positions: dict[str, int] = positions
        self._needs_load = False

    #: Set when a batch failed between its fold and its commit: the working sets may hold
    #: folds no commit carried, and must be loaded from the store again before the next
    #: batch. The load right after the failure clears it; if that load fails too (the
    #: store still locked or unreachable), the next batch loads first, and a batch is
    #: never folded on top of a copy of itself.
    _needs_load = False

    def _check_source(self) -> None:
        """Refuse to fold a log into projections folded from another one
        (`ProjectionSourceMismatch`), for sources that can name themselves (the live log;
        an export is read once, into a file of its own). An empty log is checked again
        when it has events; projections past position 0 and an empty log do not match."""
        first_event: Callable[[], str | None] | None = getattr(self.source, "first_event", None)
        if first_event is None:
            self._source_checked = True
            return
        mine = first_event()
        if mine is None:
            folded = max(self.positions.values(), default=0)
            if folded:
                raise ProjectionSourceMismatch(
                    self.store.where, f"(folded up to position {folded})", "(the log is empty)"
                )
            return
        self.store.claim_source(mine)
        self._source_checked = True

    def _loader(self, projection: Projection) -> Loader:
        """Rows let go, loaded back. Their last change is committed (rows of the write in
        flight are never let go), so they are read on the store's committed-reads
        connection without waiting for that write."""

        def load(table: Table, keys: list[Key]) -> dict[Key, Any]:
            return self.store.load_cells(projection, table, keys, beside_writes=True)

        return load

    def view(self, name: str, where: Mapping[str, Collection[str]] | None = None) -> View:
        """The projection's rows as the store holds them (after the last commit); `where`
        as `ProjectionStore.load_view` takes it."""
        projection = next(p for p in self.projections if p.name == name)
        return self.store.load_view(projection, where)

    @property
    def position(self) -> int:
        """The lowest position any projection has reached."""
        return min(self.positions.values(), default=0)

    def run_once(self) -> int:
        """Fold and commit one batch. Returns how many log records it covered."""
        with without_cycle_collection():
            return self._run_once()

    def _run_once(self) -> int:
        if self._needs_load:
            self._load()
        if not self._source_checked:
            self._check_source()
        after = self.position
        batch = records_of(self.source, after, self.batch_size)
        if not batch:
            return 0
        last = batch[-1].position
        behind = [p for p in self.projections if self.positions[p.name] < last]
        try:
            self._evict_if_full()
            for projection in behind:
                self._fold(projection, batch, self.positions[projection.name])
            changes = {p.name: self.working[p.name].take_changes() for p in behind}
            self.store.commit(
                [(p, changes[p.name][0]) for p in behind],
                last,
                expected={p.name: self.positions[p.name] for p in behind},
                created={name: created for name, (_, created) in changes.items()},
            )
        except ProjectionConflict:
            self._needs_load = True
            self._load()  # another runner got there first: carry on from where it is
            return len(batch)
        except BaseException:
            self._needs_load = True
            self._load()  # the working sets may hold half a batch: start again from the store
            raise
        self._committed(behind, last, len(batch))
        return len(batch)

    def _committed(self, behind: list[Projection], last: int, count: int) -> None:
        for projection in behind:
            self.positions[projection.name] = last
        if self.on_batch is not None:
            self.on_batch(count, last)

    def _evict_if_full(self) -> None:
        """Let written per-order rows go, but those of the write in flight: loaded back
        before it commits, they would be read as they were before it."""
        if any(w.over(self.cached_orders) for w in self.working.values()):
            for name, working in self.working.items():
                working.evict(self.cached_orders, keep=self._in_flight_keys.get(name))

    def _fold(self, projection: Projection, batch: list[Record], seen: int) -> None:
        working = self.working[projection.name]
        kinds = projection.kinds
        records = [r for r in batch if r.position > seen and r.kind in kinds]
        per_order = [t.name for t in projection.tables if t.kind == "per_order"]
        if per_order:
            # Orders submitted in this batch start their rows here; the rows of the others
            # were let go if not in memory: load those, in one query per table.
            new = {r.order_id for r in records if r.kind == "Submitted"}
            wanted = {(r.order_id,) for r in records if r.order_id not in new}
            for name in per_order:
                cells = working.cells[name]
                missing = [key for key in wanted if key not in cells]
                if missing:
                    working.prefetch(name, missing)
        apply = projection.apply_record
        record = None
        try:
            for record in records:
                apply(working, record)
        except Exception as error:
            if record is not None:  # which record, for whoever reports the failure
                error.add_note(
                    f"folding log position {record.position} (order {record.order_id},"
                    f" version {record.version}, {record.kind}) into {projection.name}"
                )
            raise

    # ------------------------------------------------------------------ catching up

    _in_flight: tuple[Future[None], list[Projection], int, int] | None = None

    def catch_up(self) -> int:
        """Run batches until the projections reach what the log held when it was called
        (or the log has nothing new). Returns the records covered. What is written
        meanwhile is the next call's (or `run_forever`'s): writers that keep pace with the
        catch-up would otherwise keep a one-off `kite-ledger project` from ever returning.

        Pipelined: while one batch's transaction is written (on a writer thread, the
        database working on the other core), the next batch is read and folded; rows it
        needs back are read on the store's committed-reads connection without waiting for
        that write (rows the write carries are never let go, so none is read stale).
        Commits stay one at a time and in order, each with its own positions; the rows
        handed to the writer are copies, so folding on cannot change what a commit writes;
        a failed commit throws away what was folded after it and starts again from the store."""
        total = 0
        if self._needs_load:
            self._load()
        last_position: Callable[[], int] | None = getattr(self.source, "last_position", None)
        target = last_position() if last_position is not None else None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="projections") as writer:
            folded = dict(self.positions)
            while True:
                try:
                    if (
                        target is not None
                        and self._source_checked
                        and min(folded.values(), default=0) >= target
                    ):
                        self._land()  # what the log held at the call is folded
                        return total
                    count = self._pipeline_once(writer, folded)
                except ProjectionConflict:
                    self._needs_load = True
                    self._settle()
                    self._load()  # another runner got there first: carry on from there
                    folded = dict(self.positions)
                    continue
                except BaseException:
                    self._needs_load = True
                    self._settle()
                    self._load()
                    raise
                if count == 0:
                    return total
                total += count

    def _pipeline_once(self, writer: ThreadPoolExecutor, folded: dict[str, int]) -> int:
        if not self._source_checked:
            self._land()
            self._check_source()
        with without_cycle_collection():
            batch = records_of(
                self.source, min(folded.values(), default=0), self.catch_up_batch_size
            )
            if not batch:
                self._land()
                return 0
            last = batch[-1].position
            behind = [p for p in self.projections if folded[p.name] < last]
            self._evict_if_full()
            for projection in behind:
                self._fold(projection, batch, folded[projection.name])
            changes = {p.name: self.working[p.name].take_changes() for p in behind}
            encoded = self.store.encode_changes(
                [(p, changes[p.name][0]) for p in behind],
                created={name: created for name, (_, created) in changes.items()},
            )
            in_flight_keys = {
                p.name: {
                    table.name: set(changes[p.name][0].get(table.name, ()))
                    for table in p.tables
                    if table.kind == "per_order"
                }
                for p in behind
            }
            # Freed here, by reference counting: when the collector runs again its first
            # pass would otherwise walk every record, state and cell of the batch.
            count = len(batch)
            del batch, changes
        expected = {p.name: folded[p.name] for p in behind}
        self._land()
        future = writer.submit(self.store.write, encoded, last, expected)
        self._in_flight = (future, behind, last, count)
        self._in_flight_keys = in_flight_keys
        for projection in behind:
            folded[projection.name] = last
        return count

    def _land(self) -> None:
        """Wait for the commit in flight, if any (raising what it raised)."""
        in_flight, self._in_flight = self._in_flight, None
        self._in_flight_keys = {}
        if in_flight is not None:
            future, behind, last, count = in_flight
            future.result()
            self._committed(behind, last, count)

    def _settle(self) -> None:
        """After a failure: let the commit in flight finish, whatever its outcome."""
        in_flight, self._in_flight = self._in_flight, None
        self._in_flight_keys = {}
        if in_flight is not None:
            with contextlib.suppress(Exception):  # an interrupt while waiting still stops
                in_flight[0].result()

    def run_forever(self, stop: threading.Event, poll_interval: float = 0.2) -> None:
        """Follow the log until `stop` is set.

        A lost database connection (a restart, a cut, a locked SQLite file) does not stop
        it: the batch in hand was rolled back with its positions, so the runner reconnects,
        starts again from what the store holds, and retries with a growing pause."""
        failures = 0
        while not stop.is_set():
            try:
                if self.run_once() == 0:
                    stop.wait(poll_interval)
                failures = 0
            except TRANSIENT_ERRORS as error:
                failures += 1
                log.warning("projection runner: %s; resuming (attempt %d)", error, failures)
                stop.wait(min(0.05 * 2**failures, 5.0))
                with contextlib.suppress(*TRANSIENT_ERRORS):
                    self._settle()
                    self.store.reconnect()
                    self._load()


@contextmanager
def without_cycle_collection() -> Iterator[None]:
    """No cyclic garbage collection while a batch is read and folded.

    A batch makes hundreds of thousands of small dicts and cells and no reference cycles
    (reference counting frees them all); the collector, triggered every few hundred
    allocations, would walk every live object again and again (a third of the time).
    It runs as usual again after the batch."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def iter_in_batches(
    events: Iterator[tuple[int, Order.Event]], size: int
) -> Iterator[list[tuple[int, Order.Event]]]:
    batch: list[tuple[int, Order.Event]] = []
    for item in events:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
