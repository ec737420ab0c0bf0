"""Given events / when command / then events or error, for the Order aggregate.

`given(...)` folds real event objects (not commands) into an order, the way a replay does;
`when(order, action)` runs one decision and returns the new events, or the error raised.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from ledger.domain.identity import order_id_for, tag_for
from ledger.domain.order import Order
from ledger.domain.values import (
    Exchange,
    InstrumentRef,
    OrderChanges,
    OrderType,
    Product,
    Side,
    Source,
    Validity,
    Variety,
)
from tests.support import START

ORDER_ID = order_id_for("AB1234", "c-1")
SBIN = InstrumentRef(Exchange.NSE, "SBIN")
D = Decimal

EventSpec = Callable[[int], Order.Event]


def at(version: int) -> datetime:
    return START + timedelta(seconds=version)


def _event(cls: type[Order.Event], **fields: Any) -> EventSpec:
    def build(version: int) -> Order.Event:
        make: Any = cls  # a dataclass at run time; the type checker cannot see its fields
        event: Order.Event = make(
            originator_id=ORDER_ID,
            originator_version=version,
            timestamp=at(version),
            previous_hash=None,
            **fields,
        )
        return event

    return build


def submitted(**overrides: Any) -> EventSpec:
    """A BUY stop-limit (SL) of 100 SBIN: limit 812.35, trigger 812.00 (so it can trigger)."""
    fields: dict[str, Any] = {
        "originator_topic": Order.TOPIC,
        "account": "AB1234",
        "client_order_id": "c-1",
        "instrument": SBIN,
        "side": Side.BUY,
        "quantity": 100,
        "order_type": OrderType.SL,
        "product": Product.CNC,
        "variety": Variety.REGULAR,
        "validity": Validity.DAY,
        "validity_ttl": None,
        "price": D("812.35"),
        "trigger_price": D("812.00"),
        "disclosed_quantity": 0,
        "market_protection": None,
        "tag": tag_for(ORDER_ID),
        "strategy": "s1",
        "reference_price": D("812.10"),
        "actor": "test",
        "tick_size": D("0.05"),
        "lot_size": 1,
        "expiry": None,
        "multiplier": 1,
    }
    fields.update(overrides)
    return _event(Order.Submitted, **fields)


def accepted(broker_order_id: str = "B-1") -> EventSpec:
    return _event(
        Order.Accepted,
        broker_order_id=broker_order_id,
        exchange_order_id="X-1",
        broker_timestamp=None,
        source=Source.BROKER,
    )


def rejected(reason: str = "RMS: margin exceeds") -> EventSpec:
    return _event(Order.Rejected, reason=reason, source=Source.BROKER, broker_timestamp=None)


def filled(trade_id: str, quantity: int, price: str = "812.35") -> EventSpec:
    return _event(
        Order.Filled,
        trade_id=trade_id,
        account="AB1234",
        instrument=SBIN,
        side=Side.BUY,
        product=Product.CNC,
        strategy="s1",
        quantity=quantity,
        price=D(price),
        exchange_timestamp=None,
        source=Source.POSTBACK,
        charges=None,
        multiplier=1,
    )


def triggered() -> EventSpec:
    return _event(Order.Triggered, triggered_at=START, source=Source.POSTBACK)


def modify_requested(**changes: Any) -> EventSpec:
    return _event(Order.ModifyRequested, changes=OrderChanges(**changes), actor="test")


def modified(**changes: Any) -> EventSpec:
    return _event(
        Order.Modified,
        changes=OrderChanges(**changes),
        source=Source.BROKER,
        broker_timestamp=None,
        closes_request=True,
    )


def modify_rejected() -> EventSpec:
    return _event(Order.ModifyRejected, reason="no", source=Source.BROKER)


def cancel_requested() -> EventSpec:
    return _event(Order.CancelRequested, reason=None, actor="test")


def cancelled() -> EventSpec:
    return _event(Order.Cancelled, reason=None, source=Source.BROKER, broker_timestamp=None)


def cancel_rejected() -> EventSpec:
    return _event(Order.CancelRejected, reason="order complete", source=Source.BROKER)


def expired() -> EventSpec:
    return _event(Order.Expired, reason="day end", source=Source.BROKER)


def given(*specs: EventSpec) -> Order:
    """The order that these events, replayed in turn, make."""
    order: Order | None = None
    for version, spec in enumerate(specs, start=1):
        order = spec(version).mutate(order)
    assert order is not None
    return order


def when(order: Order, action: Callable[[Order], object]) -> list[Order.Event] | Exception:
    """Run one decision; the new events, or the error it raised."""
    try:
        action(order)
    except Exception as error:
        assert not order.pending_events, "a refused decision left events behind"
        return error
    return [e for e in order.collect_events() if isinstance(e, Order.Event)]


NOW = at(1000)


def fill_action(
    trade_id: str,
    quantity: int,
    price: str = "812.35",
    *,
    instrument: InstrumentRef = SBIN,
    source: Source = Source.POLL,
) -> Callable[[Order], object]:
    """The decision to record a fill, for `when`."""
    return lambda o: o.fill(
        trade_id,
        instrument=instrument,
        quantity=quantity,
        price=D(price),
        exchange_timestamp=None,
        source=source,
        at=NOW,
    )


# The decisions, by the event kind they lead to (used by the table-driven tests).
ACTIONS: dict[str, Callable[[Order], object]] = {
    "Accepted": lambda o: o.accept(
        "B-1", exchange_order_id=None, broker_timestamp=None, source=Source.BROKER, at=NOW
    ),
    "Rejected": lambda o: o.reject("no", source=Source.BROKER, broker_timestamp=None, at=NOW),
    "ModifyRequested": lambda o: o.request_modify(
        OrderChanges(price=D("812.50")), actor="t", at=NOW
    ),
    "Modified": lambda o: o.record_modified(
        OrderChanges(price=D("812.60")), source=Source.BROKER, broker_timestamp=None, at=NOW
    ),
    "ModifyRejected": lambda o: o.reject_modify("no", source=Source.BROKER, at=NOW),
    "Triggered": lambda o: o.trigger(START, source=Source.POSTBACK, at=NOW),
    "Filled": fill_action("T-new", 10),
    "CancelRequested": lambda o: o.request_cancel(None, actor="t", at=NOW),
    "Cancelled": lambda o: o.record_cancelled(
        None, source=Source.BROKER, broker_timestamp=None, at=NOW
    ),
    "CancelRejected": lambda o: o.reject_cancel("no", source=Source.BROKER, at=NOW),
    "Expired": lambda o: o.expire("day end", source=Source.BROKER, at=NOW),
}
