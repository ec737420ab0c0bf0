"""Helpers shared by the tests: a controllable clock and command builders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ledger.application import OrderLedger
from ledger.commands import RecordAccepted, RecordFill, SubmitOrder
from ledger.domain.order import Order
from ledger.domain.values import Exchange

START = datetime(2026, 11, 24, 3, 45, tzinfo=UTC)  # 09:15 IST


class FakeClock:
    """A clock that moves forward by `step` on every reading (never read twice alike)."""

    def __init__(self, start: datetime = START, step: timedelta = timedelta(milliseconds=1)):
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def submit_command(**overrides: Any) -> SubmitOrder:
    """A valid LIMIT buy of 100 SBIN @ 812.35, with any field overridden."""
    fields: dict[str, Any] = {
        "account": "AB1234",
        "client_order_id": "c-1",
        "exchange": "NSE",
        "tradingsymbol": "SBIN",
        "side": "BUY",
        "quantity": 100,
        "order_type": "LIMIT",
        "product": "CNC",
        "price": Decimal("812.35"),
        "strategy": "s1",
    }
    fields.update(overrides)
    return SubmitOrder.parse(fields)


def accepted(order: Order, broker_order_id: str = "B-1") -> RecordAccepted:
    return RecordAccepted(order_id=order.id, broker_order_id=broker_order_id)


def fill(order: Order, trade_id: str, quantity: int, price: str = "812.35") -> RecordFill:
    return RecordFill(
        order_id=order.id,
        trade_id=trade_id,
        exchange=order.instrument.exchange,
        tradingsymbol=order.instrument.tradingsymbol,
        quantity=quantity,
        price=Decimal(price),
    )


NSE = Exchange.NSE


def log_events(ledger: OrderLedger) -> list[tuple[int, Order.Event]]:
    """Every (position, event) of the ledger's log, in log order: what a clean fold takes."""
    from projections.runner import LedgerLog

    log, after, events = LedgerLog(ledger), 0, []
    while batch := log.read(after, 1000):
        events += batch
        after = batch[-1][0]
    return events
