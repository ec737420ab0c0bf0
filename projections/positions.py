"""Positions per account, exchange, tradingsymbol and product, by the average-cost method.

* Adding to a position (or opening one) moves the average price to the quantity-weighted
  mean of the old position and the fill.
* Reducing a position keeps the average and realises (fill price - average) x quantity
  (the other way round for a short).
* A fill larger than the position flips it: the old side is closed at the fill price and
  the rest opens a new position at the fill price.

Unrealised P&L is (mark - average) x net quantity x multiplier, for marks the caller gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import ClassVar

from ledger.domain.order import Order
from ledger.domain.values import InstrumentRef, Side
from projections.base import ZERO, Key, Projection, Table, View, divide, money


@dataclass(frozen=True, slots=True)
class Position:
    """One position row."""

    account: str
    exchange: str
    tradingsymbol: str
    product: str
    net_quantity: int
    average_price: Decimal
    realised_pnl: Decimal
    buy_quantity: int
    buy_value: Decimal
    sell_quantity: int
    sell_value: Decimal
    charges: Decimal
    multiplier: int

    @property
    def instrument(self) -> InstrumentRef:
        from ledger.domain.values import Exchange

        return InstrumentRef(Exchange(self.exchange), self.tradingsymbol)

    def unrealised_pnl(self, mark: Decimal | None) -> Decimal:
        """Against `mark`; zero for a flat position or when no mark is known."""
        if mark is None or self.net_quantity == 0:
            return ZERO
        return money((mark - self.average_price) * self.net_quantity * self.multiplier)


def open_position(
    account: str, exchange: str, tradingsymbol: str, product: str, multiplier: int = 1
) -> Position:
    return Position(
        account=account,
        exchange=exchange,
        tradingsymbol=tradingsymbol,
        product=product,
        net_quantity=0,
        average_price=ZERO,
        realised_pnl=ZERO,
        buy_quantity=0,
        buy_value=ZERO,
        sell_quantity=0,
        sell_value=ZERO,
        charges=ZERO,
        multiplier=multiplier,
    )


def apply_fill(
    position: Position, side: Side, quantity: int, price: Decimal, charges: Decimal | None = None
) -> tuple[Position, Decimal]:
    """The position after a fill, and the P&L the fill realised. Pure."""
    signed = quantity * side.sign
    net = position.net_quantity
    average = position.average_price
    realised = ZERO
    if net == 0 or (net > 0) == (signed > 0):
        new_net = net + signed
        average = divide(average * abs(net) + price * quantity, abs(new_net))
    else:
        closing = min(quantity, abs(net))
        direction = 1 if net > 0 else -1
        realised = money((price - average) * closing * direction * position.multiplier)
        new_net = net + signed
        if new_net == 0:
            average = ZERO
        elif (new_net > 0) != (net > 0):
            average = price  # flipped: the remainder opens at the fill price
    if side is Side.BUY:
        buys = (position.buy_quantity + quantity, money(position.buy_value + price * quantity))
        sells = (position.sell_quantity, position.sell_value)
    else:
        buys = (position.buy_quantity, position.buy_value)
        sells = (position.sell_quantity + quantity, money(position.sell_value + price * quantity))
    updated = replace(
        position,
        net_quantity=new_net,
        average_price=money(average),
        realised_pnl=money(position.realised_pnl + realised),
        buy_quantity=buys[0],
        buy_value=buys[1],
        sell_quantity=sells[0],
        sell_value=sells[1],
        charges=money(position.charges + (charges or ZERO)),
    )
    return updated, realised


def fills_position(fills: Iterable[tuple[Side, int, Decimal]], multiplier: int = 1) -> Position:
    """The position a sequence of (side, quantity, price) fills makes (examples, tests)."""
    position = open_position("", "", "", "", multiplier)
    for side, quantity, price in fills:
        position, _ = apply_fill(position, side, quantity, price)
    return position


class PositionsProjection(Projection):
    """Account-level positions, the way Kite's `positions()` reports them."""

    name: ClassVar[str] = "positions"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table, ...]] = (
        Table("positions", Position, ("account", "exchange", "tradingsymbol", "product")),
    )
    handles: ClassVar[tuple[type[Order.Event], ...]] = (Order.Filled,)

    def __init__(self, multipliers: Mapping[InstrumentRef, int] | None = None) -> None:
        self.multipliers = dict(multipliers or {})

    def apply(self, view: View, event: Order.Event, position: int) -> None:
        assert isinstance(event, Order.Filled)
        key: Key = (
            event.account,
            event.instrument.exchange.value,
            event.instrument.tradingsymbol,
            event.product.value,
        )
        current = view.get("positions", key) or open_position(
            event.account,
            event.instrument.exchange.value,
            event.instrument.tradingsymbol,
            event.product.value,
            multiplier=self.multipliers.get(event.instrument, 1),
        )
        updated, _ = apply_fill(current, event.side, event.quantity, event.price, event.charges)
        view.put("positions", key, updated)


def positions_of(view: View) -> list[Position]:
    """Every position row, in a stable order."""
    return sorted(
        view.rows("positions"),
        key=lambda p: (p.account, p.exchange, p.tradingsymbol, p.product),
    )
