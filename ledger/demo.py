"""A scripted trading session through the public API (what `scripts/demo` runs).

Every step is something a Kite trader meets in a day: full and partial fills, a
modification, a cancellation with a fill that arrived after it, a stop order that
triggers, an IOC remainder cancelled, an exchange reject, a retried submission that must not
make a second order, a duplicate fill report, and bad input refused without a trace in the
log. Each run is a new session in the same database, so running it twice is safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from uuid import UUID

from ledger.application import OrderLedger
from ledger.commands import (
    CancelOrder,
    ModifyOrder,
    RecordAccepted,
    RecordCancelled,
    RecordFill,
    RecordModified,
    RecordRejected,
    RecordTriggered,
    SubmitOrder,
)
from ledger.domain.errors import LedgerError
from ledger.domain.order import Order
from ledger.domain.values import IST, Exchange, Source

ACCOUNT = "ZD1234"
STRATEGY = "demo-momentum"


@dataclass
class DemoResult:
    """What the session did, for printing and for tests."""

    session: int
    orders: list[Order]
    refusals: list[str]
    showcase_order_id: UUID


class _Session:
    def __init__(self, ledger: OrderLedger, session: int) -> None:
        self.ledger = ledger
        self.session = session
        self.refusals: list[str] = []
        self.order_ids: list[UUID] = []
        self._broker_seq = 0
        self._trade_seq = 0
        self._exchange_clock = datetime.now(UTC).astimezone(IST).replace(microsecond=0)

    def tick(self, seconds: int = 7) -> datetime:
        self._exchange_clock += timedelta(seconds=seconds)
        return self._exchange_clock

    def submit(self, label: str, **terms: object) -> Order:
        command = SubmitOrder.parse(
            {
                "account": ACCOUNT,
                "client_order_id": f"s{self.session}-{label}",
                "strategy": STRATEGY,
                "actor": "demo-strategy",
                **terms,
            }
        )
        order = self.ledger.submit(command)
        self.order_ids.append(order.id)
        return order

    def accept(self, order: Order) -> None:
        self._broker_seq += 1
        broker_id = f"2611{self.session:04d}{self._broker_seq:07d}"
        self.ledger.record(
            RecordAccepted(
                order_id=order.id,
                broker_order_id=broker_id,
                exchange_order_id=f"1100{self.session:04d}{self._broker_seq:08d}",
                broker_timestamp=self.tick(1),
            )
        )

    def fill(
        self, order: Order, quantity: int, price: str, source: Source = Source.POSTBACK
    ) -> str:
        self._trade_seq += 1
        trade_id = f"{self.session:04d}{self._trade_seq:06d}"
        self.ledger.record(
            RecordFill(
                order_id=order.id,
                trade_id=trade_id,
                exchange=order.instrument.exchange,
                tradingsymbol=order.instrument.tradingsymbol,
                quantity=quantity,
                price=Decimal(price),
                exchange_timestamp=self.tick(),
                source=source,
            )
        )
        return trade_id

    def refused(self, what: str, attempt: object) -> None:
        try:
            if callable(attempt):
                attempt()
        except LedgerError as error:
            self.refusals.append(f"{what}: {error}")
        else:  # pragma: no cover - the demo's refusals are all refusals
            raise AssertionError(f"{what} was not refused")


def next_session_number(ledger: OrderLedger) -> int:
    """1 + the highest demo session already in the database."""
    sessions = [
        int(order.client_order_id.split("-", 1)[0][1:])
        for order in ledger.list_orders(account=ACCOUNT)
        if order.client_order_id.startswith("s")
        and order.client_order_id.split("-", 1)[0][1:].isdigit()
    ]
    return max(sessions, default=0) + 1


def run_session(ledger: OrderLedger) -> DemoResult:
    """Run one scripted session on `ledger` and return what it recorded."""
    s = _Session(ledger, next_session_number(ledger))
    nse, nfo = Exchange.NSE.value, Exchange.NFO.value

    # 1. A limit buy filled in two trades.
    sbin = s.submit(
        "sbin-buy",
        exchange=nse,
        tradingsymbol="SBIN",
        side="BUY",
        quantity=100,
        order_type="LIMIT",
        product="CNC",
        price="812.35",
        reference_price="812.10",
    )
    # The strategy's retry after a timeout: same client order id, same order, nothing written.
    retried = s.submit(
        "sbin-buy",
        exchange=nse,
        tradingsymbol="SBIN",
        side="BUY",
        quantity=100,
        order_type="LIMIT",
        product="CNC",
        price="812.35",
        reference_price="812.10",
    )
    assert retried.id == sbin.id
    assert retried.version == 1
    s.accept(sbin)
    first_trade = s.fill(sbin, 40, "812.35")
    # The same trade again, this time from the WebSocket: recorded once only.
    ledger.record(
        RecordFill(
            order_id=sbin.id,
            trade_id=first_trade,
            exchange=Exchange.NSE,
            tradingsymbol="SBIN",
            quantity=40,
            price=Decimal("812.35"),
            source=Source.WEBSOCKET,
        )
    )
    s.fill(sbin, 60, "812.30")

    # 2. A partial fill, then the limit is raised and a little more fills: still working.
    reliance = s.submit(
        "rel-buy",
        exchange=nse,
        tradingsymbol="RELIANCE",
        side="BUY",
        quantity=50,
        order_type="LIMIT",
        product="MIS",
        price="1450.0",
        reference_price="1449.8",
    )
    s.accept(reliance)
    s.fill(reliance, 20, "1450.0")
    ledger.request_modify(
        ModifyOrder(order_id=reliance.id, price=Decimal("1452.0"), actor="demo-strategy")
    )
    ledger.record(
        RecordModified(order_id=reliance.id, price=Decimal("1452.0"), broker_timestamp=s.tick())
    )
    s.fill(reliance, 10, "1451.9")

    # 3. Cancelled, and then a fill that happened at the exchange before the cancel arrives.
    infy = s.submit(
        "infy-sell",
        exchange=nse,
        tradingsymbol="INFY",
        side="SELL",
        quantity=30,
        order_type="LIMIT",
        product="CNC",
        price="1900.0",
        reference_price="1901.0",
    )
    s.accept(infy)
    ledger.request_cancel(
        CancelOrder(order_id=infy.id, reason="signal reversed", actor="demo-strategy")
    )
    ledger.record(
        RecordCancelled(order_id=infy.id, reason="cancelled by user", broker_timestamp=s.tick())
    )
    s.fill(infy, 10, "1900.0", source=Source.POLL)

    # 4. A market order on a future (lot size 65), with automatic market protection.
    nifty = s.submit(
        "nifty-fut",
        exchange=nfo,
        tradingsymbol="NIFTY26DECFUT",
        side="BUY",
        quantity=65,
        order_type="MARKET",
        product="NRML",
        market_protection="-1",
        reference_price="26100.0",
    )
    s.accept(nifty)
    s.fill(nifty, 65, "26100.5")

    # 5. Rejected at the exchange: price outside the circuit band.
    tcs = s.submit(
        "tcs-buy",
        exchange=nse,
        tradingsymbol="TCS",
        side="BUY",
        quantity=10,
        order_type="LIMIT",
        product="CNC",
        price="9999.0",
    )
    s.accept(tcs)
    ledger.record(
        RecordRejected(
            order_id=tcs.id,
            reason="price is outside the circuit limits",
            source=Source.EXCHANGE,
            broker_timestamp=s.tick(),
        )
    )

    # 6. A stop-loss sell that triggers and fills.
    stop = s.submit(
        "sbin-stop",
        exchange=nse,
        tradingsymbol="SBIN",
        side="SELL",
        quantity=50,
        order_type="SL",
        product="CNC",
        price="804.50",
        trigger_price="805.00",
    )
    s.accept(stop)
    ledger.record(RecordTriggered(order_id=stop.id, triggered_at=s.tick(60)))
    s.fill(stop, 50, "804.60")

    # 7. IOC: what did not fill at once is cancelled by the exchange.
    hdfc = s.submit(
        "hdfc-ioc",
        exchange=nse,
        tradingsymbol="HDFCBANK",
        side="BUY",
        quantity=20,
        order_type="LIMIT",
        validity="IOC",
        product="MIS",
        price="1720.05",
    )
    s.accept(hdfc)
    s.fill(hdfc, 5, "1720.05")
    ledger.record(
        RecordCancelled(order_id=hdfc.id, reason="IOC remainder", broker_timestamp=s.tick(1))
    )

    # Bad input: each refused with a clear error, and nothing written.
    events_before = ledger.count_events()
    s.refused(
        "overfill",
        lambda: s.fill(sbin, 1, "812.35"),
    )
    s.refused(
        "price off the tick",
        lambda: s.submit(
            "bad-tick",
            exchange=nse,
            tradingsymbol="SBIN",
            side="BUY",
            quantity=1,
            order_type="LIMIT",
            product="CNC",
            price="812.33",
        ),
    )
    s.refused(
        "stop trigger above the limit for a BUY",
        lambda: s.submit(
            "bad-stop",
            exchange=nse,
            tradingsymbol="SBIN",
            side="BUY",
            quantity=1,
            order_type="SL",
            product="CNC",
            price="800",
            trigger_price="801",
        ),
    )
    s.refused(
        "unknown instrument",
        lambda: s.submit(
            "bad-inst",
            exchange=nse,
            tradingsymbol="NOSUCHCO",
            side="BUY",
            quantity=1,
            order_type="LIMIT",
            product="CNC",
            price="10",
        ),
    )
    s.refused(
        "cancel a filled order",
        lambda: ledger.request_cancel(CancelOrder(order_id=sbin.id)),
    )
    assert ledger.count_events() == events_before, "a refused command wrote to the log"

    orders = [ledger.get_order(order_id) for order_id in dict.fromkeys(s.order_ids)]
    return DemoResult(
        session=s.session, orders=orders, refusals=s.refusals, showcase_order_id=infy.id
    )


def default_database() -> Path:
    return Path("ledger.db")
