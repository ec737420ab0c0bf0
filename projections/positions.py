"""Positions per account, exchange, tradingsymbol and product, by the average-cost method.

* Adding to a position (or opening one) moves the average price to the quantity-weighted
  mean of the old position and the fill.
* Reducing a position keeps the average and realises (fill price - average) x quantity
  (the other way round for a short).
* A fill larger than the position flips it: the old side is closed at the fill price and
  the rest opens a new position at the fill price.

Prices and the average are per unit as quoted; P&L and values are in rupees, so where
Kite's quantity counts contracts (CDS, BCD, MCX) they are times the contract's multiplier,
which every fill carries (as Kite's `positions()` does: its buy and sell values include it).
Unrealised P&L is (mark - average) x net quantity x multiplier, for marks the caller gives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, ClassVar, Final

from ledger.domain.order import Order
from ledger.domain.values import InstrumentRef, Side
from projections.base import (
    ZERO,
    Key,
    Projection,
    Record,
    Table,
    View,
    Working,
    divide,
    fill_of,
    money,
)


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


#: A position's figures before any fill, in `Position`'s field order (net_quantity through
#: charges): where the folds make a row for a new position or book.
NO_FILLS: Final = (0, ZERO, ZERO, 0, ZERO, 0, ZERO, ZERO)


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


def fill_cell(
    cell: Any,
    sign: int,
    quantity: int,
    price: Decimal,
    value: Decimal,
    charges: Decimal | None,
    multiplier: int = 1,
) -> Decimal:
    """Apply a fill to a position cell (anything with Position's fields) in place; returns
    the P&L it realised. The average-cost method, exact; the one definition of it.

    `value` is price x quantity; the fill's `multiplier` scales what it realises and adds to
    the cell's rupee values, and becomes the cell's (a contract's multiplier does not
    change; fills recorded before it was, read as 1, are realised at the one they carry)."""
    signed = quantity * sign
    net = cell.net_quantity
    realised = ZERO
    if net == 0 or (net > 0) == (signed > 0):
        new_net = net + signed
        cell.average_price = divide(cell.average_price * abs(net) + value, abs(new_net))
    else:
        closing = min(quantity, abs(net))
        direction = 1 if net > 0 else -1
        realised = (price - cell.average_price) * closing * direction * multiplier
        cell.realised_pnl += realised
        new_net = net + signed
        if new_net == 0:
            cell.average_price = ZERO
        elif (new_net > 0) != (net > 0):
            cell.average_price = price  # flipped: the remainder opens at the fill price
    cell.net_quantity = new_net
    cell.multiplier = multiplier
    if multiplier != 1:
        value = value * multiplier
    if sign > 0:
        cell.buy_quantity += quantity
        cell.buy_value += value
    else:
        cell.sell_quantity += quantity
        cell.sell_value += value
    if charges is not None:
        cell.charges += charges
    return realised


def apply_fill(
    position: Position, side: Side, quantity: int, price: Decimal, charges: Decimal | None = None
) -> tuple[Position, Decimal]:
    """The position after a fill, and the P&L the fill realised. Pure."""
    cell = SimpleNamespace(**{f.name: getattr(position, f.name) for f in fields(position)})
    realised = fill_cell(
        cell, side.sign, quantity, price, price * quantity, charges, position.multiplier
    )
    updated = replace(
        position,
        net_quantity=cell.net_quantity,
        average_price=money(cell.average_price),
        realised_pnl=money(cell.realised_pnl),
        buy_quantity=cell.buy_quantity,
        buy_value=money(cell.buy_value),
        sell_quantity=cell.sell_quantity,
        sell_value=money(cell.sell_value),
        charges=money(cell.charges),
    )
    return updated, money(realised)


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

    def apply_record(self, working: Working, record: Record) -> None:
        fill = fill_of(record)
        key: Key = (fill.account, fill.exchange, fill.tradingsymbol, fill.product)
        cell = working.cells["positions"].get(key)
        if cell is None:
            cell = working.cells["positions"][key] = _POSITIONS.cell(
                *key,
                *NO_FILLS,
                fill.multiplier,
            )
        fill_cell(
            cell, fill.sign, fill.quantity, fill.price, fill.value, fill.charges, fill.multiplier
        )
        working.changed["positions"][key] = cell


_POSITIONS: Final = PositionsProjection.tables[0]


def positions_of(view: View) -> list[Position]:
    """Every position row, in a stable order."""
    return sorted(
        view.rows("positions"),
        key=lambda p: (p.account, p.exchange, p.tradingsymbol, p.product),
    )
