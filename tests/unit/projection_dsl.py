"""Events for projection tests: fills and whole orders, as the log would hold them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid5

from ledger.domain.order import Order
from ledger.domain.values import InstrumentRef, Product, Side, Source
from projections.base import Projection, View
from tests.unit.dsl import ORDER_ID, SBIN, at


def order_uuid(n: int) -> UUID:
    return uuid5(ORDER_ID, str(n))


def fill_event(
    trade_id: str,
    side: Side,
    quantity: int,
    price: str,
    *,
    order: int,
    version: int = 2,
    product: Product = Product.CNC,
    account: str = "AB1234",
    strategy: str | None = "s1",
    charges: str | None = None,
    day: int = 0,
    instrument: InstrumentRef = SBIN,
    multiplier: int = 1,
) -> Order.Filled:
    make: Any = Order.Filled  # a dataclass at run time; the type checker cannot see that
    event: Order.Filled = make(
        originator_id=order_uuid(order),
        originator_version=version,
        timestamp=at(version) + timedelta(days=day),
        previous_hash=None,
        trade_id=trade_id,
        account=account,
        instrument=instrument,
        side=side,
        product=product,
        strategy=strategy,
        quantity=quantity,
        price=Decimal(price),
        exchange_timestamp=None,
        source=Source.POSTBACK,
        charges=Decimal(charges) if charges is not None else None,
        multiplier=multiplier,
    )
    return event


def fold(projection: Projection, events: Iterable[Order.Event]) -> View:
    return projection.fold((n, e) for n, e in enumerate(events, start=1))


def order_events(n: int, *specs: object) -> list[Order.Event]:
    """The events the order DSL's specs make, for order number `n` (its own id)."""
    import dataclasses

    events: list[Order.Event] = []
    for version, spec in enumerate(specs, start=1):
        event = spec(version)  # type: ignore[operator]
        events.append(dataclasses.replace(event, originator_id=order_uuid(n)))
    return events
