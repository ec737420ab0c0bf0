"""Broker reconciliation: the ledger's positions against Kite's `positions()` payload.

Kite answers `{"net": [...], "day": [...]}`. `net` is the position as it stands: what was
carried forward plus what was traded today; `day` is today's buying and selling only. The
ledger's log spans every day, so each is compared with what it is like:

* net quantity, per exchange, tradingsymbol and product: the ledger's position over the
  whole log against `net`. A flat ledger position and a position Kite does not list are
  the same thing (Kite drops positions closed on an earlier day: comparing them made
  every reconciliation from the second trading day on fail). Delivery products (CNC, MTF)
  are the exception: Kite moves them to holdings after their trading day, so `net` lists
  only today's part of them, and that is what they are compared with (holdings are not
  reconciled here).
* bought and sold quantities and values, and the average price as Kite defines it
  (`kite_average_price`): the ledger's fills of today's trading day (IST; a fill's day is
  its exchange time's, or its record time's if the exchange gave none) against `day`.
  Over the whole log they differed from the day's as soon as there was a yesterday.

Amounts differ when they are more than half a paisa apart, all that Kite's rounding to
the paisa explains. A clean reconciliation is an empty list of differences.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from ledger.domain.order import Order
from ledger.domain.values import IST
from projections.base import ZERO, divide
from projections.positions import Position, PositionsProjection

#: How far the broker's average price may be from the ledger's before it is a difference:
#: half a paisa, all that rounding to the paisa can explain. (It was 0.01 compared with `>`,
#: so a broker average a whole paisa off, a rupee on 100 shares, reconciled clean.)
DEFAULT_PRICE_TOLERANCE = Decimal("0.005")

#: Products whose positions Kite moves to holdings after their trading day.
DELIVERY_PRODUCTS: Final = frozenset({"CNC", "MTF"})

Key = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Difference:
    exchange: str
    tradingsymbol: str
    product: str
    field: str
    ledger: str
    broker: str

    def __str__(self) -> str:
        return (
            f"{self.exchange}:{self.tradingsymbol} {self.product}: {self.field}"
            f" ledger={self.ledger} broker={self.broker}"
        )


@dataclass(frozen=True)
class ReconciliationReport:
    account: str
    matched: int
    differences: list[Difference] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.differences


class BrokerPayloadError(ValueError):
    """The broker's positions payload is not in Kite's shape; the message says where."""


def _decimal(entry: Mapping[str, Any], name: str, where: str) -> Decimal:
    value = entry.get(name, 0)
    if isinstance(value, float):
        value = repr(value)  # Kite's JSON numbers: keep the digits it sent
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise BrokerPayloadError(f"{where}: {name}: not a number: {value!r}") from None


def _int(entry: Mapping[str, Any], name: str, where: str) -> int:
    value = entry.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BrokerPayloadError(f"{where}: {name}: not a whole number: {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise BrokerPayloadError(f"{where}: {name}: not a whole number: {value!r}") from None
    if number != number.to_integral_value():
        raise BrokerPayloadError(f"{where}: {name}: not a whole number: {value!r}")
    return int(number)


def kite_average_price(position: Position) -> Decimal:
    """A position's average price as Kite's `positions()` gives it: the average price of
    what was bought while the position is long (buy_value / buy_quantity), of what was
    sold while it is short, per unit (the values include the contract multiplier).

    Not the ledger's `average_price`, which is the average cost of the open quantity
    (reductions keep it, additions move it): after buying 10 at 800, selling 5 at 820 and
    buying 10 at 840 that is 826.67, and Kite's (and the sandbox's) 820. Compared with
    each other, every position reduced and added to was a difference."""
    if position.net_quantity > 0:
        value, quantity = position.buy_value, position.buy_quantity
    elif position.net_quantity < 0:
        value, quantity = position.sell_value, position.sell_quantity
    else:
        return ZERO
    return divide(value, quantity * position.multiplier)


def trading_day(fill: Order.Filled) -> date:
    """The trading day (IST) of a fill: its exchange time's, or its record time's where the
    exchange gave none."""
    when = fill.exchange_timestamp or fill.timestamp
    if when.tzinfo is None:  # Kite's times are IST
        when = when.replace(tzinfo=IST)
    return when.astimezone(IST).date()


def ledger_positions(
    events: Iterable[tuple[int, Order.Event]], day: date
) -> tuple[list[Position], list[Position]]:
    """The ledger's positions over the whole log, and over the fills of trading day `day`
    only: the two sides `reconcile` compares with Kite's `net` and `day`."""
    events = list(events)
    today = [(n, e) for n, e in events if isinstance(e, Order.Filled) and trading_day(e) == day]
    projection = PositionsProjection()
    return (
        list(projection.fold(events).rows("positions")),
        list(projection.fold(today).rows("positions")),
    )


def _entries(payload: Mapping[str, Any], bucket: str) -> dict[Key, Mapping[str, Any]]:
    entries: dict[Key, Mapping[str, Any]] = {}
    for index, entry in enumerate(payload[bucket]):
        where = f"{bucket}[{index}]"
        if not isinstance(entry, Mapping):
            raise BrokerPayloadError(f"{where}: expected an object")
        try:
            key = (str(entry["exchange"]), str(entry["tradingsymbol"]), str(entry["product"]))
        except KeyError as missing:
            raise BrokerPayloadError(f"{where}: missing field {missing}") from None
        entries[key] = entry
    return entries


def reconcile(
    account: str,
    ledger_positions: Iterable[Position],
    broker_payload: Mapping[str, Any],
    *,
    day_positions: Iterable[Position],
    price_tolerance: Decimal = DEFAULT_PRICE_TOLERANCE,
) -> ReconciliationReport:
    """Every difference between the ledger's positions for `account` and the broker's:
    `ledger_positions` (over the whole log) against the payload's `net`, `day_positions`
    (over today's fills, `ledger_positions()`) against its `day` (module doc)."""
    payload = broker_payload.get("data", broker_payload)
    if not isinstance(payload, Mapping) or not isinstance(payload.get("net"), list):
        raise BrokerPayloadError("positions payload: expected an object with a 'net' list")
    net = _entries(payload, "net")
    if not isinstance(payload.get("day"), list):
        raise BrokerPayloadError("positions payload: expected a 'day' list beside 'net'")
    day = _entries(payload, "day")
    ours = {
        (p.exchange, p.tradingsymbol, p.product): p
        for p in ledger_positions
        if p.account == account
    }
    today = {
        (p.exchange, p.tradingsymbol, p.product): p for p in day_positions if p.account == account
    }
    differences: list[Difference] = []
    matched = 0
    for key in sorted(set(ours) | set(net)):
        mine, theirs = (today if key[2] in DELIVERY_PRODUCTS else ours).get(key), net.get(key)
        ledger_quantity = mine.net_quantity if mine is not None else 0
        broker_quantity = _int(theirs, "quantity", f"net {key[0]}:{key[1]}") if theirs else 0
        if key in ours and theirs is not None:
            matched += 1
        if ledger_quantity == broker_quantity:
            continue  # flat in the ledger and not listed at Kite are the same
        if theirs is None:
            differences.append(Difference(*key, "position", str(ledger_quantity), "missing"))
        elif key not in ours:
            differences.append(Difference(*key, "position", "missing", str(broker_quantity)))
        else:
            differences.append(
                Difference(*key, "quantity", str(ledger_quantity), str(broker_quantity))
            )
    for key in sorted(set(today) | set(day)):
        differences += _day_differences(key, today.get(key), day.get(key), price_tolerance)
    return ReconciliationReport(account=account, matched=matched, differences=differences)


def _day_differences(
    key: Key,
    mine: Position | None,
    theirs: Mapping[str, Any] | None,
    price_tolerance: Decimal,
) -> list[Difference]:
    """Today's buying and selling of one position: the ledger's fills of the day against
    Kite's `day` entry (an absent side is all zeros)."""
    where = f"day {key[0]}:{key[1]}"
    entry: Mapping[str, Any] = theirs if theirs is not None else {}
    differences: list[Difference] = []
    for name in ("buy_quantity", "sell_quantity"):
        ledger_quantity = getattr(mine, name) if mine is not None else 0
        broker_quantity = _int(entry, name, where)
        if ledger_quantity != broker_quantity:
            differences.append(
                Difference(*key, f"day_{name}", str(ledger_quantity), str(broker_quantity))
            )
    for name in ("buy_value", "sell_value"):
        if theirs is not None and name not in theirs:
            continue  # Kite always sends them; a payload without them says nothing
        ledger_amount = getattr(mine, name) if mine is not None else ZERO
        broker_amount = _decimal(entry, name, where)
        if abs(broker_amount - ledger_amount) > price_tolerance:
            differences.append(
                Difference(*key, f"day_{name}", str(ledger_amount), str(broker_amount))
            )
    if (
        mine is not None
        and theirs is not None
        and mine.net_quantity != 0
        and mine.net_quantity == _int(theirs, "quantity", where)
    ):
        broker_average = _decimal(theirs, "average_price", where)
        ledger_average = kite_average_price(mine)
        if abs(broker_average - ledger_average) > price_tolerance:
            differences.append(
                Difference(*key, "day_average_price", str(ledger_average), str(broker_average))
            )
    return differences
