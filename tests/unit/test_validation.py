"""Every validation rule: refused before any event exists, with the field and rule named."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest

from ledger.commands import CancelOrder, ModifyOrder, RecordAccepted, RecordFill, SubmitOrder
from ledger.domain.errors import InvalidCommand
from ledger.domain.identity import order_id_for, tag_for
from ledger.domain.order import Order
from ledger.domain.values import (
    Exchange,
    Instrument,
    InstrumentRef,
    OrderType,
    Product,
    Side,
    Validity,
)
from tests.support import START, submit_command

D = Decimal


def refused(**overrides: Any) -> InvalidCommand:
    with pytest.raises(InvalidCommand) as caught:
        submit_command(**overrides)
    return caught.value


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"exchange": None}, "exchange", "Input should be 'NSE'"),
        ({"tradingsymbol": ""}, "tradingsymbol", "at least 1 character"),
        ({"exchange": "NYSE"}, "exchange", "'NSE'"),
        ({"side": "HOLD"}, "side", "'BUY' or 'SELL'"),
        ({"quantity": 0}, "quantity", "greater than 0"),
        ({"quantity": -10}, "quantity", "greater than 0"),
        ({"quantity": "ten"}, "quantity", "valid integer"),
        ({"order_type": "LIMIT", "price": None}, "price", "required for LIMIT"),
        (
            {"order_type": "SL", "price": D("812.35"), "trigger_price": None},
            "trigger_price",
            "required for SL",
        ),
        (
            {"order_type": "SL-M", "price": None, "market_protection": D(-1)},
            "trigger_price",
            "required for SL-M",
        ),
        (
            {"order_type": "SL", "side": "BUY", "price": D("800"), "trigger_price": D("801")},
            "trigger_price",
            "BUY stop order must be at or below the limit price 800",
        ),
        (
            {"order_type": "SL", "side": "SELL", "price": D("800"), "trigger_price": D("799")},
            "trigger_price",
            "SELL stop order must be at or above the limit price 800",
        ),
        ({"order_type": "MARKET", "price": None}, "market_protection", "required for MARKET"),
        (
            {"order_type": "MARKET", "price": None, "market_protection": D(0)},
            "market_protection",
            "-1 (automatic) or a percentage",
        ),
        (
            {"order_type": "MARKET", "price": None, "market_protection": D(101)},
            "market_protection",
            "-1 (automatic) or a percentage",
        ),
        ({"market_protection": D(5)}, "market_protection", "only to MARKET and SL-M"),
        (
            {"order_type": "MARKET", "market_protection": D(-1)},
            "price",
            "must not be given for MARKET",
        ),
        ({"trigger_price": D("810")}, "trigger_price", "must not be given for LIMIT"),
        ({"price": D("-1")}, "price", "positive amount"),
        ({"price": 812.35}, "price", "not the float 812.35"),
        ({"price": "NaN"}, "price", "finite number"),
        ({"price": "812.35001"}, "price", "no more than 4 decimal places"),
        ({"quantity": True}, "quantity", "not the boolean True"),
        ({"account": "ZX/1"}, "account", "must not contain '/'"),
        ({"tag": "x" * 21}, "tag", "1 to 20 letters or digits"),
        ({"tag": "bad tag!"}, "tag", "1 to 20 letters or digits"),
        ({"disclosed_quantity": 101}, "disclosed_quantity", "must not exceed the quantity 100"),
        ({"disclosed_quantity": 5}, "disclosed_quantity", "at least 10%"),
        ({"disclosed_quantity": -1}, "disclosed_quantity", "must not be negative"),
        (
            {"disclosed_quantity": 50, "validity": "IOC"},
            "disclosed_quantity",
            "not allowed on IOC",
        ),
        ({"validity": "TTL"}, "validity_ttl", "required for TTL"),
        ({"validity_ttl": 5}, "validity_ttl", "only to TTL orders"),
        ({"variety": "co"}, "variety", "co is not supported"),
        ({"reference_price": D("0")}, "reference_price", "positive amount"),
        ({"account": ""}, "account", "at least 1 character"),
        ({"unexpected": 1}, "unexpected", "Extra inputs are not permitted"),
    ],
)
def test_submit_rule(overrides: dict[str, Any], field: str, words: str) -> None:
    error = refused(**overrides)
    assert field in error.fields, error
    assert words in str(error)
    assert str(error).startswith("SubmitOrder refused: ")


def test_the_tag_is_the_ledgers_own() -> None:
    """A label shared by several orders would let a placement whose outcome is unknown be
    'found' at Kite as another order: the tag is always the one the order id gives."""
    own = tag_for(order_id_for("AB1234", "c-1"))
    error = refused(tag="momentum")
    assert error.fields == ("tag",)
    assert f"is the ledger's own, {own!r} for this order" in str(error)
    assert "a label belongs in strategy" in str(error)
    assert submit_command(tag=own).tag == own
    assert submit_command().tag is None


def test_missing_instrument_is_named() -> None:
    fields = submit_command().model_dump()
    del fields["tradingsymbol"]
    with pytest.raises(InvalidCommand, match="tradingsymbol: Field required"):
        SubmitOrder.parse(fields)


def test_every_problem_is_reported_at_once() -> None:
    error = refused(quantity=0, order_type="SL", price=D("800"), trigger_price=D("801"), tag="?")
    assert set(error.fields) == {"quantity", "trigger_price", "tag"}


@pytest.mark.parametrize(
    "overrides",
    [
        {"order_type": "LIMIT", "price": D("812.35")},
        {"order_type": "LIMIT", "price": "812.35"},
        {"order_type": "LIMIT", "price": 812},
        {"order_type": "MARKET", "price": None, "market_protection": D(-1)},
        {"order_type": "MARKET", "price": None, "market_protection": D("2.5")},
        {"order_type": "SL", "side": "BUY", "price": D("800"), "trigger_price": D("800")},
        {"order_type": "SL", "side": "SELL", "price": D("800"), "trigger_price": D("801")},
        {"order_type": "SL-M", "price": None, "trigger_price": D("801"), "market_protection": 3},
        {"validity": "TTL", "validity_ttl": 15},
        {"validity": "IOC"},
        {"disclosed_quantity": 10},
        {"variety": "amo"},
        {"tag": tag_for(order_id_for("AB1234", "c-1"))},
    ],
)
def test_valid_submissions_pass(overrides: dict[str, Any]) -> None:
    command = submit_command(**overrides)
    assert command.quantity == 100
    assert command.price is None or isinstance(command.price, Decimal)


# ---------------------------------------------------------------- reference data, in the aggregate

SBIN = Instrument(InstrumentRef(Exchange.NSE, "SBIN"), tick_size=D("0.05"), lot_size=1)
NIFTY = Instrument(InstrumentRef(Exchange.NFO, "NIFTY26DECFUT"), tick_size=D("0.1"), lot_size=75)


def aggregate_submit(instrument: Instrument, **overrides: Any) -> Order:
    fields: dict[str, Any] = {
        "account": "AB1234",
        "client_order_id": "c-1",
        "instrument": instrument,
        "side": Side.BUY,
        "quantity": 100,
        "order_type": OrderType.LIMIT,
        "product": Product.CNC,
        "price": D("812.35"),
        "tag": "KLtest",
        "actor": "test",
        "at": START,
    }
    fields.update(overrides)
    return Order.submit(**fields)


def test_price_must_be_a_multiple_of_the_tick_size() -> None:
    with pytest.raises(
        InvalidCommand, match=r"price: 812.33 is not a multiple of the tick size 0.05"
    ):
        aggregate_submit(SBIN, price=D("812.33"))


def test_trigger_price_must_be_a_multiple_of_the_tick_size() -> None:
    with pytest.raises(InvalidCommand, match=r"trigger_price: 812.01 is not a multiple"):
        aggregate_submit(SBIN, order_type=OrderType.SL, trigger_price=D("812.01"))


def test_quantity_must_be_a_multiple_of_the_lot_size() -> None:
    with pytest.raises(InvalidCommand, match=r"quantity: must be a multiple of the lot size 75"):
        aggregate_submit(NIFTY, quantity=100, price=D("26000.1"))
    order = aggregate_submit(NIFTY, quantity=150, price=D("26000.1"))
    assert order.lot_size == 75


def test_record_time_must_be_timezone_aware() -> None:
    with pytest.raises(InvalidCommand, match="at: must be a timezone-aware datetime"):
        aggregate_submit(SBIN, at=datetime(2026, 11, 24, 9, 15))


def test_blank_account_is_refused_in_the_aggregate_too() -> None:
    with pytest.raises(InvalidCommand, match="account: must not be blank"):
        aggregate_submit(SBIN, account="  ")


def test_tick_multiples_are_exact_in_decimal() -> None:
    """0.1 + 0.2 style errors cannot creep in: 812.35 is 16247 ticks of 0.05 exactly."""
    order = aggregate_submit(SBIN, price=D("812.35"), validity=Validity.DAY)
    assert order.price == D("812.35")


# ---------------------------------------------------------------- other commands


def test_modify_needs_at_least_one_change() -> None:
    with pytest.raises(InvalidCommand, match="changes: name at least one field to change"):
        ModifyOrder(order_id=uuid4())


def test_modify_refuses_a_float_price() -> None:
    with pytest.raises(InvalidCommand, match="price: must be a Decimal"):
        ModifyOrder.parse({"order_id": uuid4(), "price": 812.4})


def test_cancel_needs_an_order_id() -> None:
    with pytest.raises(InvalidCommand, match="order_id: Field required"):
        CancelOrder.parse({})
    with pytest.raises(InvalidCommand, match="order_id: Input should be a valid UUID"):
        CancelOrder.parse({"order_id": "not-a-uuid"})


def test_fill_refuses_a_float_price_and_a_naive_time() -> None:
    base = {
        "order_id": uuid4(),
        "trade_id": "T1",
        "exchange": "NSE",
        "tradingsymbol": "SBIN",
        "quantity": 1,
        "price": D("812.35"),
    }
    with pytest.raises(InvalidCommand, match="price: must be a Decimal"):
        RecordFill.parse({**base, "price": 812.35})
    with pytest.raises(InvalidCommand, match="exchange_timestamp: Input should have timezone info"):
        RecordFill.parse({**base, "exchange_timestamp": datetime(2026, 11, 24, 9, 15)})
    with pytest.raises(InvalidCommand, match="quantity: must be greater than 0"):
        RecordFill.parse({**base, "quantity": 0})
    # 28 significant digits: price times quantity would be rounded, not exact.
    with pytest.raises(InvalidCommand, match="price: Decimal input should have no more than 4"):
        RecordFill.parse({**base, "price": "812.3500000000000000000000001"})
    with pytest.raises(InvalidCommand, match="quantity: must be a whole number, not the boolean"):
        RecordFill.parse({**base, "quantity": True})
    assert RecordFill.parse({**base, "price": "83.0025"}).price == D("83.0025")


def test_accepted_needs_a_broker_order_id() -> None:
    with pytest.raises(InvalidCommand, match="broker_order_id"):
        RecordAccepted.parse({"order_id": uuid4(), "broker_order_id": ""})


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("account", "ZD\x001234", "account: must not contain control characters"),
        ("strategy", "mean\x07reversion", "strategy: must not contain control characters"),
        ("client_order_id", "c\x1b-1", "client_order_id: must not contain control characters"),
        ("reference_price", "1E-20000", "reference_price: Decimal input should have no more"),
        ("market_protection", "1E-41", "market_protection: Decimal input should have"),
    ],
)
def test_text_with_control_characters_and_amounts_past_forty_places_are_refused(
    field: str, value: str, says: str
) -> None:
    """Both were accepted and written; on PostgreSQL the projections then failed on that
    event at every catch-up (text cannot hold a NUL; numeric overflowed on 1E-20000), so
    positions and P&L stopped for good."""
    with pytest.raises(InvalidCommand, match=says):
        submit_command(**{field: value})


def test_tabs_and_line_breaks_may_stand_in_free_text() -> None:
    assert submit_command(strategy="pairs\tv2").strategy == "pairs\tv2"


def test_pydantics_unchecked_ways_of_making_a_command_check_it_all_the_same() -> None:
    """`model_construct` made a command with no checks at all, and the ledger recorded it
    (a trade id " T1" beside "T1" counted a fill twice; a NUL stopped the PostgreSQL
    projections); `model_validate` and `model_copy(update=...)` skipped `problems`."""
    order_id = uuid4()
    fields: dict[str, Any] = {
        "order_id": order_id, "trade_id": "T1", "exchange": Exchange.NSE,
        "tradingsymbol": "SBIN", "quantity": 2, "price": Decimal("800"),
    }  # fmt: skip
    assert RecordFill.model_construct(**{**fields, "trade_id": " T1"}).trade_id == "T1"
    for bad in ({"quantity": True}, {"client_order_id": "x"}, {"trade_id": "T\x001"}):
        with pytest.raises(InvalidCommand):
            RecordFill.model_construct(**{**fields, **bad})
    with pytest.raises(InvalidCommand, match="quantity: must be greater than 0"):
        RecordFill.model_validate({**fields, "quantity": 0})
    with pytest.raises(InvalidCommand, match="charges: must not be negative"):
        RecordFill(**fields).model_copy(update={"charges": Decimal(-1)})
    with pytest.raises(InvalidCommand, match="quantity"):
        SubmitOrder.model_construct(**{**submit_command().model_dump(), "quantity": -5})
    copied = RecordFill(**fields).model_copy(update={"charges": Decimal("1.5")})
    assert (copied.charges, copied.trade_id) == (Decimal("1.5"), "T1")
    assert RecordFill.model_validate(copied) == copied
    assert RecordFill(**fields).model_copy() == RecordFill(**fields)


def test_model_validate_takes_pydantics_options_and_any_mapping() -> None:
    """The checked `model_validate` refused a read-only mapping ("expected a mapping")
    and dropped `from_attributes`; `model_copy(update=)` marked every field as set."""
    from types import MappingProxyType, SimpleNamespace

    fields = submit_command().model_dump(exclude_unset=True)
    assert SubmitOrder.model_validate(MappingProxyType(fields)) == SubmitOrder(**fields)
    order_id = uuid4()
    row = SimpleNamespace(order_id=order_id, reason="stop", actor="api")
    assert CancelOrder.model_validate(row, from_attributes=True).order_id == order_id
    as_json = SubmitOrder(**fields).model_dump_json()
    assert SubmitOrder.model_validate_json(as_json) == SubmitOrder(**fields)
    with pytest.raises(InvalidCommand, match="quantity: must be greater than 0"):
        SubmitOrder.model_validate_json(as_json.replace('"quantity":100', '"quantity":0'))
    copied = SubmitOrder(**fields).model_copy(update={"quantity": 5})
    assert copied.model_fields_set == set(fields) | {"quantity"}
