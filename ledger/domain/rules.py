"""The rules an order's terms must satisfy, written once.

The boundary (pydantic command models) calls `check_terms` without reference data, so a
bad command fails where it is built; the aggregate calls it again with the instrument, when
it can also check tick and lot sizes, and for the terms that would result from a
modification. One function, two depths: the rules cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from ledger.domain.errors import Problem
from ledger.domain.values import Instrument, OrderType, Side, Validity, Variety

TAG_MAX_LENGTH: Final = 20
_TAG_PATTERN: Final = re.compile(r"^[A-Za-z0-9]{1,20}$")
SUPPORTED_VARIETIES: Final = frozenset({Variety.REGULAR, Variety.AMO})
#: Kite: -1 asks for automatic market protection; a positive value is a percentage.
AUTO_MARKET_PROTECTION: Final = Decimal(-1)


@dataclass(frozen=True, slots=True)
class OrderTerms:
    """The parts of an order that the rules look at together."""

    side: Side
    quantity: int
    order_type: OrderType
    variety: Variety = Variety.REGULAR
    validity: Validity = Validity.DAY
    validity_ttl: int | None = None
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    disclosed_quantity: int = 0
    market_protection: Decimal | None = None
    tag: str | None = None


def _is_multiple(value: Decimal, step: Decimal) -> bool:
    return step > 0 and value % step == 0


def check_terms(terms: OrderTerms, instrument: Instrument | None = None) -> list[Problem]:
    """Every problem with `terms`; an empty list means they are acceptable.

    With `instrument`, prices must be multiples of its tick size and quantities of its lot
    size.
    """
    problems: list[Problem] = []
    add = problems.append
    order_type = terms.order_type.value

    if terms.quantity <= 0:
        add(Problem("quantity", f"must be greater than 0, got {terms.quantity}"))
    elif instrument is not None and terms.quantity % instrument.lot_size != 0:
        add(
            Problem(
                "quantity",
                f"must be a multiple of the lot size {instrument.lot_size} of {instrument.ref},"
                f" got {terms.quantity}",
            )
        )

    if terms.variety not in SUPPORTED_VARIETIES:
        supported = ", ".join(sorted(v.value for v in SUPPORTED_VARIETIES))
        add(Problem("variety", f"{terms.variety.value} is not supported (use {supported})"))

    for name, value in (("price", terms.price), ("trigger_price", terms.trigger_price)):
        if value is None:
            continue
        if not value.is_finite() or value <= 0:
            add(Problem(name, f"must be a positive amount, got {value}"))
        elif instrument is not None and not _is_multiple(value, instrument.tick_size):
            add(
                Problem(
                    name,
                    f"{value} is not a multiple of the tick size {instrument.tick_size}"
                    f" of {instrument.ref}",
                )
            )

    if terms.order_type.needs_price and terms.price is None:
        add(Problem("price", f"is required for {order_type} orders"))
    if not terms.order_type.needs_price and terms.price is not None:
        add(Problem("price", f"must not be given for {order_type} orders"))
    if terms.order_type.needs_trigger_price and terms.trigger_price is None:
        add(Problem("trigger_price", f"is required for {order_type} orders"))
    if not terms.order_type.needs_trigger_price and terms.trigger_price is not None:
        add(Problem("trigger_price", f"must not be given for {order_type} orders"))

    if (
        terms.order_type is OrderType.SL
        and terms.price is not None
        and terms.trigger_price is not None
        and terms.price > 0
        and terms.trigger_price > 0
    ):
        if terms.side is Side.BUY and terms.trigger_price > terms.price:
            add(
                Problem(
                    "trigger_price",
                    f"for a BUY stop order must be at or below the limit price"
                    f" {terms.price}, got {terms.trigger_price}",
                )
            )
        if terms.side is Side.SELL and terms.trigger_price < terms.price:
            add(
                Problem(
                    "trigger_price",
                    f"for a SELL stop order must be at or above the limit price"
                    f" {terms.price}, got {terms.trigger_price}",
                )
            )

    protection = terms.market_protection
    if terms.order_type.needs_market_protection:
        if protection is None:
            add(
                Problem(
                    "market_protection",
                    f"is required for {order_type} orders (-1 for automatic, or a percentage"
                    " above 0 up to 100)",
                )
            )
        elif protection != AUTO_MARKET_PROTECTION and not (0 < protection <= 100):
            add(
                Problem(
                    "market_protection",
                    f"must be -1 (automatic) or a percentage above 0 up to 100, got {protection}",
                )
            )
    elif protection is not None:
        add(
            Problem(
                "market_protection", f"applies only to MARKET and SL-M orders, not {order_type}"
            )
        )

    disclosed = terms.disclosed_quantity
    if disclosed < 0:
        add(Problem("disclosed_quantity", f"must not be negative, got {disclosed}"))
    elif disclosed > 0:
        if terms.quantity > 0 and disclosed > terms.quantity:
            add(
                Problem(
                    "disclosed_quantity",
                    f"must not exceed the quantity {terms.quantity}, got {disclosed}",
                )
            )
        elif disclosed * 10 < terms.quantity:
            add(
                Problem(
                    "disclosed_quantity",
                    f"must be at least 10% of the quantity {terms.quantity}, got {disclosed}",
                )
            )
        if terms.validity is Validity.IOC:
            add(Problem("disclosed_quantity", "is not allowed on IOC orders"))

    if terms.validity is Validity.TTL:
        if terms.validity_ttl is None or terms.validity_ttl <= 0:
            add(Problem("validity_ttl", "is required for TTL orders, in minutes above 0"))
    elif terms.validity_ttl is not None:
        add(Problem("validity_ttl", f"applies only to TTL orders, not {terms.validity.value}"))

    if terms.tag is not None and not _TAG_PATTERN.match(terms.tag):
        add(
            Problem(
                "tag",
                f"must be 1 to {TAG_MAX_LENGTH} letters or digits, got {terms.tag!r}"
                f" ({len(terms.tag)} characters)",
            )
        )
    return problems
