"""The order aggregate: its events, its state, and the decisions it makes.

Style (as in the `eventsourcing` library's examples): the public methods are the decisions.
They validate, consult the transition table, and either raise a domain error, return
without doing anything (an update the order already knows: idempotence), or trigger one
event. Only the events' `apply` methods change state, because `apply` is what reruns on
every replay.

Every event carries the ledger's record time (`timestamp`, passed in by the application, so
the domain never reads the clock) and, where the broker or exchange said when something
happened, that time beside it (`broker_timestamp`, `exchange_timestamp`).

Topics are explicit and pinned by a test, so moving or renaming a class cannot orphan
stored events. Every event was versioned from day one. Version 2 added the hash chain
(`previous_hash`, `hash`; see ledger/integrity.py); `upcast_v1_v2` reads a v1 event as a v2
event with no chain, and the aggregate's own `upcast_v1_v2` does the same for v1 snapshots.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal, localcontext
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from ledger.domain.errors import (
    BrokerIdMismatch,
    InstrumentMismatch,
    InvalidCommand,
    Overfill,
    Problem,
    TransitionRefused,
)
from ledger.domain.identity import order_id_for
from ledger.domain.rules import OrderTerms, check_terms
from ledger.domain.status import EventKind, OrderStatus, admits, next_status
from ledger.domain.values import (
    Exchange,
    Fill,
    Instrument,
    InstrumentRef,
    OrderChanges,
    OrderType,
    Product,
    Side,
    Source,
    Validity,
    Variety,
)
from ledger.integrity import ORDER_TOPIC, content_hash

_TOPIC_PREFIX = ORDER_TOPIC


class Order(Aggregate):
    """An order placed (or to be placed) with Kite, as the sum of its events."""

    TOPIC = _TOPIC_PREFIX
    #: v2: snapshots carry `chain_hash`, the hash of the order's latest event, and keep
    #: fills as rows of plain values (`fill_rows`), so that a snapshot of an order with a
    #: thousand fills decodes as fast as one with ten.
    #: v3: an order modified to a type without market protection (MARKET to LIMIT, SL-M
    #: to SL) has none, as `Modified` now leaves it; a v2 snapshot of one still held it.
    #: v4: the order keeps its instrument's `multiplier` (1 before it was recorded).
    class_version: ClassVar[int] = 4

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["chain_hash"] = None
        state["fill_rows"] = [_fill_row(fill) for fill in state.pop("fills")]

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        order_type = OrderType(state["order_type"])
        if not order_type.needs_market_protection:
            state["market_protection"] = None

    @staticmethod
    def upcast_v3_v4(state: dict[str, Any]) -> None:
        state["multiplier"] = 1

    # ------------------------------------------------------------------ events

    class Event(Aggregate.Event):
        """Base class of the order's events.

        `previous_hash` is the hash of the order's event before this one (None for the
        first, and after events written before the chain existed). `hash` is not a
        dataclass field: it is computed here, once, when the event is made, over every
        field including `previous_hash`, and stored with the event; replay reads it back.
        """

        TOPIC = f"{_TOPIC_PREFIX}.Event"
        KIND: ClassVar[EventKind]
        class_version: ClassVar[int] = 2
        previous_hash: str | None

        def __post_init__(self) -> None:
            state = dict(vars(self))
            object.__setattr__(
                self,
                "hash",
                content_hash(
                    topic=self.TOPIC,
                    class_version=type(self).class_version,
                    originator_id=state.pop("originator_id"),
                    originator_version=state.pop("originator_version"),
                    state=state,
                ),
            )

        @property
        def event_hash(self) -> str | None:
            """This event's hash (None for an event written before the chain existed)."""
            value: str | None = self.__dict__.get("hash")
            return value

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["previous_hash"] = None
            state["hash"] = None

        def mutate(self, aggregate: Any) -> Any:
            order = super().mutate(aggregate)
            assert order is not None
            order.chain_hash = self.event_hash
            return order

    class Submitted(Event, Aggregate.Created):
        """The order exists in the ledger. Durable before anything is sent to Kite."""

        TOPIC = f"{_TOPIC_PREFIX}.Submitted"
        KIND = EventKind.SUBMITTED
        #: v3: `multiplier`, the instrument's contract multiplier (1 before it was recorded:
        #: every order the ledger took then was on an exchange where it is 1, or booked so).
        class_version = 3
        account: str
        client_order_id: str
        instrument: InstrumentRef
        side: Side
        quantity: int
        order_type: OrderType
        product: Product
        variety: Variety
        validity: Validity
        validity_ttl: int | None
        price: Decimal | None
        trigger_price: Decimal | None
        disclosed_quantity: int
        market_protection: Decimal | None
        tag: str
        strategy: str | None
        reference_price: Decimal | None
        actor: str
        tick_size: Decimal
        lot_size: int
        expiry: date | None
        multiplier: int

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["multiplier"] = 1

        def apply(self, aggregate: Any) -> None:
            order: Order = aggregate
            order.account = self.account
            order.client_order_id = self.client_order_id
            order.instrument = self.instrument
            order.side = self.side
            order.quantity = self.quantity
            order.order_type = self.order_type
            order.product = self.product
            order.variety = self.variety
            order.validity = self.validity
            order.validity_ttl = self.validity_ttl
            order.price = self.price
            order.trigger_price = self.trigger_price
            order.disclosed_quantity = self.disclosed_quantity
            order.market_protection = self.market_protection
            order.tag = self.tag
            order.strategy = self.strategy
            order.reference_price = self.reference_price
            order.actor = self.actor
            order.tick_size = self.tick_size
            order.lot_size = self.lot_size
            order.expiry = self.expiry
            order.multiplier = self.multiplier
            order.submitted_terms = {
                "instrument": self.instrument,
                "side": self.side,
                "quantity": self.quantity,
                "order_type": self.order_type,
                "product": self.product,
                "variety": self.variety,
                "validity": self.validity,
                "price": self.price,
                "trigger_price": self.trigger_price,
                "strategy": self.strategy,
            }
            order.lifecycle = OrderStatus.SUBMITTED
            order.pending = None
            order.pending_changes = None
            order.broker_order_id = None
            order.exchange_order_id = None
            order.accepted_at = None
            order.filled_quantity = 0
            order.filled_value = Decimal(0)
            order.fill_rows = []
            order.trade_ids = set()
            order.charges = Decimal(0)
            order.triggered_at = None
            order.reason = None

    class Accepted(Event):
        """Kite took the order and gave it an id."""

        TOPIC = f"{_TOPIC_PREFIX}.Accepted"
        KIND = EventKind.ACCEPTED
        class_version = 2
        broker_order_id: str
        exchange_order_id: str | None
        broker_timestamp: datetime | None
        source: Source

        def apply(self, aggregate: Any) -> None:
            order: Order = aggregate
            order.broker_order_id = self.broker_order_id
            order.exchange_order_id = self.exchange_order_id or order.exchange_order_id
            order.accepted_at = self.broker_timestamp or self.timestamp
            order._move(self.KIND)

    class Rejected(Event):
        """Kite, the exchange or the ledger itself refused the order."""

        TOPIC = f"{_TOPIC_PREFIX}.Rejected"
        KIND = EventKind.REJECTED
        class_version = 2
        reason: str
        source: Source
        broker_timestamp: datetime | None

        def apply(self, aggregate: Any) -> None:
            order: Order = aggregate
            order.reason = self.reason
            order._move(self.KIND)

    class ModifyRequested(Event):
        """The strategy asked to change the order; Kite has not answered yet."""

        TOPIC = f"{_TOPIC_PREFIX}.ModifyRequested"
        KIND = EventKind.MODIFY_REQUESTED
        class_version = 2
        changes: OrderChanges
        actor: str

        def apply(self, aggregate: Any) -> None:
            order: Order = aggregate
            order.pending = EventKind.MODIFY_REQUESTED
            order.pending_changes = self.changes
            order._move(self.KIND)

    class Modified(Event):
        """Kite changed the order (on our request, or from elsewhere, e.g. Kite's web app)."""

        TOPIC = f"{_TOPIC_PREFIX}.Modified"
        KIND = EventKind.MODIFIED
        class_version = 3
        changes: OrderChanges
        source: Source
        broker_timestamp: datetime | None
        #: Whether it answers the ledger's open modification request. A change that does
        #: not carry everything the request asks for (made in Kite's web app, or a part
        #: Kite shows first) leaves the request open. (Version 2 events always closed it.)
        closes_request: bool

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["closes_request"] = True

        def apply(self, aggregate: Any) -> None:
            order: Order = aggregate
            c = self.changes
            order.quantity = c.quantity if c.quantity is not None else order.quantity
            order.order_type = c.order_type or order.order_type
            order.validity = c.validity or order.validity
            if c.disclosed_quantity is not None:
                order.disclosed_quantity = c.disclosed_quantity
            if c.order_type is not None:
                # A new order type decides which prices exist at all.
                order.price = c.price if c.order_type.needs_price else None
                order.trigger_price = c.trigger_price if c.order_type.needs_trigger_price else None
                if not c.order_type.needs_market_protection:
                    order.market_protection = None
            else:
                order.price = c.price if c.price is not None else order.price
                order.trigger_price = (
                    c.trigger_price if c.trigger_price is not None else order.trigger_price
                )
            if order.pending is EventKind.MODIFY_REQUESTED and self.closes_request:
                order.pending = None
                order.pending_changes = None
            order._move(self.KIND)
            if order.lifecycle.is_terminal:  # cut to what had filled: complete
                order.pending = None
                order.pending_changes = None

    class ModifyRejected(Event):
        """Kite refused a modification; the order stays as it was."""

        TOPIC = f"{_TOPIC_PREFIX}.ModifyRejected"
        KIND = EventKind.MODIFY_REJECTED
        class_version = 2
        reason: str
        source: Source

        def apply(self, aggregate: Any) -> None:
            order: Order = aggregate
            order.pending = None
            order.pending_changes = None
            order._move(self.KIND)

    class Triggered(Event):
        """A stop order's trigger price was reached; it now works as a limit or market order."""

        TOPIC = f"{_TOPIC_PREFIX}.Triggered"
        KIND = EventKind.TRIGGERED
        class_version = 2
        triggered_at: datetime
        source: Source

        def apply(self, aggregate: Any) -> None:
            order: Order = aggregate
            order.triggered_at = self.triggered_at
            order._move(self.KIND)

    class Filled(Event):
        """A trade: part or all of the order executed at the exchange.

        A fill names the account, side, product and strategy it affects (copied from the
        order), so positions and P&L fold from fills alone: offline, from an export, with
        no join back to the order.
        """

        TOPIC = f"{_TOPIC_PREFIX}.Filled"
        KIND = EventKind.FILLED
        #: v3: `multiplier`, copied from the order, so that positions and P&L fold from
        #: fills alone (1 before it was recorded).
        class_version = 3
        trade_id: str
        account: str
        instrument: InstrumentRef
        side: Side
        product: Product
        strategy: str | None
        quantity: int
        price: Decimal
        exchange_timestamp: datetime | None
        source: Source
        charges: Decimal | None
        multiplier: int

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["multiplier"] = 1

        def apply(self, aggregate: Any) -> None:
            order: Order = aggregate
            order.fill_rows.append(
                _fill_row(
                    Fill(
                        trade_id=self.trade_id,
                        quantity=self.quantity,
                        price=self.price,
                        exchange_timestamp=self.exchange_timestamp,
                        source=self.source,
                        recorded_at=self.timestamp,
                        charges=self.charges,
                    )
                )
            )
            order.trade_ids.add(self.trade_id)
            order.filled_quantity += self.quantity
            order.filled_value += self.price * self.quantity
            if self.charges is not None:
                order.charges += self.charges
            order._move(self.KIND)
            if order.lifecycle.is_terminal:
                order.pending = None
                order.pending_changes = None

    class CancelRequested(Event):
        """The strategy asked to cancel the order; Kite has not answered yet."""

        TOPIC = f"{_TOPIC_PREFIX}.CancelRequested"
        KIND = EventKind.CANCEL_REQUESTED
        class_version = 2
        reason: str | None
        actor: str

        def apply(self, aggregate: Any) -> None:
            order: Order = aggregate
            order.pending = EventKind.CANCEL_REQUESTED
            order.pending_changes = None
            order._move(self.KIND)

    class Cancelled(Event):
        """The order is cancelled; what was not filled will not be."""

        TOPIC = f"{_TOPIC_PREFIX}.Cancelled"
        KIND = EventKind.CANCELLED
        class_version = 2
        reason: str | None
        source: Source
        broker_timestamp: datetime | None

        def apply(self, aggregate: Any) -> None:
            order: Order = aggregate
            order.reason = self.reason
            order.pending = None
            order.pending_changes = None
            order._move(self.KIND)

    class CancelRejected(Event):
        """Kite refused a cancellation; the order goes on working."""

        TOPIC = f"{_TOPIC_PREFIX}.CancelRejected"
        KIND = EventKind.CANCEL_REJECTED
        class_version = 2
        reason: str
        source: Source

        def apply(self, aggregate: Any) -> None:
            order: Order = aggregate
            order.pending = None
            order._move(self.KIND)

    class Expired(Event):
        """The order lapsed: IOC remainder, TTL elapsed, or the trading day ended."""

        TOPIC = f"{_TOPIC_PREFIX}.Expired"
        KIND = EventKind.EXPIRED
        class_version = 2
        reason: str
        source: Source

        def apply(self, aggregate: Any) -> None:
            order: Order = aggregate
            order.reason = self.reason
            order.pending = None
            order.pending_changes = None
            order._move(self.KIND)

    # ------------------------------------------------------------------ state

    account: str
    client_order_id: str
    instrument: InstrumentRef
    side: Side
    quantity: int
    order_type: OrderType
    product: Product
    variety: Variety
    validity: Validity
    validity_ttl: int | None
    price: Decimal | None
    trigger_price: Decimal | None
    disclosed_quantity: int
    market_protection: Decimal | None
    tag: str
    strategy: str | None
    reference_price: Decimal | None
    actor: str
    tick_size: Decimal
    lot_size: int
    expiry: date | None
    multiplier: int
    submitted_terms: dict[str, Any]
    lifecycle: OrderStatus
    pending: EventKind | None
    pending_changes: OrderChanges | None
    broker_order_id: str | None
    exchange_order_id: str | None
    accepted_at: datetime | None
    filled_quantity: int
    filled_value: Decimal
    fill_rows: list[list[Any]]
    trade_ids: set[str]
    charges: Decimal
    triggered_at: datetime | None
    reason: str | None

    chain_hash: str | None

    def __init__(self) -> None:
        # State is set by `Submitted.apply`, so that replay and creation share one path.
        pass

    def fork(self) -> Order:
        """A copy to decide on: its containers are copied and its values shared (they are
        immutable), so a decision on the copy cannot touch the original. Much cheaper than
        `deepcopy`, which would copy every fill of a long order."""
        copy = object.__new__(Order)
        copy.__dict__.update(self.__dict__)
        copy.fill_rows = list(self.fill_rows)  # the rows themselves are never changed
        copy.trade_ids = set(self.trade_ids)
        copy.submitted_terms = dict(self.submitted_terms)
        copy.__dict__["_pending_events"] = list(self.pending_events)
        return copy

    def trigger_event(self, event_class: type[Any], **kwargs: Any) -> None:
        """Every new event chains to the order's latest one."""
        super().trigger_event(event_class, previous_hash=self.chain_hash, **kwargs)

    def _move(self, kind: EventKind) -> None:
        self.lifecycle = next_status(
            self.lifecycle, kind, filled_quantity=self.filled_quantity, quantity=self.quantity
        )

    # ------------------------------------------------------------------ creation

    @staticmethod
    def create_id(account: str, client_order_id: str, **_: Any) -> UUID:
        return order_id_for(account, client_order_id)

    @classmethod
    def submit(
        cls,
        *,
        account: str,
        client_order_id: str,
        instrument: Instrument,
        side: Side,
        quantity: int,
        order_type: OrderType,
        product: Product,
        variety: Variety = Variety.REGULAR,
        validity: Validity = Validity.DAY,
        validity_ttl: int | None = None,
        price: Decimal | None = None,
        trigger_price: Decimal | None = None,
        disclosed_quantity: int = 0,
        market_protection: Decimal | None = None,
        tag: str,
        strategy: str | None = None,
        reference_price: Decimal | None = None,
        actor: str,
        at: datetime,
    ) -> Order:
        """Decide to create an order. Refuses terms that break any rule, naming each."""
        terms = OrderTerms(
            side=side,
            quantity=quantity,
            order_type=order_type,
            variety=variety,
            validity=validity,
            validity_ttl=validity_ttl,
            price=price,
            trigger_price=trigger_price,
            disclosed_quantity=disclosed_quantity,
            market_protection=market_protection,
            tag=tag,
        )
        problems = check_terms(terms, instrument)
        if reference_price is not None and (
            not reference_price.is_finite() or reference_price <= 0
        ):
            problems.append(
                Problem("reference_price", f"must be a positive amount, got {reference_price}")
            )
        for name, text in (("account", account), ("client_order_id", client_order_id)):
            if not text.strip():
                problems.append(Problem(name, "must not be blank"))
        _require_aware("at", at, problems)
        if instrument.multiplier is None:
            problems.append(
                Problem(
                    "instrument",
                    f"{instrument.ref} has no contract multiplier in the instruments catalog"
                    " (Kite's dump does not give one): add a `multiplier` column with it",
                )
            )
        if problems:
            raise InvalidCommand("SubmitOrder", problems)
        assert instrument.multiplier is not None
        return cls._create(
            cls.Submitted,
            id=order_id_for(account, client_order_id),
            previous_hash=None,
            timestamp=at,
            account=account,
            client_order_id=client_order_id,
            instrument=instrument.ref,
            side=side,
            quantity=quantity,
            order_type=order_type,
            product=product,
            variety=variety,
            validity=validity,
            validity_ttl=validity_ttl,
            price=price,
            trigger_price=trigger_price,
            disclosed_quantity=disclosed_quantity,
            market_protection=market_protection,
            tag=tag,
            strategy=strategy,
            reference_price=reference_price,
            actor=actor,
            tick_size=instrument.tick_size,
            lot_size=instrument.lot_size,
            expiry=instrument.expiry,
            multiplier=instrument.multiplier,
        )

    # ------------------------------------------------------------------ reading

    @property
    def fills(self) -> list[Fill]:
        """Every fill, oldest first (made from the stored rows when asked for)."""
        return [
            Fill(
                trade_id=trade_id,
                quantity=quantity,
                price=Decimal(price),
                exchange_timestamp=datetime.fromisoformat(at) if at is not None else None,
                source=Source(source),
                recorded_at=datetime.fromisoformat(recorded_at),
                charges=Decimal(charges) if charges is not None else None,
            )
            for trade_id, quantity, price, at, source, recorded_at, charges in self.fill_rows
        ]

    @property
    def status(self) -> OrderStatus:
        """The lifecycle status, or PENDING_MODIFY / PENDING_CANCEL while a request is open."""
        if self.lifecycle.is_terminal:
            return self.lifecycle
        if self.pending is EventKind.CANCEL_REQUESTED:
            return OrderStatus.PENDING_CANCEL
        if self.pending is EventKind.MODIFY_REQUESTED:
            return OrderStatus.PENDING_MODIFY
        return self.lifecycle

    @property
    def is_open(self) -> bool:
        return self.lifecycle.is_open

    @property
    def remaining_quantity(self) -> int:
        """What could still fill: zero once the order has ended."""
        if self.lifecycle.is_terminal:
            return 0
        return self.quantity - self.filled_quantity

    @property
    def average_price(self) -> Decimal | None:
        """Quantity-weighted mean fill price. Exact whenever the division terminates;
        otherwise correct to 34 significant digits (the notional itself is kept exactly)."""
        if self.filled_quantity == 0:
            return None
        with localcontext() as ctx:
            ctx.prec = 34
            return (self.filled_value / self.filled_quantity).normalize()

    @property
    def terms(self) -> OrderTerms:
        return OrderTerms(
            side=self.side,
            quantity=self.quantity,
            order_type=self.order_type,
            variety=self.variety,
            validity=self.validity,
            validity_ttl=self.validity_ttl,
            price=self.price,
            trigger_price=self.trigger_price,
            disclosed_quantity=self.disclosed_quantity,
            market_protection=self.market_protection,
            tag=self.tag,
        )

    @property
    def reference_instrument(self) -> Instrument:
        """The instrument's reference data as it was when the order was submitted."""
        return Instrument(
            ref=self.instrument,
            tick_size=self.tick_size,
            lot_size=self.lot_size,
            expiry=self.expiry,
            multiplier=self.multiplier,
        )

    # ------------------------------------------------------------------ decisions

    def _refuse_unless_admitted(self, kind: EventKind, why: str = "") -> None:
        if not admits(self.lifecycle, kind):
            raise TransitionRefused(self.id, self.status.value, kind.value, why)

    def request_modify(self, changes: OrderChanges, *, actor: str, at: datetime) -> None:
        """Ask for a modification. Only while the order works at the broker."""
        if self.lifecycle is OrderStatus.SUBMITTED:
            raise TransitionRefused(
                self.id, self.status.value, "ModifyRequested", "the broker has not accepted it yet"
            )
        self._refuse_unless_admitted(EventKind.MODIFY_REQUESTED, "the order has ended")
        if self.pending is EventKind.CANCEL_REQUESTED:
            raise TransitionRefused(
                self.id, self.status.value, "ModifyRequested", "a cancellation is pending"
            )
        pending = self.pending_changes if self.pending is EventKind.MODIFY_REQUESTED else None
        if pending is not None:
            # The request still pending may not have reached Kite: this one takes it in,
            # so that what it asked for is sent with this, not dropped. Asking for the
            # order's own terms then takes the pending change back.
            changes = _merged_changes(pending, changes)
            if not changes.is_empty() and self._apply_changes(changes) == self._apply_changes(
                pending
            ):
                raise InvalidCommand(
                    "ModifyOrder",
                    [Problem("changes", "the pending modification already asks for these terms")],
                )
        self._check_changes("ModifyOrder", changes, requested=True, at=at, pending=pending)
        self.trigger_event(self.ModifyRequested, timestamp=at, changes=changes, actor=actor)

    def record_modified(
        self,
        changes: OrderChanges,
        *,
        source: Source,
        broker_timestamp: datetime | None,
        at: datetime,
    ) -> bool:
        """The broker changed the order. Returns False when it already has these terms,
        unless they are what the ledger's open request asks for (a request that took a
        pending change back): then the request is done."""
        asked = self.pending_changes if self.pending is EventKind.MODIFY_REQUESTED else None
        answers = asked is not None and changes == asked
        new_terms = self._apply_changes(changes)
        if new_terms == self.terms and not answers:
            return False
        self._refuse_unless_admitted(EventKind.MODIFIED)
        self._check_changes("RecordModified", changes, requested=False, at=at)
        self.trigger_event(
            self.Modified,
            timestamp=at,
            changes=changes,
            source=source,
            broker_timestamp=broker_timestamp,
            closes_request=asked is None or answers or _carries(new_terms, asked),
        )
        return True

    def reject_modify(self, reason: str, *, source: Source, at: datetime) -> bool:
        """The broker refused a modification. Without an open request there is nothing to
        reject (a repeated notice): returns False and records nothing."""
        if self.pending is not EventKind.MODIFY_REQUESTED:
            return False
        self._refuse_unless_admitted(EventKind.MODIFY_REJECTED)
        self.trigger_event(self.ModifyRejected, timestamp=at, reason=reason, source=source)
        return True

    def request_cancel(self, reason: str | None, *, actor: str, at: datetime) -> None:
        """Ask for a cancellation. Repeating the request is allowed (a retry)."""
        self._refuse_unless_admitted(EventKind.CANCEL_REQUESTED, "the order has ended")
        self.trigger_event(self.CancelRequested, timestamp=at, reason=reason, actor=actor)

    def record_cancelled(
        self,
        reason: str | None,
        *,
        source: Source,
        broker_timestamp: datetime | None,
        at: datetime,
    ) -> bool:
        """The broker cancelled the order. A repeated notice records nothing."""
        if self.lifecycle is OrderStatus.CANCELLED:
            return False
        self._refuse_unless_admitted(EventKind.CANCELLED, "the order has ended")
        self.trigger_event(
            self.Cancelled,
            timestamp=at,
            reason=reason,
            source=source,
            broker_timestamp=broker_timestamp,
        )
        return True

    def reject_cancel(self, reason: str, *, source: Source, at: datetime) -> bool:
        """The broker refused a cancellation. Without an open request: records nothing."""
        if self.pending is not EventKind.CANCEL_REQUESTED:
            return False
        self._refuse_unless_admitted(EventKind.CANCEL_REJECTED)
        self.trigger_event(self.CancelRejected, timestamp=at, reason=reason, source=source)
        return True

    def accept(
        self,
        broker_order_id: str,
        *,
        exchange_order_id: str | None,
        broker_timestamp: datetime | None,
        source: Source,
        at: datetime,
    ) -> bool:
        """The broker took the order. The same acceptance again records nothing; a
        different broker order id for the same order is an error."""
        if not broker_order_id.strip():
            raise InvalidCommand(
                "RecordAccepted", [Problem("broker_order_id", "must not be blank")]
            )
        if self.broker_order_id is not None:
            if self.broker_order_id != broker_order_id:
                raise BrokerIdMismatch(self.id, self.broker_order_id, broker_order_id)
            return False
        self._refuse_unless_admitted(EventKind.ACCEPTED)
        self.trigger_event(
            self.Accepted,
            timestamp=at,
            broker_order_id=broker_order_id,
            exchange_order_id=exchange_order_id,
            broker_timestamp=broker_timestamp,
            source=source,
        )
        return True

    def reject(
        self, reason: str, *, source: Source, broker_timestamp: datetime | None, at: datetime
    ) -> bool:
        """The order was refused. A repeated notice records nothing."""
        if self.lifecycle is OrderStatus.REJECTED:
            return False
        why = "it has fills" if self.filled_quantity else "the order has ended"
        if self.filled_quantity:
            raise TransitionRefused(self.id, self.status.value, "Rejected", why)
        self._refuse_unless_admitted(EventKind.REJECTED, why)
        self.trigger_event(
            self.Rejected,
            timestamp=at,
            reason=reason,
            source=source,
            broker_timestamp=broker_timestamp,
        )
        return True

    def trigger(self, triggered_at: datetime, *, source: Source, at: datetime) -> bool:
        """A stop order triggered. Only SL and SL-M orders trigger; once is enough."""
        if not self.order_type.needs_trigger_price:
            raise TransitionRefused(
                self.id,
                self.status.value,
                "Triggered",
                f"only SL and SL-M orders trigger, this is {self.order_type.value}",
            )
        if self.triggered_at is not None or self.lifecycle is OrderStatus.PARTIALLY_FILLED:
            return False
        self._refuse_unless_admitted(EventKind.TRIGGERED, "the order has ended")
        self.trigger_event(self.Triggered, timestamp=at, triggered_at=triggered_at, source=source)
        return True

    def expire(self, reason: str, *, source: Source, at: datetime) -> bool:
        """The order lapsed. A repeated notice records nothing."""
        if self.lifecycle is OrderStatus.EXPIRED:
            return False
        self._refuse_unless_admitted(EventKind.EXPIRED, "the order has ended")
        self.trigger_event(self.Expired, timestamp=at, reason=reason, source=source)
        return True

    def fill(
        self,
        trade_id: str,
        *,
        instrument: InstrumentRef,
        quantity: int,
        price: Decimal,
        exchange_timestamp: datetime | None,
        source: Source,
        charges: Decimal | None = None,
        at: datetime,
    ) -> bool:
        """Record a trade. A trade id the order already has is the same fill reported again
        (by another channel, or twice): it records nothing and returns False."""
        problems: list[Problem] = []
        if not trade_id.strip():
            problems.append(Problem("trade_id", "must not be blank"))
        if quantity <= 0:
            problems.append(Problem("quantity", f"must be greater than 0, got {quantity}"))
        if not price.is_finite() or price <= 0:
            problems.append(Problem("price", f"must be a positive amount, got {price}"))
        if charges is not None and (not charges.is_finite() or charges < 0):
            problems.append(Problem("charges", f"must not be negative, got {charges}"))
        if problems:
            raise InvalidCommand("RecordFill", problems)
        if trade_id in self.trade_ids:
            return False
        if instrument != self.instrument:
            raise InstrumentMismatch(self.id, str(self.instrument), str(instrument))
        if self.filled_quantity + quantity > self.quantity:
            raise Overfill(self.id, trade_id, quantity, self.filled_quantity, self.quantity)
        self._refuse_unless_admitted(EventKind.FILLED, "a rejected or completed order cannot fill")
        self.trigger_event(
            self.Filled,
            timestamp=at,
            trade_id=trade_id,
            account=self.account,
            instrument=instrument,
            side=self.side,
            product=self.product,
            strategy=self.strategy,
            quantity=quantity,
            price=price,
            exchange_timestamp=exchange_timestamp,
            source=source,
            charges=charges,
            multiplier=self.multiplier,
        )
        return True

    # ------------------------------------------------------------------ helpers

    def _apply_changes(self, changes: OrderChanges) -> OrderTerms:
        """The terms the order would have after `changes` (mirrors `Modified.apply`)."""
        order_type = changes.order_type or self.order_type
        if changes.order_type is not None:
            price = changes.price if order_type.needs_price else None
            trigger = changes.trigger_price if order_type.needs_trigger_price else None
        else:
            price = changes.price if changes.price is not None else self.price
            trigger = (
                changes.trigger_price if changes.trigger_price is not None else self.trigger_price
            )
        market_protection = self.market_protection
        if not order_type.needs_market_protection:
            market_protection = None
        return replace(
            self.terms,
            quantity=changes.quantity if changes.quantity is not None else self.quantity,
            order_type=order_type,
            validity=changes.validity or self.validity,
            disclosed_quantity=(
                changes.disclosed_quantity
                if changes.disclosed_quantity is not None
                else self.disclosed_quantity
            ),
            price=price,
            trigger_price=trigger,
            market_protection=market_protection,
        )

    def _check_changes(
        self,
        command: str,
        changes: OrderChanges,
        *,
        requested: bool,
        at: datetime,
        pending: OrderChanges | None = None,
    ) -> None:
        problems: list[Problem] = []
        _require_aware("at", at, problems)
        if changes.is_empty():
            problems.append(Problem("changes", "name at least one field to change"))
        new_terms = self._apply_changes(changes)
        if requested and pending is None and not changes.is_empty() and new_terms == self.terms:
            problems.append(Problem("changes", "the order already has these terms"))
        new_type = changes.order_type
        keeps_type = new_type is None or new_type is self.order_type
        if (
            requested
            and not keeps_type
            and new_type is not None
            and new_type.needs_market_protection
            and self.market_protection is None
        ):
            problems.append(
                Problem(
                    "order_type",
                    f"cannot change to {new_type.value}: the order carries no market protection",
                )
            )
        problems.extend(check_terms(new_terms, self.reference_instrument))
        if not requested or keeps_type:
            # Market protection is what the ledger asks of its own MARKET orders; the
            # broker reports no protection on an order it turned MARKET (a stop changed
            # in Kite's web app), and what the broker did is a fact, not a request. A
            # request that keeps the type cannot give the order protection either (a
            # modification carries none), so it is not refused for the order's own lack.
            problems = [p for p in problems if p.field != "market_protection"]
        if requested and 0 < new_terms.quantity <= self.filled_quantity:
            problems.append(
                Problem(
                    "quantity",
                    f"must be more than the {self.filled_quantity} already filled,"
                    f" got {new_terms.quantity}",
                )
            )
        elif 0 < new_terms.quantity < self.filled_quantity:
            # The broker may cut an order to what has filled (which completes it), never
            # below it.
            problems.append(
                Problem(
                    "quantity",
                    f"must not be less than the {self.filled_quantity} already filled,"
                    f" got {new_terms.quantity}",
                )
            )
        if problems:
            raise InvalidCommand(command, problems)


def _carries(terms: OrderTerms, asked: OrderChanges) -> bool:
    """Whether `terms` have every term a modification request asks for."""
    return all(
        value is None or getattr(terms, name) == value
        for name, value in (
            ("quantity", asked.quantity),
            ("price", asked.price),
            ("trigger_price", asked.trigger_price),
            ("order_type", asked.order_type),
            ("validity", asked.validity),
            ("disclosed_quantity", asked.disclosed_quantity),
        )
    )


def _merged_changes(pending: OrderChanges, new: OrderChanges) -> OrderChanges:
    """A modification asked for while another is pending: the new one's fields over the
    pending one's. A new order type names its own prices, so with one the pending
    request's prices are dropped."""
    new_type = new.order_type is not None
    return OrderChanges(
        quantity=new.quantity if new.quantity is not None else pending.quantity,
        price=new.price if new_type or new.price is not None else pending.price,
        trigger_price=(
            new.trigger_price
            if new_type or new.trigger_price is not None
            else pending.trigger_price
        ),
        order_type=new.order_type if new_type else pending.order_type,
        validity=new.validity if new.validity is not None else pending.validity,
        disclosed_quantity=(
            new.disclosed_quantity
            if new.disclosed_quantity is not None
            else pending.disclosed_quantity
        ),
    )


def _fill_row(fill: Fill) -> list[Any]:
    """A fill as the plain row `Order.fill_rows` keeps."""
    return [
        fill.trade_id,
        fill.quantity,
        str(fill.price),
        fill.exchange_timestamp.isoformat() if fill.exchange_timestamp else None,
        fill.source.value,
        fill.recorded_at.isoformat(),
        str(fill.charges) if fill.charges is not None else None,
    ]


def _require_aware(name: str, value: datetime, problems: list[Problem]) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        problems.append(Problem(name, "must be a timezone-aware datetime"))


#: Every order event class, in the order of DESIGN.md's event table.
ORDER_EVENT_CLASSES: tuple[type[Order.Event], ...] = (
    Order.Submitted,
    Order.Accepted,
    Order.Rejected,
    Order.ModifyRequested,
    Order.Modified,
    Order.ModifyRejected,
    Order.Triggered,
    Order.Filled,
    Order.CancelRequested,
    Order.Cancelled,
    Order.CancelRejected,
    Order.Expired,
)

__all__ = ["ORDER_EVENT_CLASSES", "Exchange", "Order"]
