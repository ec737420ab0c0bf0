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
from dataclasses import asdict, dataclass
from datetime import date
from decimal import Decimal
from typing import ClassVar, Literal

from ledger.domain.order import Order
from ledger.domain.values import Exchange, InstrumentRef
from projections.base import ZERO, Key, Projection, Table, View, money, trading_day
from projections.positions import Position, apply_fill, open_position


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

    def __init__(self, multipliers: Mapping[InstrumentRef, int] | None = None) -> None:
        self.multipliers = dict(multipliers or {})

    def apply(self, view: View, event: Order.Event, position: int) -> None:
        assert isinstance(event, Order.Filled)
        strategy = event.strategy or ""
        exchange, symbol = event.instrument.exchange.value, event.instrument.tradingsymbol
        product = event.product.value
        book_key: Key = (event.account, strategy, exchange, symbol, product)
        book = view.get("pnl_books", book_key) or Book(
            **asdict(
                open_position(
                    event.account,
                    exchange,
                    symbol,
                    product,
                    multiplier=self.multipliers.get(event.instrument, 1),
                )
            ),
            strategy=strategy,
        )
        book, realised = apply_fill(book, event.side, event.quantity, event.price, event.charges)
        view.put("pnl_books", book_key, book)

        day = trading_day(event.exchange_timestamp, event.timestamp)
        day_key: Key = (*book_key, day)
        daily = view.get("pnl_daily", day_key) or DailyPnl(
            event.account, strategy, exchange, symbol, product, day, ZERO, ZERO, 0, 0, ZERO
        )
        buy = event.side.sign > 0
        view.put(
            "pnl_daily",
            day_key,
            DailyPnl(
                daily.account,
                daily.strategy,
                daily.exchange,
                daily.tradingsymbol,
                daily.product,
                daily.day,
                realised_pnl=money(daily.realised_pnl + realised),
                charges=money(daily.charges + (event.charges or ZERO)),
                bought=daily.bought + (event.quantity if buy else 0),
                sold=daily.sold + (0 if buy else event.quantity),
                turnover=money(daily.turnover + event.price * event.quantity),
            ),
        )


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
