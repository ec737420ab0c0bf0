"""P&L: realised, unrealised, charges and net, per instrument, strategy and day.

Each strategy keeps its own book per instrument and product (its own average cost), so a
strategy's P&L does not depend on what another strategy traded. Realised P&L and charges
are attributed to the Indian trading day of the fill. Unrealised P&L is computed against
marks the caller gives, at read time; in the by-day view it belongs to the day the report
is for (the latest trading day seen, unless told otherwise).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import ClassVar, Final, Literal

from ledger.domain.order import Order
from ledger.domain.values import Exchange, InstrumentRef
from projections.base import (
    ZERO,
    Key,
    Projection,
    Record,
    Table,
    View,
    Working,
    fill_of,
    money,
    trading_day_of,
)
from projections.positions import NO_FILLS, Position, fill_cell


@dataclass(frozen=True, slots=True)
class Book(Position):
    """A strategy's position in one instrument and product."""

    strategy: str


@dataclass(frozen=True, slots=True)
class DailyPnl:
    """What one strategy realised and paid in one instrument on one trading day."""

    account: str
    strategy: str
    exchange: str
    tradingsymbol: str
    product: str
    day: date
    realised_pnl: Decimal
    charges: Decimal
    bought: int
    sold: int
    turnover: Decimal


class PnlProjection(Projection):
    name: ClassVar[str] = "pnl"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table, ...]] = (
        Table("pnl_books", Book, ("account", "strategy", "exchange", "tradingsymbol", "product")),
        Table(
            "pnl_daily",
            DailyPnl,
            ("account", "strategy", "exchange", "tradingsymbol", "product", "day"),
        ),
    )
    handles: ClassVar[tuple[type[Order.Event], ...]] = (Order.Filled,)

    def apply_record(self, working: Working, record: Record) -> None:
        fill = fill_of(record)
        book_key: Key = (
            fill.account,
            fill.strategy,
            fill.exchange,
            fill.tradingsymbol,
            fill.product,
        )
        books = working.cells["pnl_books"]
        book = books.get(book_key)
        if book is None:
            book = books[book_key] = _BOOKS.cell(
                fill.account,
                fill.exchange,
                fill.tradingsymbol,
                fill.product,
                *NO_FILLS,
                fill.multiplier,
                fill.strategy,
            )
        realised = fill_cell(
            book, fill.sign, fill.quantity, fill.price, fill.value, fill.charges, fill.multiplier
        )
        working.changed["pnl_books"][book_key] = book

        state = record.state
        day = trading_day_of(state["exchange_timestamp"], state["timestamp"])
        day_key: Key = (*book_key, day)
        dailies = working.cells["pnl_daily"]
        daily = dailies.get(day_key)
        if daily is None:
            daily = dailies[day_key] = _DAILY.cell(*day_key, ZERO, ZERO, 0, 0, ZERO)
        daily.realised_pnl += realised
        if fill.charges is not None:
            daily.charges += fill.charges
        if fill.sign > 0:
            daily.bought += fill.quantity
        else:
            daily.sold += fill.quantity
        daily.turnover += fill.value * fill.multiplier
        working.changed["pnl_daily"][day_key] = daily


_BOOKS: Final = PnlProjection.tables[0]
_DAILY: Final = PnlProjection.tables[1]


Grouping = Literal["instrument", "strategy", "day"]


@dataclass(frozen=True, slots=True)
class PnlLine:
    """One line of a P&L report."""

    group: str
    realised_pnl: Decimal
    unrealised_pnl: Decimal
    charges: Decimal

    @property
    def net_pnl(self) -> Decimal:
        return money(self.realised_pnl + self.unrealised_pnl - self.charges)


def pnl_report(
    view: View,
    by: Grouping = "instrument",
    marks: Mapping[InstrumentRef, Decimal] | None = None,
    day: date | None = None,
) -> list[PnlLine]:
    """P&L lines grouped `by` instrument, strategy or day, sorted by group."""
    marks = marks or {}
    realised: dict[str, Decimal] = defaultdict(lambda: ZERO)
    unrealised: dict[str, Decimal] = defaultdict(lambda: ZERO)
    charges: dict[str, Decimal] = defaultdict(lambda: ZERO)
    dailies: list[DailyPnl] = list(view.rows("pnl_daily"))
    report_day = day or max((d.day for d in dailies), default=None)

    def group_of(row: DailyPnl | Book, row_day: date | None) -> str:
        if by == "instrument":
            return f"{row.exchange}:{row.tradingsymbol}"
        if by == "strategy":
            return row.strategy or "(none)"
        return row_day.isoformat() if row_day else "(none)"

    for daily in dailies:
        group = group_of(daily, daily.day)
        realised[group] += daily.realised_pnl
        charges[group] += daily.charges
    for book in view.rows("pnl_books"):
        ref = InstrumentRef(Exchange(book.exchange), book.tradingsymbol)
        amount = book.unrealised_pnl(marks.get(ref))
        if amount:
            unrealised[group_of(book, report_day)] += amount
    groups = sorted(set(realised) | set(unrealised) | set(charges))
    return [PnlLine(g, money(realised[g]), money(unrealised[g]), money(charges[g])) for g in groups]
