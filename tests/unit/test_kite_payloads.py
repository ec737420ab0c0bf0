"""Every shape in shared/kite parses into the ledger's types, timestamps included."""

from __future__ import annotations

import json
from datetime import datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ledger.domain.values import IST
from ledger.kite.payloads import KiteOrder, KitePostback, KiteTrade, parse_orders, parse_trades

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "kite"


def sample(name: str) -> Any:
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"Kite sample {name} NOT FOUND at {SAMPLES}")
    return json.loads(path.read_text())


def test_orders() -> None:
    orders = parse_orders(sample("orders.json"))
    assert len(orders) == 10
    first = orders[0]
    assert first.status == "CANCELLED"
    assert first.order_timestamp == datetime(2021, 5, 31, 9, 18, 57, tzinfo=IST)
    assert first.price == Decimal("72")
    rejected = next(o for o in orders if o.status == "REJECTED")
    assert rejected.status_message is not None
    assert "Insufficient funds" in rejected.status_message
    assert any(o.tag == "connect test order1" for o in orders)
    assert all(o.is_terminal for o in orders)


def test_order_history_with_transient_statuses() -> None:
    history = parse_orders(sample("order_info.json"))
    assert [h.status for h in history][:3] == [
        "PUT ORDER REQ RECEIVED",
        "VALIDATION PENDING",
        "OPEN PENDING",
    ]
    assert not any(h.is_terminal for h in history)
    assert history[0].exchange_order_id is None


def test_a_cancelled_after_market_order_is_a_cancellation() -> None:
    """Read as an in-between status, "CANCELLED AMO" left the order open in the ledger."""
    (order,) = parse_orders([{**sample("orders.json")["data"][0], "status": "CANCELLED AMO"}])
    assert order.status == "CANCELLED"
    assert order.is_terminal
    (pending,) = parse_orders([{**sample("orders.json")["data"][0], "status": "CANCEL PENDING"}])
    assert not pending.is_terminal


def test_trades_with_time_only_fields() -> None:
    trades = parse_trades(sample("trades.json"))
    assert trades[0].average_price == Decimal("420.65")
    assert trades[1].average_price == Decimal("72.755")  # no float noise
    assert trades[0].order_timestamp == time(9, 16, 39)
    assert trades[0].fill_timestamp == datetime(2021, 5, 31, 9, 16, 39, tzinfo=IST)


def test_postback() -> None:
    postback = KitePostback.model_validate(sample("postback.json"))
    assert postback.checksum.startswith("2011845d")
    assert postback.app_id == 1234
    assert postback.average_price == Decimal("470")
    assert postback.exchange_order_id == "1000000001482421"


@pytest.mark.parametrize("name", ["order_response.json", "order_modify.json", "order_cancel.json"])
def test_order_id_responses(name: str) -> None:
    assert sample(name)["data"]["order_id"] == "151220000000000"


def test_the_official_clients_naive_datetimes_are_read_as_ist() -> None:
    raw = sample("orders.json")["data"][1]
    raw["order_timestamp"] = datetime(2021, 5, 31, 15, 20, 28)  # as kiteconnect hands it over
    assert KiteOrder.model_validate(raw).order_timestamp == datetime(
        2021, 5, 31, 15, 20, 28, tzinfo=IST
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"quantity": "lots"}, "quantity"),
        ({"average_price": "abc"}, "average_price"),
        ({"fill_timestamp": "yesterday"}, "fill_timestamp"),
        ({"average_price": True}, "average_price"),
    ],
)
def test_bad_trades_name_the_field(change: dict[str, Any], field: str) -> None:
    raw = {**sample("trades.json")["data"][0], **change}
    with pytest.raises(ValidationError, match=field):
        KiteTrade.model_validate(raw)


def test_a_protected_market_order_is_known_by_the_tags_in_meta_raw_too() -> None:
    """An order_history record quoted on Kite's forum carries "mktp" only inside
    `meta_raw`, a JSON text, with no top-level `tags`."""
    record = {
        "order_id": "2042130686722629633",
        "status": "OPEN",
        "exchange": "BFO",
        "tradingsymbol": "SENSEX2640977100CE",
        "order_type": "LIMIT",
        "transaction_type": "SELL",
        "product": "NRML",
        "quantity": 20,
        "price": 204.1,
        "meta": {},
        "meta_raw": '{"tag":"","tags":["mktp","mktp:2.00"],"app_id":24560}',
    }
    assert parse_orders([record])[0].booked_with_market_protection
    assert not parse_orders([{**record, "meta_raw": '{"tag":""}'}])[0].booked_with_market_protection
    assert not parse_orders([{**record, "meta_raw": "not json"}])[0].booked_with_market_protection
