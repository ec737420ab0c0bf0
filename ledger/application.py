"""The application service: the ledger's public API for commands and reads.

    ledger = open_ledger("ledger.db")              # or "postgresql://..."; default ./ledger.db
    order = ledger.submit(SubmitOrder(...))         # durable when it returns
    ledger.record(RecordAccepted(order_id=order.id, broker_order_id="2411..."))
    ledger.record(RecordFill(order_id=order.id, trade_id="T1", ...))
    ledger.get_order(order.id)                      # now, at_version=N, or as_of=instant

Each command loads the order, lets it decide, and saves the new events in one transaction.
If another writer saved a new version of the same order first (the store refuses a second
event at the same version), the command reloads the order and decides again, a bounded
number of times: no update is lost, and none is applied twice.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Final, get_args
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import (
    IntegrityError,
    JSONTranscoder,
    Notification,
    PersistenceError,
    Recording,
    StoredEvent,
)
from eventsourcing.utils import EnvType

from ledger.commands import (
    BrokerUpdate,
    CancelOrder,
    ModifyOrder,
    RecordAccepted,
    RecordCancelled,
    RecordCancelRejected,
    RecordExpired,
    RecordFill,
    RecordModified,
    RecordModifyRejected,
    RecordRejected,
    RecordTriggered,
    SubmitOrder,
)
from ledger.domain.errors import (
    ClientOrderIdReused,
    ConcurrencyConflict,
    InvalidCommand,
    LedgerError,
    OrderNotFound,
    Problem,
)
from ledger.domain.identity import order_id_for, tag_for
from ledger.domain.order import Order
from ledger.domain.status import OrderStatus
from ledger.domain.values import InstrumentRef
from ledger.groupcommit import GroupCommitter
from ledger.instruments import InstrumentCatalog
from ledger.persistence import (
    LedgerTranscoder,
    StorageSettings,
    StorageUnavailable,
    guard_environment,
    register_ledger_transcodings,
)

Clock = Callable[[], datetime]
DEFAULT_MAX_ATTEMPTS: Final = 8
DEFAULT_CACHE_SIZE: Final = 10_000
_PAGE: Final = 1000

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


class OrderLedger(Application[UUID]):
    """Orders as event-sourced aggregates, with commands and reads.

    Build one with `open_ledger`; it needs `close()` (or a `with` block) when done.
    """

    name = "orders"
    #: A snapshot every 100 events: an order with 1,000 fills loads from its latest
    #: snapshot plus at most 99 events, not from its first event.
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {Order: 100}

    def __init__(
        self,
        env: EnvType | None = None,
        *,
        instruments: InstrumentCatalog | None = None,
        clock: Clock = utc_now,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        storage: StorageSettings | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.instruments = instruments if instruments is not None else InstrumentCatalog.default()
        self.clock = clock
        self.max_attempts = max_attempts
        self.storage = storage
        self.cache_size = cache_size
        # The latest saved state of recently used orders: a command decides on it without
        # loading the order. It may be stale (another process wrote since); a stale
        # decision that writes fails on the version it claims and is decided again on a
        # fresh load, and one that refuses or writes nothing is checked on a fresh load.
        self._latest: OrderedDict[UUID, Order] = OrderedDict()
        self._latest_lock = threading.Lock()
        try:
            super().__init__(env)
        except BaseException:
            # Half built (its tables could not be made, the database went away): the
            # connection pool it opened would otherwise stay open with the process.
            factory = getattr(self, "factory", None)
            if factory is not None:
                factory.close()
            raise
        self._committer: GroupCommitter[StoredEvent, int] = GroupCommitter(
            lambda stored: list(self.recorder.insert_events(stored) or ())
        )

    def close(self) -> None:
        """Close the ledger's connections (its recorder's own, then the pool's)."""
        close_recorder = getattr(self.recorder, "close", None)
        try:
            if close_recorder is not None:
                close_recorder()
        finally:
            super().close()

    def construct_env(self, name: str, env: EnvType | None = None) -> Any:
        environment = super().construct_env(name, env)
        guard_environment(environment, name)
        return environment

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        """What `EventStore.put` does, through the group committer: concurrent commands
        share one transaction. Each caller encodes its own events before it joins the
        queue, so the transaction's writer only writes (and other threads encode while
        the database commits)."""
        assert processing_event.tracking is None
        assert not processing_event.saved_kwargs
        events = processing_event.events
        stored = [self.mapper.to_stored_event(event) for event in events]
        try:
            ids = self._committer.put(stored)
        except IntegrityError:
            raise
        except PersistenceError as error:
            raise StorageUnavailable(self._where, "writing", error) from error
        if len(ids) != len(stored):
            return []  # a recorder that gives no ids (the library makes no recordings)
        return [
            Recording(
                event,
                Notification(
                    originator_id=row.originator_id,
                    originator_version=row.originator_version,
                    topic=row.topic,
                    state=row.state,
                    id=notification_id,
                ),
            )
            for event, row, notification_id in zip(events, stored, ids, strict=True)
        ]

    def _save_order(self, order: Order) -> None:
        """`save(order)` as the library does it (record, snapshot every 100 events,
        notify), without its generic collection step, whose runtime protocol checks cost
        a command more than the rest of the bookkeeping together."""
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        processing_event.events.extend(order.collect_events())
        processing_event.aggregates[order.id] = order
        recordings = self._record(processing_event)
        try:
            self._take_snapshots(processing_event)
        except PersistenceError as error:
            # The command's events are committed: failing it now would tell the caller
            # nothing was written, and a retry would write it twice. A snapshot only
            # speeds up loading; the order loads from its events without it.
            log.warning(
                "order %s: its snapshot at version %s was not written (%s)",
                order.id,
                order.version,
                error,
            )
        self._notify(recordings)
        self.notify(processing_event.events)

    @property
    def _where(self) -> str:
        return self.storage.display if self.storage is not None else self.name

    def _remember(self, order: Order) -> None:
        with self._latest_lock:
            self._latest[order.id] = order.fork()
            self._latest.move_to_end(order.id)
            if len(self._latest) > self.cache_size:
                self._latest.popitem(last=False)

    def _forget(self, order_id: UUID) -> None:
        with self._latest_lock:
            self._latest.pop(order_id, None)

    def _recalled(self, order_id: UUID) -> Order | None:
        with self._latest_lock:
            order = self._latest.get(order_id)
            return order.fork() if order is not None else None

    def construct_transcoder(self) -> LedgerTranscoder:
        transcoder = LedgerTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        register_ledger_transcodings(transcoder)

    # ------------------------------------------------------------------ commands

    def submit(self, command: SubmitOrder) -> Order:
        """Record a new order (`Submitted`), durable when this returns.

        Submitting the same (account, client_order_id) again returns the order already
        made and writes nothing; with different terms it raises `ClientOrderIdReused`.
        """
        _expect(command, SubmitOrder)
        instrument = self.instruments.get(command.instrument)
        order_id = order_id_for(command.account, command.client_order_id)
        for _attempt in range(self.max_attempts):
            existing = self._recalled(order_id)
            if existing is not None:
                return self._same_submission(existing, command)
            order = Order.submit(
                account=command.account,
                client_order_id=command.client_order_id,
                instrument=instrument,
                side=command.side,
                quantity=command.quantity,
                order_type=command.order_type,
                product=command.product,
                variety=command.variety,
                validity=command.validity,
                validity_ttl=command.validity_ttl,
                price=command.price,
                trigger_price=command.trigger_price,
                disclosed_quantity=command.disclosed_quantity,
                market_protection=command.market_protection,
                tag=tag_for(order_id),
                strategy=command.strategy,
                reference_price=command.reference_price,
                actor=command.actor,
                at=self._now(),
            )
            try:
                # Optimistic: a new order is the common case, and the store refuses a
                # second version 1 of the same id, so no look-up is needed first.
                self._save_order(order)
            except IntegrityError:
                existing = self._get_or_none(order_id)
                if existing is None:
                    continue
                self._remember(existing)
                return self._same_submission(existing, command)
            self._remember(order)
            return order
        raise ConcurrencyConflict(order_id, self.max_attempts)

    def _same_submission(self, existing: Order, command: SubmitOrder) -> Order:
        differences = _differences(existing, command) or self._other_differences(
            existing.id, command
        )
        if differences:
            raise ClientOrderIdReused(command.account, command.client_order_id, differences)
        return existing

    def _other_differences(self, order_id: UUID, command: SubmitOrder) -> list[str]:
        """The submitted terms the order does not keep as first submitted, compared with
        its `Submitted` event (read only when a submission is repeated)."""
        first = next(iter(self.events.get(order_id, lte=1)), None)
        if not isinstance(first, Order.Submitted):  # pragma: no cover - an order starts so
            return []
        expected = {
            "disclosed_quantity": command.disclosed_quantity,
            "market_protection": command.market_protection,
            "validity_ttl": command.validity_ttl,
        }
        return [name for name, value in expected.items() if getattr(first, name) != value]

    def request_modify(self, command: ModifyOrder) -> Order:
        """Record a modification request (`ModifyRequested`) for the broker to carry out."""
        _expect(command, ModifyOrder)
        return self._execute(
            command.order_id,
            lambda order, at: order.request_modify(command.changes, actor=command.actor, at=at),
        )

    def request_cancel(self, command: CancelOrder) -> Order:
        """Record a cancellation request (`CancelRequested`) for the broker to carry out."""
        _expect(command, CancelOrder)
        return self._execute(
            command.order_id,
            lambda order, at: order.request_cancel(command.reason, actor=command.actor, at=at),
        )

    def record(
        self,
        update: BrokerUpdate,
        *,
        charges_for: Callable[[Order], Decimal | None] | None = None,
    ) -> Order:
        """Record what the broker said about an order.

        Updates the order already reflects (a repeated notice, a fill already recorded
        under the same trade id) write nothing: the returned order's version is unchanged.

        `charges_for` (with a `RecordFill` that names no charges) works out the fill's
        charges from the order as it stands when the fill is applied: a fill's share
        depends on the fills before it (a flat brokerage is charged once an order), and
        another writer may record one between a caller's read and this write, so it is
        asked again whenever the order is decided on afresh.
        """
        _expect(update, BROKER_UPDATES)
        if charges_for is None:
            return self._execute(
                update.order_id, lambda order, at: _apply_update(order, update, at)
            )
        if not isinstance(update, RecordFill) or update.charges is not None:
            raise InvalidCommand(
                type(update).__name__,
                [Problem("charges_for", "only for a RecordFill that names no charges")],
            )
        fill = update

        def decide(order: Order, at: datetime) -> object:
            charges = charges_for(order)
            charged = (
                fill
                if charges is None
                else fill.model_copy(update={"charges": charges})  # checked again
            )
            return _apply_update(order, charged, at)

        return self._execute(update.order_id, decide)

    # ------------------------------------------------------------------ reads

    def get_order(
        self,
        order_id: UUID,
        *,
        at_version: int | None = None,
        as_of: datetime | None = None,
    ) -> Order:
        """An order now, as it was at version `at_version`, or as it stood at `as_of`
        (by the ledger's record time)."""
        order_id = _order_id("GetOrder", order_id)
        if at_version is not None and as_of is not None:
            raise InvalidCommand(
                "GetOrder", [Problem("at_version", "give at_version or as_of, not both")]
            )
        if at_version is not None and (
            isinstance(at_version, bool) or not isinstance(at_version, int)
        ):
            raise InvalidCommand(
                "GetOrder", [Problem("at_version", f"must be a whole number, got {at_version!r}")]
            )
        if as_of is not None:
            if not isinstance(as_of, datetime):
                raise InvalidCommand(
                    "GetOrder", [Problem("as_of", f"must be a datetime, got {as_of!r}")]
                )
            if as_of.tzinfo is None or as_of.utcoffset() is None:
                raise InvalidCommand("GetOrder", [Problem("as_of", "must be timezone-aware")])
            at_version = self._version_as_of(order_id, as_of)
        if at_version is not None and at_version < 1:
            raise InvalidCommand("GetOrder", [Problem("at_version", "must be 1 or more")])
        try:
            order: object = self.repository.get(order_id, version=at_version)
        except AggregateNotFoundError:
            raise OrderNotFound(order_id) from None
        except IntegrityError:
            raise
        except PersistenceError as error:
            raise StorageUnavailable(self._where, "reading", error) from error
        if not isinstance(order, Order):
            raise OrderNotFound(order_id, "(the id names something else)")
        if at_version is not None and order.version < at_version:
            raise OrderNotFound(order_id, f"at version {at_version} (latest is {order.version})")
        return order

    def find_order(self, account: str, client_order_id: str) -> Order:
        """The order a strategy knows by its own client order id."""
        return self.get_order(order_id_for(account, client_order_id))

    def history(self, order_id: UUID) -> list[Order.Event]:
        """Every event of the order, oldest first."""
        order_id = _order_id("History", order_id)
        events = [e for e in self.events.get(order_id) if isinstance(e, Order.Event)]
        if not events:
            raise OrderNotFound(order_id)
        return events

    def list_orders(
        self,
        *,
        status: OrderStatus | None = None,
        instrument: InstrumentRef | None = None,
        account: str | None = None,
        strategy: str | None = None,
    ) -> list[Order]:
        """Orders matching every filter given, in the order they were submitted.

        Reads the whole log once and folds it: fine for a day's or a month's orders.
        The projections package keeps an indexed order view for larger ledgers.
        """
        if status is not None:
            try:
                status = OrderStatus(status)  # the text form ("FILLED") too
            except ValueError:
                names = ", ".join(s.value for s in OrderStatus)
                raise InvalidCommand(
                    "ListOrders", [Problem("status", f"must be one of {names}, got {status!r}")]
                ) from None
        orders = [
            order
            for order in self.all_orders()
            if (status is None or order.status is status)
            and (instrument is None or order.instrument == instrument)
            and (account is None or order.account == account)
            and (strategy is None or order.strategy == strategy)
        ]
        return orders

    def all_orders(self) -> list[Order]:
        """Every order, rebuilt from one pass over the log, in submission order."""
        events_by_order: dict[UUID, list[Order.Event]] = defaultdict(list)
        for event in self.iter_log():
            events_by_order[event.originator_id].append(event)
        orders: list[Order] = []
        for events in events_by_order.values():
            aggregate: Order | None = None
            for event in events:
                aggregate = event.mutate(aggregate)
            if aggregate is not None:
                orders.append(aggregate)
        return orders

    def iter_log(self, *, after: int = 0) -> Iterator[Order.Event]:
        """Every order event in log (commit) order, after notification id `after`."""
        position = after
        while True:
            notifications = self.recorder.select_notifications(
                start=position, limit=_PAGE, inclusive_of_start=False
            )
            if not notifications:
                return
            for notification in notifications:
                event = self.mapper.to_domain_event(notification)
                if isinstance(event, Order.Event):
                    yield event
            position = notifications[-1].id

    def count_events(self) -> int:
        """How many events the log holds (a cheap check that a refusal wrote nothing)."""
        return sum(1 for _ in self.iter_log())

    # ------------------------------------------------------------------ internals

    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("the ledger's clock must return timezone-aware datetimes")
        return now

    def _get_or_none(self, order_id: UUID) -> Order | None:
        try:
            return self.get_order(order_id)
        except OrderNotFound:
            return None

    def _execute(self, order_id: UUID, decide: Callable[[Order, datetime], object]) -> Order:
        """Decide on the order's latest known state and save; on a version conflict (or a
        refusal or no-op decided on a remembered state) load it afresh and decide again.
        Only conflicts count against `max_attempts`."""
        remembered = self._recalled(order_id)
        conflicts = 0
        while conflicts < self.max_attempts:
            order = remembered if remembered is not None else self.get_order(order_id)
            try:
                decide(order, self._now())
            except LedgerError:
                if remembered is not None:
                    remembered = None  # perhaps refused only because that state is old
                    continue
                raise
            if not order.pending_events:
                if remembered is not None:
                    remembered = None  # confirm the no-op against the log
                    continue
                self._remember(order)
                return order
            try:
                self._save_order(order)
            except IntegrityError:
                self._forget(order_id)
                remembered = None
                conflicts += 1
                continue
            self._remember(order)
            return order
        raise ConcurrencyConflict(order_id, self.max_attempts)

    def _version_as_of(self, order_id: UUID, as_of: datetime) -> int:
        version = 0
        for event in self.events.get(order_id):
            if not isinstance(event, Order.Event) or event.timestamp > as_of:
                break
            version = event.originator_version
        if version == 0:
            if not any(True for _ in self.events.get(order_id, limit=1)):
                raise OrderNotFound(order_id)
            raise OrderNotFound(order_id, f"as of {as_of.isoformat()} (it was submitted later)")
        return version


def _apply_update(order: Order, update: BrokerUpdate, at: datetime) -> bool:
    source = update.source
    match update:
        case RecordAccepted():
            return order.accept(
                update.broker_order_id,
                exchange_order_id=update.exchange_order_id,
                broker_timestamp=update.broker_timestamp,
                source=source,
                at=at,
            )
        case RecordRejected():
            return order.reject(
                update.reason, source=source, broker_timestamp=update.broker_timestamp, at=at
            )
        case RecordModified():
            return order.record_modified(
                update.changes, source=source, broker_timestamp=update.broker_timestamp, at=at
            )
        case RecordModifyRejected():
            return order.reject_modify(update.reason, source=source, at=at)
        case RecordTriggered():
            return order.trigger(update.triggered_at, source=source, at=at)
        case RecordFill():
            return order.fill(
                update.trade_id,
                instrument=update.instrument,
                quantity=update.quantity,
                price=update.price,
                exchange_timestamp=update.exchange_timestamp,
                source=source,
                charges=update.charges,
                at=at,
            )
        case RecordCancelled():
            return order.record_cancelled(
                update.reason, source=source, broker_timestamp=update.broker_timestamp, at=at
            )
        case RecordCancelRejected():
            return order.reject_cancel(update.reason, source=source, at=at)
        case RecordExpired():
            return order.expire(update.reason, source=source, at=at)


#: The broker updates `record` takes.
BROKER_UPDATES: Final[tuple[type, ...]] = get_args(BrokerUpdate)


def _expect(command: object, kind: type | tuple[type, ...]) -> None:
    """A command of the kind the method takes: a mapping or None is refused with its name,
    not an AttributeError from deep inside."""
    if not isinstance(command, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        names = " or ".join(k.__name__ for k in kinds)
        raise InvalidCommand(
            kinds[0].__name__ if len(kinds) == 1 else "BrokerUpdate",
            [
                Problem(
                    "command",
                    f"expected a {names} (build one with .parse(mapping)),"
                    f" got {type(command).__name__}",
                )
            ],
        )


def _order_id(command: str, value: object) -> UUID:
    """An order id as the stores look it up: a UUID, or its text. SQLite's recorder looks
    up `uuid.hex`, so the text of an existing order's id read as not found there and as
    the order on PostgreSQL, and text that is no id was "storage unavailable"."""
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise InvalidCommand(command, [Problem("order_id", f"must be an order id, got {value!r}")])


def _differences(order: Order, command: SubmitOrder) -> list[str]:
    """Which submitted terms differ between an existing order and a repeated submission."""
    expected = {
        "instrument": command.instrument,
        "side": command.side,
        "quantity": command.quantity,
        "order_type": command.order_type,
        "product": command.product,
        "variety": command.variety,
        "validity": command.validity,
        "price": command.price,
        "trigger_price": command.trigger_price,
        "strategy": command.strategy,
    }
    # Compared with what was first submitted, not with the terms as modified since:
    # the strategy is retrying the same submission.
    first = order.submitted_terms
    return [name for name, value in expected.items() if first.get(name) != value]


def open_ledger(
    url: str | Path | None = None,
    *,
    instruments: InstrumentCatalog | str | Path | None = None,
    clock: Clock = utc_now,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    lock_timeout: int = 10,
) -> OrderLedger:
    """Open the ledger on a SQLite file or PostgreSQL URL (default: `LEDGER_DATABASE_URL`,
    else `./ledger.db`). Creates tables (and the PostgreSQL schema) if missing.

    A write waits up to `lock_timeout` seconds for another writer's lock, then raises
    `StorageUnavailable`; so does a database that cannot be reached after retries."""
    storage = StorageSettings.from_url(url, lock_timeout=lock_timeout)
    catalog = (
        instruments
        if isinstance(instruments, InstrumentCatalog)
        else InstrumentCatalog.from_csv(instruments)
        if instruments is not None
        else None
    )
    with storage.creating_tables():
        return OrderLedger(
            dict(storage.env),
            instruments=catalog,
            clock=clock,
            max_attempts=max_attempts,
            storage=storage,
        )
