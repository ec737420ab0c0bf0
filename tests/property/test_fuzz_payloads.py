"""Fuzz: Kite's REST payloads (orders, order history, trades) and WebSocket order updates.

Every payload is either parsed into exact types (finite `Decimal` money, timezone-aware
times) or refused with `KitePayloadError` (a `LedgerError`) naming the record and field. A
converge fed bad broker payloads raises nothing but a `LedgerError` and, when it refuses,
writes nothing; a WebSocket message, however bad, never raises out of the handler and
never writes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kiteconnect import KiteTicker

from ledger.application import OrderLedger
from ledger.domain.errors import LedgerError
from ledger.domain.order import Order
from ledger.domain.values import Source
from ledger.kite.gateway import KiteGateway
from ledger.kite.limiter import RateLimiter
from ledger.kite.outbox import Outbox
from ledger.kite.payloads import (
    KiteOrder,
    KitePayloadError,
    KitePostback,
    KiteTrade,
    parse_orders,
    parse_trades,
)
from ledger.kite.service import KiteService
from tests.conftest import LedgerFactory
from tests.property.fuzz import (
    damaged_bytes,
    field_values,
    json_values,
    kite_sample,
    mutated,
    to_json_bytes,
)
from tests.scale import report, scaled
from tests.support import submit_command

ORDERS = kite_sample("orders.json")["data"]
HISTORY = kite_sample("order_info.json")["data"]
TRADES = kite_sample("trades.json")["data"]
POSTBACK = kite_sample("postback.json")


def _check_parsed(record: KiteOrder | KiteTrade) -> None:
    """What an accepted payload must be: exact money, aware times, whole quantities."""
    for name, value in record:
        if name in type(record).model_fields:
            if isinstance(value, Decimal):
                assert value.is_finite(), (name, value)
            if isinstance(value, datetime):
                assert value.utcoffset() is not None, name
            if isinstance(value, float):
                pytest.fail(f"{name} parsed as the float {value!r}")
    assert isinstance(record.order_id, str)
    if isinstance(record, KiteTrade):
        assert isinstance(record.average_price, Decimal)
        assert record.quantity > 0


def _records(samples: list[dict[str, Any]]) -> st.SearchStrategy[Any]:
    """A list of records, one of them mutated; a mutated envelope; or junk."""

    @st.composite
    def one_mutated(draw: st.DrawFn) -> Any:
        records = [dict(r) for r in samples]
        index = draw(st.integers(min_value=0, max_value=len(records) - 1))
        records[index] = draw(mutated(records[index], field_values))
        envelope = draw(st.booleans())
        return {"status": "success", "data": records} if envelope else records

    return st.one_of(
        one_mutated(),
        st.builds(lambda d: {"status": "success", "data": d}, json_values),
        json_values,
        st.lists(json_values, max_size=3),
    )


def _parse(parser: Any, data: Any) -> list[Any] | KitePayloadError:
    try:
        return list(parser(data))
    except KitePayloadError as error:
        message = str(error)
        assert message.startswith("Kite "), message
        assert "\n" not in message, message
        return error


@settings(max_examples=scaled(300, 3000))
@given(data=_records(ORDERS + HISTORY))
def test_orders_and_order_history_parse_or_are_refused(data: Any) -> None:
    _parse_and_count("orders", parse_orders, data)


@settings(max_examples=scaled(300, 3000))
@given(data=_records(TRADES))
def test_trades_parse_or_are_refused(data: Any) -> None:
    _parse_and_count("trades", parse_trades, data)


_tried: dict[str, int] = {}


def _parse_and_count(name: str, parser: Any, data: Any) -> None:
    _tried[name] = _tried.get(name, 0) + 1
    parsed = _parse(parser, data)
    if not isinstance(parsed, KitePayloadError):
        for record in parsed:
            _check_parsed(record)


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    for name, count in sorted(_tried.items()):
        report("fuzz", boundary=f"kite payloads: {name}", inputs_tried=count)


@settings(max_examples=scaled(200, 2000))
@given(record=mutated(POSTBACK, field_values))
def test_postback_and_websocket_payload_models(record: dict[str, Any]) -> None:
    _tried["postback model"] = _tried.get("postback model", 0) + 1
    try:
        postback = KitePostback.model_validate(record)
    except ValueError:
        return  # pydantic's ValidationError: the service turns it into a 400
    _check_parsed(postback)


# --------------------------------------------------------------------------- the gateway


@dataclass
class FakeKite:
    """Answers the gateway's calls with whatever payloads the test sets."""

    history: Any = None
    trades: Any = None
    calls: list[str] = field(default_factory=list)

    def order_history(self, order_id: str) -> Any:
        self.calls.append("order_history")
        return self.history

    def order_trades(self, order_id: str) -> Any:
        self.calls.append("order_trades")
        return self.trades


def _gateway(ledger: OrderLedger, kite: FakeKite) -> KiteGateway:
    assert ledger.storage is not None
    return KiteGateway(
        ledger,
        kite,
        outbox=Outbox(ledger.storage),
        account="AB1234",
        limiter=RateLimiter({"orders": ((1.0, 10**6),), "other": ((1.0, 10**6),)}),
    )


def _broker_view(order: Order, broker_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What Kite would say about `order` once filled: its history and its trades."""
    common = {
        "order_id": broker_id,
        "exchange": "NSE",
        "tradingsymbol": "SBIN",
        "product": "CNC",
        "transaction_type": "BUY",
    }
    base = {
        **HISTORY[0],
        **common,
        "order_type": "LIMIT",
        "quantity": order.quantity,
        "price": 812.35,
        "trigger_price": 0,
        "tag": order.tag,
    }
    history = [
        {**base, "status": "OPEN", "exchange_order_id": "1100000000000001"},
        {
            **base,
            "status": "COMPLETE",
            "exchange_order_id": "1100000000000001",
            "filled_quantity": order.quantity,
            "pending_quantity": 0,
            "average_price": 812.35,
        },
    ]
    trades = [
        {
            **TRADES[0],
            **common,
            "trade_id": f"{broker_id}-1",
            "quantity": order.quantity // 2,
            "average_price": 812.35,
            "fill_timestamp": FILLED_AT,
            "exchange_timestamp": FILLED_AT,
        },
        {
            **TRADES[0],
            **common,
            "trade_id": f"{broker_id}-2",
            "quantity": order.quantity - order.quantity // 2,
            "average_price": 812.3,
            "fill_timestamp": FILLED_AT,
            "exchange_timestamp": FILLED_AT,
        },
    ]
    return history, trades


_numbers = itertools.count()
FILLED_AT = "2026-11-24 09:20:00"  # a day the charges schedule covers


def _converge_once(
    make_ledger: LedgerFactory, which: str, index: int, mutation: st.DataObject
) -> None:
    """Kite's answer `which` (history or trades) with record `index` damaged (-1: the
    whole answer is junk), through `converge`: a refusal is a one-line `LedgerError` and
    writes nothing; whatever is accepted keeps the order's invariants."""
    ledger = _ledger(make_ledger)
    n = next(_numbers)
    order = ledger.submit(submit_command(client_order_id=f"fuzz-{n}", quantity=100))
    broker_id = f"2411{n:011d}"
    history, trades = _broker_view(order, broker_id)
    answer: Any = history if which == "history" else trades
    if index < 0:
        answer = mutation.draw(json_values, label="junk answer")
    else:
        answer[index] = mutation.draw(mutated(answer[index], field_values), label="record")
    kite = FakeKite(
        history=answer if which == "history" else history,
        trades=answer if which == "trades" else trades,
    )
    gateway = _gateway(ledger, kite)
    before = ledger.count_events()
    _tried[f"converge {which}"] = _tried.get(f"converge {which}", 0) + 1
    refusal: LedgerError | None = None
    try:
        result = gateway.converge(broker_id, Source.POLL)
    except LedgerError as error:
        refusal = error
    finally:
        gateway.outbox.close()  # one connection per example otherwise: the server runs out
    if refusal is not None:
        assert "\n" not in str(refusal), str(refusal)
        assert ledger.count_events() == before, f"refused ({refusal}) but wrote events"
        return
    for problem in result.problems:
        assert "\n" not in problem, problem
    made = ledger.get_order(order.id)
    assert 0 <= made.filled_quantity <= made.quantity
    assert all(f.price.is_finite() and f.price > 0 for f in made.fills)


@settings(max_examples=scaled(40, 400))
@given(index=st.integers(min_value=-1, max_value=1), mutation=st.data())
def test_converge_on_bad_order_history_refuses_cleanly(
    make_ledger: LedgerFactory, index: int, mutation: st.DataObject
) -> None:
    _converge_once(make_ledger, "history", index, mutation)


@settings(max_examples=scaled(40, 400))
@given(index=st.integers(min_value=-1, max_value=1), mutation=st.data())
def test_converge_on_bad_trades_refuses_cleanly(
    make_ledger: LedgerFactory, index: int, mutation: st.DataObject
) -> None:
    _converge_once(make_ledger, "trades", index, mutation)


_current: list[tuple[LedgerFactory, OrderLedger]] = []


def _ledger(make_ledger: LedgerFactory) -> OrderLedger:
    """One ledger per test (and database), reused by every example: opening one per
    example would cost most of the time budget."""
    if not _current or _current[0][0] is not make_ledger:
        _current[:] = [(make_ledger, make_ledger())]
    return _current[0][1]


# --------------------------------------------------------------------------- WebSocket


@st.composite
def _ticker_messages(draw: st.DrawFn) -> bytes:
    """A text frame as Kite's ticker sends it (an order update), damaged or not."""
    update = draw(st.one_of(mutated(POSTBACK, json_values), json_values))
    message: Any = draw(
        st.sampled_from(
            [
                {"type": "order", "data": update},
                {"type": "order", "data": update, "extra": 1},
                {"type": "error", "data": update},
                {"data": update},
            ]
        )
    )
    body = to_json_bytes(message)
    if draw(st.booleans()):
        body = draw(damaged_bytes(body))
    return body


@settings(max_examples=scaled(200, 2000))
@given(frame=_ticker_messages(), direct=field_values)
def test_websocket_order_updates_never_raise_or_write(
    make_ledger: LedgerFactory, frame: bytes, direct: Any
) -> None:
    ledger = _ledger(make_ledger)
    if ledger.count_events() == 0:
        order = ledger.submit(submit_command(client_order_id="ws"))
        ledger.record(_accepted(order, str(POSTBACK["order_id"])))
    service = _service(ledger)
    before = ledger.count_events()
    ticker = KiteTicker("fuzz_key", "fuzz_token")
    ticker.on_order_update = service.on_websocket_update
    ticker.on_error = lambda *_: None
    _tried["websocket"] = _tried.get("websocket", 0) + 1
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError:
        text = None  # the ticker itself would fail decoding: not the ledger's handler
    if text is not None:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):  # the ticker calls .get on whatever JSON it read
            ticker._parse_text_message(frame)
    service.on_websocket_update(ticker, direct)
    if isinstance(direct, dict):
        service.on_websocket_update(ticker, {**POSTBACK, **direct})
    assert ledger.count_events() == before


def _accepted(order: Order, broker_id: str) -> Any:
    from ledger.commands import RecordAccepted

    return RecordAccepted(order_id=order.id, broker_order_id=broker_id)


_services: list[tuple[OrderLedger, KiteService]] = []


def _service(ledger: OrderLedger) -> KiteService:
    """The service whose WebSocket handler is fed (never started: the handler is called
    as the ticker calls it, and prompts queue up without a converge)."""
    if not _services or _services[0][0] is not ledger:
        for _, old in _services:
            old.postbacks._http.server_close()
        service = KiteService(_gateway(ledger, FakeKite()), api_secret="secret", app_id=1234)
        _services[:] = [(ledger, service)]
    return _services[0][1]


def test_parsed_samples_stay_exact() -> None:
    """The unmutated samples are accepted (the fuzz tests start from valid records)."""
    for record in parse_orders(ORDERS + HISTORY):
        _check_parsed(record)
    for trade in parse_trades(TRADES):
        _check_parsed(trade)
    assert isinstance(parse_trades(TRADES)[0].order_timestamp, time | datetime | date)
