"""Driving the ledger against the Kite sandbox in tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kiteconnect import KiteConnect

from ledger.application import OrderLedger
from ledger.commands import CancelOrder, ModifyOrder, SubmitOrder
from ledger.domain.order import Order
from ledger.domain.status import OrderStatus
from ledger.domain.values import Source
from ledger.kite.gateway import KiteGateway
from ledger.kite.limiter import RateLimiter
from ledger.kite.outbox import Outbox
from ledger.kite.sandbox import KiteSandbox
from ledger.kite.service import KiteService

ACCOUNT = "ZD1234"


def client(sandbox: KiteSandbox) -> KiteConnect:
    return KiteConnect(sandbox.api_key, sandbox.access_token, root=sandbox.root, timeout=10)


def gateway_for(
    ledger: OrderLedger, sandbox: KiteSandbox | ScriptedKite, **kwargs: Any
) -> KiteGateway:
    assert ledger.storage is not None
    kwargs.setdefault("unknown_outcome_grace", 0.2)
    # Kite's real limits make a test wait 100 ms a call; the limiter has its own tests.
    kwargs.setdefault("limiter", RateLimiter({"orders": ((1.0, 1000),), "other": ((1.0, 1000),)}))
    kite = sandbox if isinstance(sandbox, ScriptedKite) else client(sandbox)
    return KiteGateway(ledger, kite, outbox=Outbox(ledger.storage), account=ACCOUNT, **kwargs)


@dataclass
class ScriptedKite:
    """A fake Kite client whose answers the test writes, for what the sandbox does not do
    (Kite's in-between records, a reply at an awkward moment): each broker order's history
    (the order book shows each one's latest record), the trade book, and what a modify or
    cancel call does (`on_modify` / `on_cancel` may change the histories or raise)."""

    histories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    trade_book: list[dict[str, Any]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    next_order_id: str = "261124000000001"
    on_modify: Callable[[dict[str, Any]], None] | None = None
    on_cancel: Callable[[dict[str, Any]], None] | None = None
    #: Called with the order id after a history is read and before it is returned (a
    #: reply in transit while Kite changes the order).
    on_history: Callable[[str], None] | None = None

    def place_order(self, **params: Any) -> str:
        self.calls.append("place_order")
        return self.next_order_id

    def modify_order(self, **params: Any) -> str:
        self.calls.append("modify_order")
        if self.on_modify is not None:
            self.on_modify(params)
        return str(params["order_id"])

    def cancel_order(self, **params: Any) -> str:
        self.calls.append("cancel_order")
        if self.on_cancel is not None:
            self.on_cancel(params)
        return str(params["order_id"])

    def orders(self) -> list[dict[str, Any]]:
        self.calls.append("orders")
        return [history[-1] for history in self.histories.values() if history]

    def trades(self) -> list[dict[str, Any]]:
        self.calls.append("trades")
        return list(self.trade_book)

    def order_history(self, order_id: str) -> list[dict[str, Any]]:
        self.calls.append("order_history")
        answer = list(self.histories.get(order_id, []))
        if self.on_history is not None:
            self.on_history(order_id)
        return answer

    def order_trades(self, order_id: str) -> list[dict[str, Any]]:
        self.calls.append("order_trades")
        return [t for t in self.trade_book if t["order_id"] == order_id]

    def placed(self, gateway: KiteGateway, order: Order, **kite: Any) -> Order:
        """Dispatch `order` (submitted) so Kite takes it; Kite's history then holds one
        record of it, OPEN (or as `kite` overrides), and the ledger's order is returned."""
        broker_id = self.next_order_id
        gateway.dispatch()
        self.histories[broker_id] = [kite_record(order, broker_id, **kite)]
        self.next_order_id = str(int(broker_id) + 1)
        accepted = gateway.ledger.get_order(order.id)
        assert accepted.broker_order_id == broker_id
        return accepted


def kite_record(order: Order, broker_id: str, **overrides: Any) -> dict[str, Any]:
    """Kite's record of `order` (the shape of orders() and order_history()), OPEN and
    unfilled at 09:20 on the ledger's test day, with any field overridden."""
    record: dict[str, Any] = {
        "placed_by": ACCOUNT,
        "order_id": broker_id,
        "exchange_order_id": "1100000000000001",
        "parent_order_id": None,
        "status": "OPEN",
        "status_message": None,
        "order_timestamp": "2026-11-24 09:20:00",
        "exchange_update_timestamp": "2026-11-24 09:20:00",
        "exchange_timestamp": "2026-11-24 09:20:00",
        "variety": order.variety.value,
        "exchange": order.instrument.exchange.value,
        "tradingsymbol": order.instrument.tradingsymbol,
        "instrument_token": 779521,
        "order_type": order.order_type.value,
        "transaction_type": order.side.value,
        "validity": order.validity.value,
        "product": order.product.value,
        "quantity": order.quantity,
        "disclosed_quantity": 0,
        "price": float(order.price) if order.price is not None else 0,
        "trigger_price": float(order.trigger_price) if order.trigger_price is not None else 0,
        "average_price": 0,
        "filled_quantity": 0,
        "pending_quantity": order.quantity,
        "cancelled_quantity": 0,
        "market_protection": 0,
        "meta": {},
        "tag": order.tag,
        "tags": [order.tag],
        "guid": f"scripted-{broker_id}",
    }
    record.update(overrides)
    return record


def kite_trade(
    order: Order,
    broker_id: str,
    trade_id: str,
    quantity: int,
    price: str,
    at: str | None = "2026-11-24 09:21:00",
) -> dict[str, Any]:
    """Kite's record of one trade of `order` (the shape of trades() and order_trades())."""
    return {
        "trade_id": trade_id,
        "order_id": broker_id,
        "exchange_order_id": "1100000000000001",
        "exchange": order.instrument.exchange.value,
        "tradingsymbol": order.instrument.tradingsymbol,
        "instrument_token": 779521,
        "product": order.product.value,
        "transaction_type": order.side.value,
        "quantity": quantity,
        "average_price": float(price),
        "fill_timestamp": at,
        "order_timestamp": at[-8:] if at else None,
        "exchange_timestamp": at,
    }


@contextmanager
def running_service(gateway: KiteGateway, sandbox: KiteSandbox) -> Iterator[KiteService]:
    """The gateway's service with postbacks from `sandbox`; dispatch and polling are left
    to the test (their loops would race its steps)."""
    service = KiteService(
        gateway,
        api_secret=sandbox.api_secret,
        app_id=sandbox.app_id,
        poll_interval=3600,
        dispatch_interval=3600,
    )
    service.start()
    sandbox.postback_url = service.postback_url
    try:
        yield service
    finally:
        service.stop()


KITE_ORDER_DEFAULTS: dict[str, Any] = {
    "variety": "regular",
    "exchange": "NSE",
    "tradingsymbol": "SBIN",
    "transaction_type": "BUY",
    "product": "CNC",
    "order_type": "LIMIT",
}


def place_at_kite(kite: KiteConnect, **terms: Any) -> str:
    """Place an order straight at Kite (not through the ledger), SBIN buy by default."""
    return str(kite.place_order(**{**KITE_ORDER_DEFAULTS, **terms}))


def submit(ledger: OrderLedger, client_order_id: str, **terms: Any) -> Order:
    fields: dict[str, Any] = {
        "account": ACCOUNT,
        "client_order_id": client_order_id,
        "exchange": "NSE",
        "tradingsymbol": "SBIN",
        "side": "BUY",
        "quantity": 100,
        "order_type": "LIMIT",
        "product": "CNC",
    }
    fields.update(terms)
    return ledger.submit(SubmitOrder.parse(fields))


def trading_session(
    ledger: OrderLedger, sandbox: KiteSandbox, gateway: KiteGateway, prefix: str = ""
) -> dict[str, Order]:
    """Full and partial fills, a modify, cancels, a reject, IOC, a fill racing a cancel, a
    stop that triggers. Returns the ledger's orders by client order id."""
    sandbox.set_price("NSE:SBIN", Decimal("812.35"))
    sandbox.liquidity = (0.25, 0.5)
    made = {
        "full": submit(ledger, prefix + "full", quantity=10, price="812.35"),
        "market": submit(
            ledger,
            prefix + "market",
            tradingsymbol="INFY",
            quantity=20,
            order_type="MARKET",
            market_protection="-1",
        ),
        "partial": submit(ledger, prefix + "partial", quantity=400, price="812.35"),
        "modify": submit(ledger, prefix + "modify", quantity=50, price="800.00"),
        "cancel": submit(ledger, prefix + "cancel", quantity=50, price="790.00"),
        "reject": submit(
            ledger, prefix + "reject", tradingsymbol="TCS", quantity=1, price="9999.0"
        ),
        "ioc": submit(
            ledger,
            prefix + "ioc",
            tradingsymbol="HDFCBANK",
            quantity=300,
            price="1720.05",
            validity="IOC",
        ),
        "stop": submit(
            ledger,
            prefix + "stop",
            side="SELL",
            quantity=30,
            order_type="SL",
            price="795.00",
            trigger_price="796.00",
        ),
        "race": submit(
            ledger, prefix + "race", tradingsymbol="RELIANCE", quantity=100, price="1440.0"
        ),
    }
    gateway.dispatch()
    ledger.request_modify(ModifyOrder(order_id=made["modify"].id, price=Decimal("812.35")))
    ledger.request_cancel(CancelOrder(order_id=made["cancel"].id))
    gateway.converge(ledger.get_order(made["partial"].id).broker_order_id or "", Source.POLL)
    ledger.request_cancel(CancelOrder(order_id=made["partial"].id))
    gateway.dispatch()
    sandbox.step(2)
    sandbox.faults.fill_before_cancel = True
    ledger.request_cancel(CancelOrder(order_id=made["race"].id))
    gateway.dispatch()
    sandbox.faults.fill_before_cancel = False
    sandbox.set_price("NSE:SBIN", Decimal("795.50"))  # the stop triggers
    sandbox.step(3)
    gateway.dispatch()
    return made


def settle(sandbox: KiteSandbox, gateway: KiteGateway, rounds: int = 3) -> None:
    sandbox.wait_for_updates()
    for _ in range(rounds):
        gateway.poll()
        time.sleep(0.05)


BROKER_STATUS = {
    "COMPLETE": {OrderStatus.FILLED},
    "CANCELLED": {OrderStatus.CANCELLED},
    "REJECTED": {OrderStatus.REJECTED},
    "OPEN": {OrderStatus.ACCEPTED, OrderStatus.TRIGGERED, OrderStatus.PARTIALLY_FILLED},
    "TRIGGER PENDING": {OrderStatus.ACCEPTED},
}


def ledger_state(ledger: OrderLedger, prefix: str = "") -> dict[str, Any]:
    """What must be equal between runs: per client order id, the status and fills."""
    return {
        o.client_order_id.removeprefix(prefix): (
            o.status,
            o.quantity,
            o.filled_quantity,
            o.filled_value,
        )
        for o in ledger.all_orders()
        if o.client_order_id.startswith(prefix)
    }


def assert_matches_sandbox(ledger: OrderLedger, sandbox: KiteSandbox) -> None:
    """The ledger equals the sandbox's order book and trade book."""
    orders = {o.broker_order_id: o for o in ledger.all_orders()}
    assert set(orders) == set(sandbox.orders), "orders differ between ledger and broker"
    for broker_id, sim in sandbox.orders.items():
        order = orders[broker_id]
        assert order.status in BROKER_STATUS[sim.status], (
            order.client_order_id,
            order.status,
            sim.status,
        )
        assert order.quantity == sim.quantity
        assert order.filled_quantity == sim.filled_quantity, order.client_order_id
        assert order.filled_value == sim.filled_value, order.client_order_id
        trades = {t["trade_id"] for t in sandbox.trades if t["order_id"] == broker_id}
        assert order.trade_ids == trades
