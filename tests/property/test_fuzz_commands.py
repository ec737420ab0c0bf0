"""Fuzz: the pydantic command models and the application methods behind them.

A command built from a damaged mapping is either valid or refused with `InvalidCommand`,
whose problems name fields of that command. A valid command given to the ledger either
takes effect or is refused with a `LedgerError`; a refusal leaves the log as it was.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.application import OrderLedger
from ledger.commands import (
    CancelOrder,
    Command,
    ModifyOrder,
    RecordAccepted,
    RecordCancelled,
    RecordCancelRejected,
    RecordExpired,
    RecordFill,
    RecordModified,
    RecordModifyRejected,
    RecordRejected,
    RecordTriggered,
    SubmitOrder,
)
from ledger.domain.errors import InvalidCommand, LedgerError
from ledger.domain.order import Order
from tests.conftest import LedgerFactory
from tests.property.fuzz import field_values, mutated
from tests.scale import report, scaled
from tests.support import START, submit_command

ORDER_ID = "8a6e2b0e-5d7c-4d1e-9f55-0c2d9a3b7e11"

VALID_SUBMITS: list[dict[str, Any]] = [
    {
        "account": "AB1234",
        "client_order_id": "c-1",
        "exchange": "NSE",
        "tradingsymbol": "SBIN",
        "side": "BUY",
        "quantity": 100,
        "order_type": "LIMIT",
        "product": "CNC",
        "price": "812.35",
        "strategy": "s1",
    },
    {
        "account": "AB1234",
        "client_order_id": "c-2",
        "exchange": "NSE",
        "tradingsymbol": "INFY",
        "side": "SELL",
        "quantity": 20,
        "order_type": "SL",
        "product": "MIS",
        "price": "1500.00",
        "trigger_price": "1500.05",
        "validity": "DAY",
        "disclosed_quantity": 10,
    },
    {
        "account": "AB1234",
        "client_order_id": "c-3",
        "exchange": "NSE",
        "tradingsymbol": "TCS",
        "side": "BUY",
        "quantity": 5,
        "order_type": "MARKET",
        "product": "CNC",
        "market_protection": "-1",
        "reference_price": "3500.10",
        "tag": "abc123",
    },
]

#: For each command: a valid mapping (the order id is filled in by the test).
VALID_UPDATES: dict[type[Command], dict[str, Any]] = {
    ModifyOrder: {"price": "812.40", "quantity": 100},
    CancelOrder: {"reason": "strategy exit"},
    RecordAccepted: {"broker_order_id": "241124000000001", "broker_timestamp": START},
    RecordRejected: {"reason": "RMS: margin", "source": "exchange"},
    RecordModified: {"price": "812.30"},
    RecordModifyRejected: {"reason": "too late"},
    RecordTriggered: {"triggered_at": START},
    RecordFill: {
        "trade_id": "T1",
        "exchange": "NSE",
        "tradingsymbol": "SBIN",
        "quantity": 40,
        "price": "812.35",
        "exchange_timestamp": START,
        "charges": "1.25",
    },
    RecordCancelled: {"reason": "user"},
    RecordCancelRejected: {"reason": "already filled"},
    RecordExpired: {"reason": "IOC remainder"},
}

_tried: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    for name, count in sorted(_tried.items()):
        report("fuzz", boundary=f"commands: {name}", inputs_tried=count)


def _build(cls: type[Command], fields: dict[str, Any]) -> Command | InvalidCommand:
    """The command, or its refusal, checked: the refusal names fields of the command (or
    the unknown ones it was given)."""
    refusal: InvalidCommand | None = None
    try:
        return cls.parse(fields)
    except InvalidCommand as error:
        refusal = error
    assert refusal.problems, str(refusal)
    assert str(refusal).startswith(f"{cls.__name__} refused: ")
    known = set(cls.model_fields) | {"command", "changes"} | {str(k) for k in fields}
    for problem in refusal.problems:
        named = problem.field in known or problem.field.split(".")[0] in known
        assert named, (problem.field, str(refusal))
    return refusal


def _mapping_values() -> st.SearchStrategy[Any]:
    """Field values: junk, and floats, huge and negative numbers for money and sizes."""
    return st.one_of(
        field_values,
        st.sampled_from([812.35, 0.05, -100, 0, 10**9, 10**9 + 1, 10**12, "1e12", "1e13"]),
        st.sampled_from(["-0.05", "812.351", "812.3500", "0.00", "100.0", Decimal("812.35")]),
        st.sampled_from([START.replace(tzinfo=None), START, "2026-11-24T09:15:00+05:30"]),
        st.sampled_from([ORDER_ID, ORDER_ID.upper(), ORDER_ID[:-1], "not-a-uuid", 12]),
    )


@st.composite
def _submit_mappings(draw: st.DrawFn) -> dict[str, Any]:
    base = draw(st.sampled_from(VALID_SUBMITS))
    return draw(st.one_of(mutated(base, _mapping_values()), st.just(dict(base))))


_numbers = itertools.count()


@settings(max_examples=scaled(200, 2000))
@given(fields=_submit_mappings())
def test_submit_is_recorded_or_refused_and_writes_nothing(
    make_ledger: LedgerFactory, fields: dict[str, Any]
) -> None:
    ledger = _ledger(make_ledger)
    _tried["submit"] = _tried.get("submit", 0) + 1
    command = _build(SubmitOrder, fields)
    if isinstance(command, InvalidCommand):
        return
    assert isinstance(command, SubmitOrder)
    # A fresh client order id: retries of the same one are tested elsewhere.
    command = command.model_copy(update={"client_order_id": f"fuzz-{next(_numbers)}"})
    _apply(ledger, lambda: ledger.submit(command))


@st.composite
def _update_mappings(draw: st.DrawFn) -> tuple[type[Command], dict[str, Any]]:
    cls = draw(st.sampled_from(sorted(VALID_UPDATES, key=lambda c: c.__name__)))
    base = {"order_id": ORDER_ID, **VALID_UPDATES[cls]}
    return cls, draw(st.one_of(mutated(base, _mapping_values()), st.just(base)))


@settings(max_examples=scaled(100, 1000))
@given(updates=st.lists(_update_mappings(), min_size=1, max_size=4))
def test_order_commands_take_effect_or_are_refused_and_write_nothing(
    make_ledger: LedgerFactory, updates: list[tuple[type[Command], dict[str, Any]]]
) -> None:
    ledger = _ledger(make_ledger)
    order = ledger.submit(submit_command(client_order_id=f"fuzz-{next(_numbers)}"))
    for cls, fields in updates:
        _tried[cls.__name__] = _tried.get(cls.__name__, 0) + 1
        if fields.get("order_id") == ORDER_ID:
            fields = {**fields, "order_id": order.id}
        command = _build(cls, fields)
        if isinstance(command, InvalidCommand):
            continue
        _apply(ledger, lambda command=command: _run(ledger, command))
    final = ledger.get_order(order.id)
    assert 0 <= final.filled_quantity <= final.quantity
    assert final.version == len(ledger.history(order.id))


def _run(ledger: OrderLedger, command: Command) -> Order:
    if isinstance(command, ModifyOrder):
        return ledger.request_modify(command)
    if isinstance(command, CancelOrder):
        return ledger.request_cancel(command)
    assert isinstance(
        command,
        RecordAccepted
        | RecordRejected
        | RecordModified
        | RecordModifyRejected
        | RecordTriggered
        | RecordFill
        | RecordCancelled
        | RecordCancelRejected
        | RecordExpired,
    )
    return ledger.record(command)


def _apply(ledger: OrderLedger, action: Any) -> None:
    """Run `action`: it takes effect, or raises a one-line `LedgerError` and writes nothing."""
    before = ledger.count_events()
    refusal: LedgerError | None = None
    try:
        action()
    except LedgerError as error:
        refusal = error
    if refusal is not None:
        assert "\n" not in str(refusal), str(refusal)
        assert ledger.count_events() == before, f"refused ({refusal}) but wrote events"


_current: list[tuple[LedgerFactory, OrderLedger]] = []


def _ledger(make_ledger: LedgerFactory) -> OrderLedger:
    """One ledger per test and database, shared by its examples."""
    if not _current or _current[0][0] is not make_ledger:
        _current[:] = [(make_ledger, make_ledger())]
    return _current[0][1]


@settings(max_examples=scaled(150, 1500))
@given(
    data=st.one_of(
        st.dictionaries(st.one_of(st.integers(), st.text(max_size=5)), field_values, max_size=3),
        st.builds(dict),
    )
)
def test_commands_from_any_mapping_are_refused_clearly(data: dict[Any, Any]) -> None:
    _tried["any mapping"] = _tried.get("any mapping", 0) + 1
    classes: list[type[Command]] = [SubmitOrder, *VALID_UPDATES]
    for cls in classes:
        _build(cls, data)
