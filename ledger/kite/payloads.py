"""Kite Connect payloads, parsed into exact types.

Kite sends prices as JSON numbers (floats) and times as naive "YYYY-MM-DD HH:MM:SS"
strings in Indian Standard Time; some fields are a bare "HH:MM:SS". These models turn
prices into `Decimal` through their shortest decimal form (420.65 stays 420.65, not
420.6499999...), and times into timezone-aware datetimes in Asia/Kolkata. The official
client already turns 19-character timestamps into naive datetimes: those are read as IST
too. Unknown fields are kept (Kite adds fields over time) but never trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ledger.domain.errors import LedgerError
from ledger.domain.values import IST, MAX_AMOUNT, MAX_QUANTITY

#: Kite's order statuses that mean the order has ended.
TERMINAL_STATUSES = frozenset({"COMPLETE", "CANCELLED", "REJECTED"})


def _status(value: Any) -> Any:
    """Kite's status, with its variants of a cancellation ("CANCELLED AMO", an
    after-market order cancelled) read as the cancellation they are: taken as an
    in-between status, such an order would stay open in the ledger for ever."""
    if isinstance(value, str) and value.startswith("CANCELLED "):
        return "CANCELLED"
    return value


def _to_decimal(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    if isinstance(value, float):
        number = Decimal(repr(value))
    elif isinstance(value, int | str | Decimal):
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"not a number: {value!r}") from None
    else:
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if not number.is_finite():
        # NaN and infinities are no price; a signalling NaN would even raise on comparison.
        raise ValueError(f"expected a finite number, got {value!r}")
    if abs(number) > MAX_AMOUNT:
        raise ValueError(f"out of range (at most {MAX_AMOUNT} in size), got {value!r}")
    return number


def kite_time(value: Any) -> datetime | None:
    """A Kite timestamp (naive IST text or naive datetime) as an aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not a Kite timestamp (YYYY-MM-DD HH:MM:SS): {value!r}") from None
    else:
        raise ValueError(f"expected a timestamp, got {type(value).__name__}")
    aware = parsed if parsed.utcoffset() is not None else parsed.replace(tzinfo=IST)
    try:
        # Both must exist: later code reads the instant in UTC (records) and IST (days).
        aware.astimezone(UTC)
        aware.astimezone(IST)
    except OverflowError:
        raise ValueError(f"timestamp out of range: {value!r}") from None
    return aware


def _to_id(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected an id (text or a whole number), got {type(value).__name__}")
    return str(value).strip()


def _to_time_or_datetime(value: Any) -> Any:
    if isinstance(value, str) and len(value.strip()) == 8 and value.count(":") == 2:
        return time.fromisoformat(value.strip())
    return kite_time(value)


KiteDecimal = Annotated[Decimal | None, BeforeValidator(_to_decimal)]
#: A number of units: whole, not negative, within what the ledger holds.
KiteQuantity = Annotated[int, Field(ge=0, le=MAX_QUANTITY)]
KiteTime = Annotated[datetime | None, BeforeValidator(kite_time)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


#: An id Kite gives (order, trade): numbers arrive as text or as JSON numbers.
KiteId = Annotated[str, BeforeValidator(_to_id), Field(min_length=1)]


class KiteOrder(_Payload):
    """An order as `orders()`, `order_history()` and postbacks describe it."""

    order_id: KiteId
    exchange_order_id: Annotated[
        str | None, BeforeValidator(lambda v: None if v is None else str(v))
    ] = None
    parent_order_id: str | None = None
    status: Annotated[str, BeforeValidator(_status)]
    status_message: str | None = None
    order_timestamp: KiteTime = None
    exchange_timestamp: KiteTime = None
    exchange_update_timestamp: KiteTime = None
    variety: str = "regular"
    exchange: str
    tradingsymbol: str
    instrument_token: int | None = None
    order_type: str
    transaction_type: str
    validity: str = "DAY"
    #: Minutes a TTL order lives (Kite sends 0 or nothing for other validities).
    validity_ttl: KiteQuantity | None = None
    product: str
    quantity: KiteQuantity
    disclosed_quantity: KiteQuantity = 0
    price: KiteDecimal = None
    trigger_price: KiteDecimal = None
    average_price: KiteDecimal = None
    filled_quantity: KiteQuantity = 0
    pending_quantity: KiteQuantity = 0
    cancelled_quantity: KiteQuantity = 0
    market_protection: KiteDecimal = None
    tag: str | None = None
    placed_by: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def booked_with_market_protection(self) -> bool:
        """Whether Kite booked this order, placed as a market order with market protection,
        as a limit order at the protection price: Kite tags it "mktp" (its sample
        orders.json: tags ["mktp", "mktp:2.00"]). Records that carry the tags only in
        `meta_raw`, a JSON text (an order_history record quoted on Kite's forum), count
        too: taken for a plain limit order, it would be a modification nobody made."""
        extra = self.model_extra or {}
        tags = extra.get("tags")
        if not isinstance(tags, list) and isinstance(extra.get("meta_raw"), str):
            try:
                meta = json.loads(extra["meta_raw"])
            except ValueError:
                meta = None
            tags = meta.get("tags") if isinstance(meta, dict) else None
        return isinstance(tags, list) and "mktp" in tags


class KiteTrade(_Payload):
    """A trade as `trades()` and `order_trades()` describe it."""

    trade_id: KiteId
    order_id: KiteId
    exchange_order_id: Annotated[
        str | None, BeforeValidator(lambda v: None if v is None else str(v))
    ] = None
    exchange: str
    tradingsymbol: str
    instrument_token: int | None = None
    product: str
    transaction_type: str
    quantity: Annotated[int, Field(gt=0, le=MAX_QUANTITY)]
    average_price: Annotated[Decimal, BeforeValidator(_to_decimal), Field(gt=0)]
    fill_timestamp: KiteTime = None
    exchange_timestamp: KiteTime = None
    # In trades this is a bare time ("09:16:39"); keep whatever Kite sent, typed.
    order_timestamp: Annotated[datetime | time | None, BeforeValidator(_to_time_or_datetime)] = None


class KitePostback(KiteOrder):
    """An order update posted to the postback URL (WebSocket updates: same, no checksum)."""

    checksum: str = ""
    app_id: int | str | None = None
    user_id: str | None = None
    unfilled_quantity: KiteQuantity | None = None


_P = TypeVar("_P", bound=_Payload)


class KitePayloadError(LedgerError, ValueError):
    """Kite answered with something that is not the record it should be. The message names
    the record and every bad field, on one line."""


def parse_orders(data: Any) -> list[KiteOrder]:
    """Orders from `orders()` / `order_history()` (the `data` list or the whole envelope)."""
    return _parse(KiteOrder, "order", data)


def parse_trades(data: Any) -> list[KiteTrade]:
    """Trades from `trades()` / `order_trades()` (the `data` list or the whole envelope)."""
    return _parse(KiteTrade, "trade", data)


@dataclass
class ParsedEach(Generic[_P]):
    """What record-by-record parsing made of a list: the records that parse, a problem
    for each that does not, and the ids of those (where they name one)."""

    parsed: list[_P] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unread_ids: list[str] = field(default_factory=list)


def parse_each_order(data: Any) -> ParsedEach[KiteOrder]:
    """`parse_orders`, record by record: one odd order in Kite's book, placed anywhere,
    stopped every poll and `serve`'s start."""
    return _parse_each(KiteOrder, "order", data)


def parse_each_trade(data: Any) -> ParsedEach[KiteTrade]:
    """`parse_trades`, record by record (as `parse_each_order`)."""
    return _parse_each(KiteTrade, "trade", data)


def _parse_each(model: type[_P], kind: str, data: Any) -> ParsedEach[_P]:
    result: ParsedEach[_P] = ParsedEach()
    for index, item in enumerate(_data_list(data, kind)):
        try:
            result.parsed.append(model.model_validate(item))
        except ValidationError as error:
            named = item.get(f"{kind}_id") if isinstance(item, dict) else None
            if isinstance(named, str) and named:
                result.unread_ids.append(named)
            which = f"{kind} {named}" if isinstance(named, str) and named else f"{kind} record"
            result.problems.append(f"Kite {which} (record {index}) not read: {_problems(error)}")
    return result


def _parse(model: type[_P], kind: str, data: Any) -> list[_P]:
    records = _data_list(data, kind)
    parsed = []
    for index, item in enumerate(records):
        try:
            parsed.append(model.model_validate(item))
        except ValidationError as error:
            raise KitePayloadError(f"Kite {kind} record {index}: {_problems(error)}") from None
    return parsed


def _problems(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}".replace("\n", " ")
        for e in error.errors()
    )


def _data_list(data: Any, kind: str) -> list[Any]:
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise KitePayloadError(
            f"Kite {kind}s: expected a list of records, got {type(data).__name__}"
        )
    return data
