"""Kite Connect payloads, parsed into exact types.

Kite sends prices as JSON numbers (floats) and times as naive "YYYY-MM-DD HH:MM:SS"
strings in Indian Standard Time; some fields are a bare "HH:MM:SS". These models turn
prices into `Decimal` through their shortest decimal form (420.65 stays 420.65, not
420.6499999...), and times into timezone-aware datetimes in Asia/Kolkata. The official
client already turns 19-character timestamps into naive datetimes: those are read as IST
too. Unknown fields are kept (Kite adds fields over time) but never trusted.
"""

from __future__ import annotations

from datetime import datetime, time
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ledger.domain.values import IST

#: Kite's order statuses that mean the order has ended.
TERMINAL_STATUSES = frozenset({"COMPLETE", "CANCELLED", "REJECTED"})


def _to_decimal(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, int | str | Decimal):
        try:
            return Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"not a number: {value!r}") from None
    raise ValueError(f"expected a number, got {type(value).__name__}")


def kite_time(value: Any) -> datetime | None:
    """A Kite timestamp (naive IST text or naive datetime) as an aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=IST)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not a Kite timestamp (YYYY-MM-DD HH:MM:SS): {value!r}") from None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=IST)
    raise ValueError(f"expected a timestamp, got {type(value).__name__}")


def _to_time_or_datetime(value: Any) -> Any:
    if isinstance(value, str) and len(value.strip()) == 8 and value.count(":") == 2:
        return time.fromisoformat(value.strip())
    return kite_time(value)


KiteDecimal = Annotated[Decimal | None, BeforeValidator(_to_decimal)]
KiteTime = Annotated[datetime | None, BeforeValidator(kite_time)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class KiteOrder(_Payload):
    """An order as `orders()`, `order_history()` and postbacks describe it."""

    order_id: Annotated[str, BeforeValidator(str)]
    exchange_order_id: Annotated[
        str | None, BeforeValidator(lambda v: None if v is None else str(v))
    ] = None
    parent_order_id: str | None = None
    status: str
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
    product: str
    quantity: int
    disclosed_quantity: int = 0
    price: KiteDecimal = None
    trigger_price: KiteDecimal = None
    average_price: KiteDecimal = None
    filled_quantity: int = 0
    pending_quantity: int = 0
    cancelled_quantity: int = 0
    market_protection: KiteDecimal = None
    tag: str | None = None
    placed_by: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class KiteTrade(_Payload):
    """A trade as `trades()` and `order_trades()` describe it."""

    trade_id: Annotated[str, BeforeValidator(str)]
    order_id: Annotated[str, BeforeValidator(str)]
    exchange_order_id: Annotated[
        str | None, BeforeValidator(lambda v: None if v is None else str(v))
    ] = None
    exchange: str
    tradingsymbol: str
    instrument_token: int | None = None
    product: str
    transaction_type: str
    quantity: int = Field(gt=0)
    average_price: Annotated[Decimal, BeforeValidator(_to_decimal)]
    fill_timestamp: KiteTime = None
    exchange_timestamp: KiteTime = None
    # In trades this is a bare time ("09:16:39"); keep whatever Kite sent, typed.
    order_timestamp: Annotated[datetime | time | None, BeforeValidator(_to_time_or_datetime)] = None


class KitePostback(KiteOrder):
    """An order update posted to the postback URL (WebSocket updates: same, no checksum)."""

    checksum: str = ""
    app_id: int | str | None = None
    user_id: str | None = None
    unfilled_quantity: int | None = None


def parse_orders(data: Any) -> list[KiteOrder]:
    """Orders from `orders()` / `order_history()` (the `data` list or the whole envelope)."""
    return [KiteOrder.model_validate(item) for item in _data_list(data)]


def parse_trades(data: Any) -> list[KiteTrade]:
    return [KiteTrade.model_validate(item) for item in _data_list(data)]


def _data_list(data: Any) -> list[Any]:
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError("expected a list of Kite records")
    return data
