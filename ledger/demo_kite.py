"""The main demo: a sample strategy trades a simulated session through the Kite sandbox.

Everything goes the way it would in production: orders are recorded in the ledger, placed
by the gateway through the official `kiteconnect` client, and the sandbox's fills come
back by postback and over the WebSocket (`KiteTicker`), with some updates duplicated and the
trade book lagging the order book, as Kite's does. The market and the strategy are seeded,
so a run repeats; `seconds` and `orders` scale it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ledger.application import OrderLedger
from ledger.commands import CancelOrder, ModifyOrder, SubmitOrder
from ledger.domain.errors import LedgerError
from ledger.domain.order import Order
from ledger.domain.values import InstrumentRef
from ledger.kite.gateway import KiteGateway
from ledger.kite.limiter import RateLimiter
from ledger.kite.outbox import Outbox
from ledger.kite.sandbox import KiteSandbox
from ledger.kite.service import KiteService

ACCOUNT = "ZD1234"
STRATEGY = "demo-meanrev"
SYMBOLS = ("NSE:SBIN", "NSE:RELIANCE", "NSE:INFY", "NSE:HDFCBANK", "NFO:NIFTY26DECFUT")


@dataclass
class Progress:
    tick: int = 0
    ticks: int = 0
    submitted: int = 0
    modified: int = 0
    cancelled: int = 0
    refused: list[str] = field(default_factory=list)


@dataclass
class DemoRun:
    session: int
    orders: list[Order]
    progress: Progress
    websocket_updates: int
    marks: dict[InstrumentRef, Decimal]


class SampleStrategy:
    """Trades around each instrument's price: market entries and exits, resting limits it
    later improves or cancels, protective stops, an IOC sweep, and one deliberately bad
    price (rejected at the exchange's circuit band)."""

    def __init__(self, ledger: OrderLedger, sandbox: KiteSandbox, seed: int, session: int) -> None:
        self.ledger = ledger
        self.sandbox = sandbox
        self.rng = random.Random(seed)
        self.session = session
        self.count = 0
        self.resting: dict[Any, int] = {}  # order id -> tick placed
        self.holding: dict[str, int] = dict.fromkeys(SYMBOLS, 0)
        self.late: Order | None = None

    def _submit(self, progress: Progress, symbol: str, **terms: Any) -> Order | None:
        self.count += 1
        exchange, tradingsymbol = symbol.split(":")
        fields = {
            "account": ACCOUNT,
            "client_order_id": f"d{self.session}-{self.count:03d}",
            "exchange": exchange,
            "tradingsymbol": tradingsymbol,
            "product": "NRML" if exchange == "NFO" else "MIS",
            "strategy": STRATEGY,
            "actor": "demo-strategy",
            "reference_price": self.sandbox.prices[symbol],
            **terms,
        }
        try:
            order = self.ledger.submit(SubmitOrder.parse(fields))
        except LedgerError as error:
            progress.refused.append(str(error))
            return None
        progress.submitted += 1
        return order

    def _lot(self, symbol: str) -> int:
        exchange, tradingsymbol = symbol.split(":")
        from ledger.domain.values import Exchange

        return self.ledger.instruments.get(
            InstrumentRef(Exchange(exchange), tradingsymbol)
        ).lot_size

    def _tick_size(self, symbol: str) -> Decimal:
        return self.sandbox._instrument(symbol).tick_size

    def act(self, tick: int, ticks: int, budget: int, progress: Progress) -> None:
        """One decision point of the strategy."""
        if tick == 2:
            self._submit(
                progress,
                "NSE:TCS",
                side="BUY",
                quantity=5,
                order_type="LIMIT",
                price=self.sandbox.prices["NSE:TCS"] * Decimal("1.25") // 1,
            )
        if tick == 6:
            # Bought at once, in part; cancelled on the next tick. Kite's trade book lags its
            # order book, so the ledger hears of the cancel first and of the trade after it.
            price = self.sandbox.prices["NSE:RELIANCE"] + self._tick_size("NSE:RELIANCE")
            self.late = self._submit(
                progress, "NSE:RELIANCE", side="BUY", quantity=300, order_type="LIMIT", price=price
            )
        if tick == 7 and self.late is not None:
            try:
                self.ledger.request_cancel(
                    CancelOrder(order_id=self.late.id, reason="changed view")
                )
                progress.cancelled += 1
            except LedgerError as error:
                progress.refused.append(str(error))
        if tick == 4:
            price = self.sandbox.prices["NSE:HDFCBANK"]
            self._submit(
                progress,
                "NSE:HDFCBANK",
                side="BUY",
                quantity=400,
                order_type="LIMIT",
                price=price,
                validity="IOC",
            )
        if tick == ticks - 3:
            # Orders still working when the session ends: a deep bid, and a large order the
            # market can only partly fill.
            symbol = "NSE:SBIN"
            price, step = self.sandbox.prices[symbol], self._tick_size(symbol)
            self._submit(
                progress,
                symbol,
                side="BUY",
                quantity=50,
                order_type="LIMIT",
                price=price - step * 40,
            )
            self.sandbox.liquidity = (0.05, 0.1)
            self._submit(
                progress, symbol, side="BUY", quantity=2000, order_type="LIMIT", price=price + step
            )
        if progress.submitted < budget and self.rng.random() < budget / max(ticks, 1) * 1.2:
            self._new_order(tick, progress)
        self._manage(tick, progress)

    def _new_order(self, tick: int, progress: Progress) -> None:
        symbol = self.rng.choice(SYMBOLS)
        lot, step = self._lot(symbol), self._tick_size(symbol)
        price = self.sandbox.prices[symbol]
        quantity = (
            lot * self.rng.choice((1, 2, 3)) if lot > 1 else self.rng.choice((10, 25, 50, 100))
        )
        kind = self.rng.choice(("market", "market", "passive", "passive", "aggressive", "stop"))
        held = self.holding[symbol]
        side = "SELL" if held > 0 and self.rng.random() < 0.6 else "BUY"
        if side == "SELL" and kind == "market":
            quantity = min(quantity, held) or quantity
        if kind == "market":
            order = self._submit(
                progress,
                symbol,
                side=side,
                quantity=quantity,
                order_type="MARKET",
                market_protection="-1",
            )
        elif kind == "passive":
            offset = step * self.rng.randint(2, 6)
            limit = price - offset if side == "BUY" else price + offset
            order = self._submit(
                progress, symbol, side=side, quantity=quantity, order_type="LIMIT", price=limit
            )
            if order is not None:
                self.resting[order.id] = tick
        elif kind == "aggressive":
            offset = step * self.rng.randint(0, 2)
            limit = price + offset if side == "BUY" else price - offset
            order = self._submit(
                progress, symbol, side=side, quantity=quantity * 4, order_type="LIMIT", price=limit
            )
            if order is not None:
                self.resting[order.id] = tick
        else:
            trigger = price - step * 4
            order = self._submit(
                progress,
                symbol,
                side="SELL",
                quantity=quantity,
                order_type="SL",
                trigger_price=trigger,
                price=trigger - step * 2,
            )
            if order is not None:
                self.resting[order.id] = tick
        if order is not None:
            self.holding[symbol] += quantity if order.side.value == "BUY" else -quantity

    def _manage(self, tick: int, progress: Progress) -> None:
        for order_id, placed in list(self.resting.items()):
            if tick - placed < 8:
                continue
            del self.resting[order_id]
            order = self.ledger.get_order(order_id)
            if not order.is_open or order.broker_order_id is None:
                continue
            symbol = str(order.instrument)
            try:
                if (
                    order.price is not None
                    and self.rng.random() < 0.5
                    and order.order_type.value == "LIMIT"
                ):
                    step = self._tick_size(symbol)
                    better = self.sandbox.prices[symbol] + (
                        step if order.side.value == "BUY" else -step
                    )
                    if better != order.price:
                        self.ledger.request_modify(
                            ModifyOrder(order_id=order_id, price=better, actor="demo-strategy")
                        )
                        progress.modified += 1
                        self.resting[order_id] = tick
                        continue
                self.ledger.request_cancel(
                    CancelOrder(order_id=order_id, reason="stale", actor="demo-strategy")
                )
                progress.cancelled += 1
            except LedgerError as error:
                progress.refused.append(str(error))


def run_kite_demo(
    ledger: OrderLedger,
    *,
    seconds: float = 12.0,
    orders: int = 40,
    seed: int = 2026,
    session: int = 1,
    use_websocket: bool = True,
    on_progress: Callable[[Progress], None] | None = None,
) -> DemoRun:
    """Run the sample strategy against an in-process sandbox; return what was recorded."""
    assert ledger.storage is not None
    ticks = max(20, int(seconds * 10))
    progress = Progress(ticks=ticks)
    sandbox = KiteSandbox(seed=seed + session).start()
    sandbox.faults.duplicate_updates = 0.2  # Kite repeats itself; the ledger must not count twice
    sandbox.faults.trade_lag_steps = 2  # and its trade book lags its order book
    sandbox.liquidity = (0.2, 0.6)  # a large order fills over several steps
    from kiteconnect import KiteConnect

    kite = KiteConnect(sandbox.api_key, sandbox.access_token, root=sandbox.root, timeout=10)
    outbox = Outbox(ledger.storage)
    gateway = KiteGateway(
        ledger,
        kite,
        outbox=outbox,
        account=ACCOUNT,
        limiter=RateLimiter(),
        unknown_outcome_grace=1.0,
    )
    service = KiteService(
        gateway,
        api_secret=sandbox.api_secret,
        app_id=sandbox.app_id,
        poll_interval=3600,
        dispatch_interval=3600,
    )
    service.start()
    sandbox.postback_url = service.postback_url
    ws_updates = [0]
    ticker = None
    if use_websocket:
        from kiteconnect import KiteTicker

        connected = threading.Event()
        ticker = KiteTicker(sandbox.api_key, sandbox.access_token, root=sandbox.ws_root)

        def on_update(ws: Any, data: dict[str, Any]) -> None:
            ws_updates[0] += 1
            service.on_websocket_update(ws, data)

        ticker.on_order_update = on_update
        ticker.on_connect = lambda ws, response: connected.set()
        ticker.connect(threaded=True)
        connected.wait(10)
    strategy = SampleStrategy(ledger, sandbox, seed, session)
    pause = seconds / ticks
    stop = threading.Event()
    try:
        for tick in range(1, ticks + 1):
            progress.tick = tick
            strategy.act(tick, ticks, orders, progress)
            gateway.dispatch()
            sandbox.step()
            # Let this tick's updates land before the strategy decides again, so a run
            # repeats exactly.
            sandbox.wait_for_updates()
            service.worker.drain()
            if on_progress is not None:
                on_progress(progress)
            stop.wait(pause)
        sandbox.step(3)  # let lagging trades show
        sandbox.wait_for_updates()
        service.worker.drain()
        gateway.poll()  # what the prompts missed, polling catches
        gateway.dispatch()
        sandbox.step(2)
        sandbox.wait_for_updates()
        service.worker.drain()
        gateway.poll()
    finally:
        service.stop()
        if ticker is not None:
            # Closing on purpose: the client logs every close as an error.
            logging.getLogger("kiteconnect.ticker").setLevel(logging.CRITICAL)
            ticker.close()
        sandbox.stop()
        outbox.close()
    made = [o for o in ledger.all_orders() if o.client_order_id.startswith(f"d{session}-")]
    marks = {sandbox._instrument(name).ref: price for name, price in sandbox.prices.items()}
    return DemoRun(session, made, progress, ws_updates[0], marks)


def next_kite_session(ledger: OrderLedger) -> int:
    numbers = [
        int(o.client_order_id[1:].split("-")[0])
        for o in ledger.list_orders(account=ACCOUNT)
        if o.client_order_id.startswith("d") and o.client_order_id[1:].split("-")[0].isdigit()
    ]
    return max(numbers, default=0) + 1
