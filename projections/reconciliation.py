"""Broker reconciliation: the ledger's positions against Kite's `positions()` payload.

Kite answers `{"net": [...], "day": [...]}`; the `net` list is what a position is at the
broker. Each entry is matched to the ledger's position by exchange, tradingsymbol and
product, and every difference is reported: quantity, bought and sold quantities and
values, average price (as Kite defines it: `kite_average_price`), and positions one side
has and the other lacks. Amounts differ when they are more than half a paisa apart, all
that Kite's rounding to the paisa explains. A clean reconciliation is an empty list of differences.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from projections.base import ZERO, divide
from projections.positions import Position

#: How far the broker's average price may be from the ledger's before it is a difference:
#: half a paisa, all that rounding to the paisa can explain. (It was 0.01 compared with `>`,
#: so a broker average a whole paisa off, a rupee on 100 shares, reconciled clean.)
DEFAULT_PRICE_TOLERANCE = Decimal("0.005")


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


def reconcile(
    account: str,
    ledger_positions: Iterable[Position],
    broker_payload: Mapping[str, Any],
    *,
    price_tolerance: Decimal = DEFAULT_PRICE_TOLERANCE,
) -> ReconciliationReport:
    """Every difference between the ledger's positions for `account` and the broker's."""
    payload = broker_payload.get("data", broker_payload)
    if not isinstance(payload, Mapping) or not isinstance(payload.get("net"), list):
        raise BrokerPayloadError("positions payload: expected an object with a 'net' list")
    broker: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for index, entry in enumerate(payload["net"]):
        where = f"net[{index}]"
        if not isinstance(entry, Mapping):
            raise BrokerPayloadError(f"{where}: expected an object")
        try:
            key = (str(entry["exchange"]), str(entry["tradingsymbol"]), str(entry["product"]))
        except KeyError as missing:
            raise BrokerPayloadError(f"{where}: missing field {missing}") from None
        broker[key] = entry
    ours = {
        (p.exchange, p.tradingsymbol, p.product): p
        for p in ledger_positions
        if p.account == account
    }
    differences: list[Difference] = []
    matched = 0
    for key in sorted(set(ours) | set(broker)):
        mine, theirs = ours.get(key), broker.get(key)
        where = f"{key[0]}:{key[1]}"
        if theirs is None:
            assert mine is not None
            if mine.net_quantity != 0 or mine.buy_quantity or mine.sell_quantity:
                differences.append(Difference(*key, "position", str(mine.net_quantity), "missing"))
            continue
        quantity = _int(theirs, "quantity", where)
        if mine is None:
            if (
                quantity != 0
                or _int(theirs, "buy_quantity", where)
                or _int(theirs, "sell_quantity", where)
            ):
                differences.append(Difference(*key, "position", "missing", str(quantity)))
            continue
        matched += 1
        if mine.net_quantity != quantity:
            differences.append(Difference(*key, "quantity", str(mine.net_quantity), str(quantity)))
        for name, ledger_value in (
            ("buy_quantity", mine.buy_quantity),
            ("sell_quantity", mine.sell_quantity),
        ):
            broker_value = _int(theirs, name, where)
            if ledger_value != broker_value:
                differences.append(Difference(*key, name, str(ledger_value), str(broker_value)))
        for name, ledger_amount in (("buy_value", mine.buy_value), ("sell_value", mine.sell_value)):
            if name in theirs:  # Kite always sends them; a payload without them says nothing
                broker_amount = _decimal(theirs, name, where)
                if abs(broker_amount - ledger_amount) > price_tolerance:
                    differences.append(
                        Difference(*key, name, str(ledger_amount), str(broker_amount))
                    )
        if quantity != 0 and mine.net_quantity == quantity:
            broker_average = _decimal(theirs, "average_price", where)
            ledger_average = kite_average_price(mine)
            if abs(broker_average - ledger_average) > price_tolerance:
                differences.append(
                    Difference(*key, "average_price", str(ledger_average), str(broker_average))
                )
    return ReconciliationReport(account=account, matched=matched, differences=differences)
