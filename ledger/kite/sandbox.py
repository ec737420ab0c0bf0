"""A local Kite Connect sandbox: the v3 REST shapes, a simulated market, postbacks and a
WebSocket for order updates, with switches for the faults the real thing has.

It is driven through the official `kiteconnect` client (`KiteConnect(api_key,
access_token, root=sandbox.root)`) and `KiteTicker(..., root=sandbox.ws_root)`. Runs repeat:
prices follow a seeded random walk per instrument, and the market moves only when told to
(`step()`), or on a timer (`run_market(interval)`) for the demo.

What it simulates:

* place / modify / cancel with Kite's success and error envelopes and HTTP statuses (400
  InputException for bad input, 403 TokenException for a bad token, 429 when rate limited,
  5xx faults), realistic transient statuses in the order history;
* MARKET, LIMIT, SL and SL-M orders; partial fills (liquidity per step is limited); IOC
  remainders cancelled; rejects for prices outside the circuit band;
* trades, positions, LTP / quote, and the virtual contract note (`charges/orders`);
* postbacks (checksum = sha256(order_id + order_timestamp + api_secret)) and WebSocket
  order updates for every status change.

Faults (`sandbox.faults`): drop, duplicate or reorder postbacks (and WebSocket updates),
delay or fail a placement after the order was accepted, refuse one for margin, take a
modification and have the exchange refuse it, answer 429, go away for a while.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ledger.charges import ChargesSchedule
from ledger.domain.values import IST, Exchange, Instrument, InstrumentRef, Product, Side
from ledger.instruments import InstrumentCatalog

DEFAULT_PRICES: dict[str, Decimal] = {
    "NSE:SBIN": Decimal("812.35"),
    "NSE:RELIANCE": Decimal("1450.0"),
    "NSE:INFY": Decimal("1900.0"),
    "NSE:TCS": Decimal("3500.0"),
    "NSE:HDFCBANK": Decimal("1720.05"),
    "BSE:RELIANCE": Decimal("1450.0"),
    "BSE:SBIN": Decimal("812.35"),
    "NFO:NIFTY26DECFUT": Decimal("26100.0"),
    "NFO:BANKNIFTY26DECFUT": Decimal("59000.0"),
    "NFO:NIFTY26DEC26000CE": Decimal("180.0"),
    "NFO:NIFTY26DEC26000PE": Decimal("95.0"),
}
ORDER_CALLS = frozenset({"order.place", "order.modify", "order.cancel"})
MAX_BODY = 64 * 1024


class KiteError(Exception):
    """An error the sandbox answers with Kite's error envelope."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


@dataclass
class Faults:
    """Switches for the faults the real Kite has. Probabilities are 0..1."""

    drop_updates: float = 0.0
    duplicate_updates: float = 0.0
    reorder_updates: bool = False
    delay_placement_response: float = 0.0  # seconds, after the order is in the book
    fail_placements_after_accept: int = 0  # this many placements: in the book, then a 500
    drop_placements_after_accept: int = 0  # ... or the connection closes with no answer
    fail_placements_before_accept: int = 0  # this many placements: a 503, nothing booked
    rate_limit_next: int = 0  # this many calls answer 429
    down_until: float = 0.0  # time.monotonic() until which every call goes unanswered
    fill_before_cancel: bool = False  # a cancel races a fill: the fill wins part of it
    refuse_modifications: int = 0  # this many modifications: taken, then refused by the exchange
    short_of_margin: int = 0  # this many placements: refused for margin (MarginException, 400)
    trade_lag_steps: int = 0  # trades show in trades() / order_trades() only this many steps later


@dataclass
class SimOrder:
    order_id: str
    exchange_order_id: str
    instrument: Instrument
    variety: str
    side: Side
    product: str
    order_type: str
    validity: str
    quantity: int
    price: Decimal
    trigger_price: Decimal
    disclosed_quantity: int
    market_protection: Decimal
    tag: str | None
    placed_at: datetime
    status: str = "OPEN"
    status_message: str | None = None
    filled_quantity: int = 0
    filled_value: Decimal = Decimal(0)
    cancelled_quantity: int = 0
    triggered: bool = False
    modified: bool = False
    updated_at: datetime | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pending_quantity(self) -> int:
        if self.status in ("COMPLETE", "CANCELLED", "REJECTED"):
            return 0
        return self.quantity - self.filled_quantity

    @property
    def average_price(self) -> Decimal:
        return (self.filled_value / self.filled_quantity) if self.filled_quantity else Decimal(0)


def kite_timestamp(moment: datetime) -> str:
    return moment.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S")


def checksum(order_id: str, order_timestamp: str, api_secret: str) -> str:
    """Kite's postback checksum."""
    return hashlib.sha256(f"{order_id}{order_timestamp}{api_secret}".encode()).hexdigest()


def _num(value: Decimal) -> float | int:
    """Kite sends numbers as JSON numbers."""
    return int(value) if value == value.to_integral_value() else float(value)


class KiteSandbox:
    """The sandbox. `start()` it, point the clients at `root` and `ws_root`, `stop()` it."""

    def __init__(
        self,
        *,
        seed: int = 7,
        instruments: InstrumentCatalog | None = None,
        prices: dict[str, Decimal] | None = None,
        api_key: str = "sandbox_key",
        access_token: str = "sandbox_token",
        api_secret: str = "sandbox_secret",
        user_id: str = "ZD1234",
        app_id: int = 4242,
        postback_url: str | None = None,
        circuit_percent: Decimal = Decimal(10),
        liquidity_per_step: tuple[float, float] = (0.4, 1.0),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.rng = random.Random(seed)  # the market: prices and liquidity
        self.fault_rng = random.Random(seed + 1)  # faults draw apart, so the market repeats
        self.instruments = instruments or InstrumentCatalog.bundled()
        self.prices: dict[str, Decimal] = dict(DEFAULT_PRICES)
        self.prices.update(prices or {})
        self.reference = dict(self.prices)
        self.api_key, self.access_token, self.api_secret = api_key, access_token, api_secret
        self.user_id, self.app_id = user_id, app_id
        self.postback_url = postback_url
        self.circuit_percent = circuit_percent
        self.liquidity = liquidity_per_step
        self.clock = clock or (lambda: datetime.now(IST))
        self.faults = Faults()
        self.orders: dict[str, SimOrder] = {}
        self.trades: list[dict[str, Any]] = []
        self.calls: list[tuple[float, str, str]] = []  # (monotonic time, route, method)
        self.charges = ChargesSchedule.bundled()
        self._lock = threading.RLock()
        self._sequence = 0
        self._steps = 0
        self._visible_from: dict[str, int] = {}
        self._updates: list[dict[str, Any]] = []
        self._in_flight = 0
        self._update_lock = threading.Condition()
        self._ws_clients: set[Any] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._http: ThreadingHTTPServer | None = None
        self._ws: Any = None
        self.root = ""
        self.ws_root = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self, host: str = "127.0.0.1", port: int = 0, ws_port: int = 0) -> KiteSandbox:
        sandbox = self

        class Handler(_Handler):
            pass

        Handler.sandbox = sandbox
        self._http = ThreadingHTTPServer((host, port), Handler)
        self._http.daemon_threads = True
        self.root = f"http://{host}:{self._http.server_address[1]}"
        self._spawn(self._http.serve_forever, "sandbox-http")
        from websockets.sync.server import serve

        self._ws = serve(self._ws_handler, host, ws_port)
        self.ws_root = f"ws://{host}:{self._ws.socket.getsockname()[1]}"
        self._spawn(self._ws.serve_forever, "sandbox-ws")
        self._spawn(self._deliver_updates, "sandbox-postbacks")
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._update_lock:
            self._update_lock.notify_all()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._ws is not None:
            self._ws.shutdown()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> KiteSandbox:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def run_market(self, interval: float) -> None:
        """Step the market every `interval` seconds until `stop()`."""

        def loop() -> None:
            while not self._stopping.wait(interval):
                self.step()

        self._spawn(loop, "sandbox-market")

    # ------------------------------------------------------------------ the market

    def step(self, steps: int = 1) -> None:
        """Move every price one random tick walk and match what can match."""
        with self._lock:
            for _ in range(steps):
                self._steps += 1
                for key in sorted(self.prices):
                    instrument = self._instrument(key)
                    tick = instrument.tick_size
                    moved = self.prices[key] + tick * self.rng.randint(-3, 3)
                    self.prices[key] = max(moved, tick)
                for order in list(self.orders.values()):
                    if order.status in ("OPEN", "TRIGGER PENDING"):
                        self._match(order)

    def set_price(self, instrument: str, price: Decimal) -> None:
        """Move one price (tests use this to trigger stops and cross limits)."""
        with self._lock:
            self.prices[instrument] = price
            for order in list(self.orders.values()):
                if order.status in ("OPEN", "TRIGGER PENDING"):
                    self._match(order)

    def _instrument(self, key: str) -> Instrument:
        exchange, symbol = key.split(":", 1)
        return self.instruments.get(InstrumentRef(Exchange(exchange), symbol))

    def _key(self, order: SimOrder) -> str:
        return str(order.instrument.ref)

    def _match(self, order: SimOrder) -> None:
        price = self.prices[self._key(order)]
        if order.status == "TRIGGER PENDING":
            hit = (
                price >= order.trigger_price
                if order.side is Side.BUY
                else price <= order.trigger_price
            )
            if not hit:
                return
            order.triggered = True
            self._set_status(order, "OPEN")
        marketable = order.order_type in ("MARKET", "SL-M") or (
            price <= order.price if order.side is Side.BUY else price >= order.price
        )
        if not marketable:
            return
        remaining = order.quantity - order.filled_quantity
        lot = order.instrument.lot_size
        share = self.rng.uniform(*self.liquidity)
        lots = max(1, round((order.quantity // lot) * share))
        quantity = min(remaining, lots * lot)
        fill_price = (
            price
            if order.order_type in ("MARKET", "SL-M")
            else (min(price, order.price) if order.side is Side.BUY else max(price, order.price))
        )
        self._fill(order, quantity, fill_price)

    def _fill(self, order: SimOrder, quantity: int, price: Decimal) -> None:
        self._sequence += 1
        now = self.clock()
        trade_id = f"{self._sequence:08d}"
        trade: dict[str, Any] = {
            "trade_id": trade_id,
            "order_id": order.order_id,
            "exchange_order_id": order.exchange_order_id,
            "exchange": order.instrument.ref.exchange.value,
            "tradingsymbol": order.instrument.ref.tradingsymbol,
            "instrument_token": order.instrument.instrument_token,
            "product": order.product,
            "transaction_type": order.side.value,
            "quantity": quantity,
            "average_price": _num(price),
            "fill_timestamp": kite_timestamp(now),
            "exchange_timestamp": kite_timestamp(now),
            "order_timestamp": now.astimezone(IST).strftime("%H:%M:%S"),
        }
        self.trades.append(trade)
        self._visible_from[trade_id] = self._steps + self.faults.trade_lag_steps
        order.filled_quantity += quantity
        order.filled_value += price * quantity
        self._set_status(order, "COMPLETE" if order.filled_quantity >= order.quantity else "OPEN")

    def _set_status(self, order: SimOrder, status: str, message: str | None = None) -> None:
        order.status = status
        if message is not None:
            order.status_message = message
        order.updated_at = self.clock()
        snapshot = self._order_json(order)
        order.history.append(snapshot)
        self._publish(snapshot)

    # ------------------------------------------------------------------ orders

    def _place(self, variety: str, params: dict[str, str]) -> dict[str, Any]:
        required = (
            "exchange",
            "tradingsymbol",
            "transaction_type",
            "quantity",
            "product",
            "order_type",
        )
        if self.faults.short_of_margin > 0:
            self.faults.short_of_margin -= 1
            raise KiteError(
                400,
                "MarginException",
                "Insufficient funds. Required margin is 95417.84 but available margin is 74251.80.",
            )
        missing = [name for name in required if not params.get(name)]
        if missing:
            raise KiteError(400, "InputException", f"Missing {', '.join(missing)}")
        if variety not in ("regular", "amo"):
            raise KiteError(400, "InputException", f"Invalid variety: {variety}")
        key = f"{params['exchange']}:{params['tradingsymbol']}"
        try:
            instrument = self._instrument(key)
        except (ValueError, LookupError):
            raise KiteError(400, "InputException", f"Invalid instrument: {key}") from None
        side_text = params["transaction_type"]
        if side_text not in ("BUY", "SELL"):
            raise KiteError(400, "InputException", "Invalid transaction_type")
        order_type = params["order_type"]
        if order_type not in ("MARKET", "LIMIT", "SL", "SL-M"):
            raise KiteError(400, "InputException", "Invalid order_type")
        quantity = _int_param(params, "quantity")
        if quantity <= 0 or quantity % instrument.lot_size:
            raise KiteError(
                400,
                "InputException",
                f"Quantity should be a multiple of lot size {instrument.lot_size}",
            )
        price = _decimal_param(params, "price")
        trigger = _decimal_param(params, "trigger_price")
        tag = params.get("tag")
        if tag is not None and len(tag) > 20:
            raise KiteError(400, "InputException", "Tag length should be less than or equal to 20")
        if order_type in ("LIMIT", "SL") and price <= 0:
            raise KiteError(400, "InputException", "Price is required for LIMIT orders")
        if order_type in ("SL", "SL-M") and trigger <= 0:
            raise KiteError(400, "InputException", "Trigger price is required for SL orders")
        for value in (price, trigger):
            if value and value % instrument.tick_size:
                raise KiteError(
                    400,
                    "InputException",
                    f"Price should be a multiple of tick size {instrument.tick_size}",
                )
        protection = _decimal_param(params, "market_protection")
        if order_type in ("MARKET", "SL-M") and protection == 0:
            raise KiteError(400, "InputException", "Market orders require market protection")
        with self._lock:
            self._sequence += 1
            now = self.clock()
            order = SimOrder(
                order_id=f"{now.astimezone(IST):%y%m%d}{self._sequence:09d}",
                exchange_order_id=f"11{self._sequence:014d}",
                instrument=instrument,
                variety=variety,
                side=Side(side_text),
                product=params["product"],
                order_type=order_type,
                validity=params.get("validity", "DAY"),
                quantity=quantity,
                price=price,
                trigger_price=trigger,
                disclosed_quantity=_int_param(params, "disclosed_quantity", 0),
                market_protection=protection,
                tag=tag,
                placed_at=now,
            )
            self.orders[order.order_id] = order
            for transient in ("PUT ORDER REQ RECEIVED", "VALIDATION PENDING", "OPEN PENDING"):
                order.status = transient
                order.history.append(self._order_json(order))
            limit = order.price if order.order_type in ("LIMIT", "SL") else None
            reference = self.reference[key]
            band = reference * self.circuit_percent / 100
            if limit is not None and not (reference - band <= limit <= reference + band):
                self._set_status(
                    order,
                    "REJECTED",
                    f"RMS:Rule: Check circuit limit including square off order exceeds : "
                    f"{reference - band:.2f} - {reference + band:.2f}",
                )
            else:
                self._set_status(
                    order, "TRIGGER PENDING" if order_type in ("SL", "SL-M") else "OPEN"
                )
                self._match(order)
                if order.validity == "IOC" and order.status == "OPEN":
                    order.cancelled_quantity = order.quantity - order.filled_quantity
                    self._set_status(order, "CANCELLED", "IOC order cancelled")
            return {"order_id": order.order_id}

    def _get_order(self, order_id: str) -> SimOrder:
        order = self.orders.get(order_id)
        if order is None:
            raise KiteError(400, "InputException", f"Invalid order_id: {order_id}")
        return order

    def _working_order(self, order_id: str, verb: str) -> SimOrder:
        order = self._get_order(order_id)
        if order.status not in ("OPEN", "TRIGGER PENDING"):
            message = f"Order cannot be {verb} as it is {order.status.lower()}"
            raise KiteError(400, "OrderException", message)
        return order

    def _modify(self, order_id: str, params: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            order = self._working_order(order_id, "modified")
            if self.faults.refuse_modifications > 0:
                self.faults.refuse_modifications -= 1
                status = order.status
                for transient in ("MODIFY VALIDATION PENDING", "MODIFY PENDING"):
                    order.status = transient
                    order.history.append(self._order_json(order))
                self._set_status(order, status, "Modification rejected by the exchange")
                return {"order_id": order.order_id}
            if "quantity" in params:
                quantity = _int_param(params, "quantity")
                if quantity <= order.filled_quantity or quantity % order.instrument.lot_size:
                    raise KiteError(400, "InputException", "Invalid quantity")
                order.quantity = quantity
            for name in ("price", "trigger_price"):
                if name in params:
                    value = _decimal_param(params, name)
                    if value % order.instrument.tick_size:
                        raise KiteError(
                            400,
                            "InputException",
                            f"Price should be a multiple of tick size {order.instrument.tick_size}",
                        )
                    setattr(order, name, value)
            if "order_type" in params:
                order.order_type = params["order_type"]
            if "validity" in params:
                order.validity = params["validity"]
            if "disclosed_quantity" in params:
                order.disclosed_quantity = _int_param(params, "disclosed_quantity")
            order.modified = True
            status = order.status
            for transient in ("MODIFY VALIDATION PENDING", "MODIFY PENDING", "MODIFIED"):
                order.status = transient
                order.history.append(self._order_json(order))
            self._set_status(order, status)
            self._match(order)
            return {"order_id": order.order_id}

    def _cancel(self, order_id: str) -> dict[str, Any]:
        with self._lock:
            order = self._working_order(order_id, "cancelled")
            if self.faults.fill_before_cancel and order.status == "OPEN":
                lot = order.instrument.lot_size
                remaining = order.quantity - order.filled_quantity
                if remaining > lot:
                    self._fill(
                        order,
                        lot,
                        order.price if order.price > 0 else self.prices[self._key(order)],
                    )
            order.status = "CANCEL PENDING"
            order.history.append(self._order_json(order))
            order.cancelled_quantity = order.quantity - order.filled_quantity
            self._set_status(order, "CANCELLED", "Cancelled by user")
            return {"order_id": order.order_id}

    def _order_json(self, order: SimOrder) -> dict[str, Any]:
        return {
            "placed_by": self.user_id,
            "order_id": order.order_id,
            "exchange_order_id": None
            if order.status == "PUT ORDER REQ RECEIVED"
            else order.exchange_order_id,
            "parent_order_id": None,
            "status": order.status,
            "status_message": order.status_message,
            "status_message_raw": order.status_message,
            "order_timestamp": kite_timestamp(order.placed_at),
            "exchange_update_timestamp": kite_timestamp(order.updated_at or order.placed_at),
            "exchange_timestamp": kite_timestamp(order.updated_at or order.placed_at),
            "variety": order.variety,
            "modified": order.modified,
            "exchange": order.instrument.ref.exchange.value,
            "tradingsymbol": order.instrument.ref.tradingsymbol,
            "instrument_token": order.instrument.instrument_token,
            "order_type": order.order_type,
            "transaction_type": order.side.value,
            "validity": order.validity,
            "product": order.product,
            "quantity": order.quantity,
            "disclosed_quantity": order.disclosed_quantity,
            "price": _num(order.price),
            "trigger_price": _num(order.trigger_price),
            "average_price": _num(order.average_price),
            "filled_quantity": order.filled_quantity,
            "pending_quantity": order.pending_quantity,
            "cancelled_quantity": order.cancelled_quantity,
            "market_protection": _num(order.market_protection),
            "meta": {},
            "tag": order.tag,
            "tags": [order.tag] if order.tag else [],
            "guid": f"sandbox-{order.order_id}",
        }

    # ------------------------------------------------------------------ reads

    def _visible_trades(self) -> list[dict[str, Any]]:
        """Kite's trade book lags its order book; `faults.trade_lag_steps` simulates that."""
        return [t for t in self.trades if self._visible_from[t["trade_id"]] <= self._steps]

    def _positions(self) -> dict[str, Any]:
        books: dict[tuple[str, str, str], dict[str, Any]] = {}
        for trade in self.trades:
            key = (trade["exchange"], trade["tradingsymbol"], trade["product"])
            book = books.setdefault(
                key,
                {
                    "buy_quantity": 0,
                    "sell_quantity": 0,
                    "buy_value": Decimal(0),
                    "sell_value": Decimal(0),
                },
            )
            value = Decimal(repr(trade["average_price"])) * trade["quantity"]
            side = "buy" if trade["transaction_type"] == "BUY" else "sell"
            book[f"{side}_quantity"] += trade["quantity"]
            book[f"{side}_value"] += value
        net = []
        for (exchange, symbol, product), book in sorted(books.items()):
            quantity = book["buy_quantity"] - book["sell_quantity"]
            last = self.prices.get(f"{exchange}:{symbol}", Decimal(0))
            average = Decimal(0)
            if quantity > 0:
                average = book["buy_value"] / book["buy_quantity"]
            elif quantity < 0:
                average = book["sell_value"] / book["sell_quantity"]
            net.append(
                {
                    "tradingsymbol": symbol,
                    "exchange": exchange,
                    "product": product,
                    "quantity": quantity,
                    "overnight_quantity": 0,
                    "multiplier": 1,
                    "average_price": _num(average.quantize(Decimal("0.0001"))),
                    "last_price": _num(last),
                    "buy_quantity": book["buy_quantity"],
                    "sell_quantity": book["sell_quantity"],
                    "buy_value": _num(book["buy_value"]),
                    "sell_value": _num(book["sell_value"]),
                    "pnl": _num(book["sell_value"] - book["buy_value"] + quantity * last),
                }
            )
        return {"net": net, "day": net}

    def _contract_note(self, body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, list):
            raise KiteError(400, "InputException", "Expected a list of orders")
        notes = []
        for item in body:
            if not isinstance(item, dict) or "order_id" not in item:
                raise KiteError(400, "InputException", "Each order needs an order_id")
            order = self._get_order(str(item["order_id"]))
            fills = [
                (t["quantity"], Decimal(repr(t["average_price"])))
                for t in self.trades
                if t["order_id"] == order.order_id
            ]
            charges = self.charges.order_charges(
                order.instrument,
                Product(order.product),
                order.side,
                fills,
                order.placed_at.astimezone(IST).date(),
            )
            notes.append(  # Kite's answer names no order: it follows the request's order
                {
                    "transaction_type": order.side.value,
                    "tradingsymbol": order.instrument.ref.tradingsymbol,
                    "exchange": order.instrument.ref.exchange.value,
                    "quantity": order.filled_quantity,
                    "price": _num(order.average_price),
                    "charges": {
                        "transaction_tax": _num(charges.stt),
                        "transaction_tax_type": "stt",
                        "exchange_turnover_charge": _num(charges.exchange_txn),
                        "sebi_turnover_charge": _num(charges.sebi),
                        "brokerage": _num(charges.brokerage),
                        "stamp_duty": _num(charges.stamp),
                        "gst": {
                            "igst": _num(charges.gst),
                            "cgst": 0,
                            "sgst": 0,
                            "total": _num(charges.gst),
                        },
                        "total": _num(charges.total),
                    },
                }
            )
        return notes

    def _quote(self, names: list[str], full: bool) -> dict[str, Any]:
        out = {}
        for name in names:
            if name not in self.prices:
                continue
            instrument = self._instrument(name)
            entry: dict[str, Any] = {
                "instrument_token": instrument.instrument_token,
                "last_price": _num(self.prices[name]),
            }
            if full:
                reference = self.reference[name]
                band = (reference * self.circuit_percent / 100).quantize(
                    Decimal("0.01"), ROUND_HALF_UP
                )
                entry.update(
                    {
                        "ohlc": {
                            "open": _num(reference),
                            "high": _num(reference),
                            "low": _num(reference),
                            "close": _num(reference),
                        },
                        "lower_circuit_limit": _num(reference - band),
                        "upper_circuit_limit": _num(reference + band),
                    }
                )
            out[name] = entry
        return out

    # ------------------------------------------------------------------ updates

    def postback_payload(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        payload = dict(snapshot)
        payload.update(
            {
                "user_id": self.user_id,
                "app_id": self.app_id,
                "unfilled_quantity": snapshot["pending_quantity"],
                "checksum": checksum(
                    snapshot["order_id"], snapshot["order_timestamp"], self.api_secret
                ),
            }
        )
        return payload

    def _publish(self, snapshot: dict[str, Any]) -> None:
        if snapshot["status"] in ("PUT ORDER REQ RECEIVED", "VALIDATION PENDING", "OPEN PENDING"):
            return  # Kite does not post every transient status
        with self._update_lock:
            if self.fault_rng.random() < self.faults.drop_updates:
                return
            copies = 2 if self.fault_rng.random() < self.faults.duplicate_updates else 1
            for _ in range(copies):
                self._updates.append(snapshot)
            if self.faults.reorder_updates and len(self._updates) > 1:
                self.fault_rng.shuffle(self._updates)
            self._update_lock.notify_all()

    def _deliver_updates(self) -> None:
        while not self._stopping.is_set():
            with self._update_lock:
                while not self._updates and not self._stopping.is_set():
                    self._update_lock.wait(0.2)
                batch, self._updates = self._updates, []
                self._in_flight += len(batch)
            try:
                for snapshot in batch:
                    self._send_websocket(snapshot)
                    if self.postback_url:
                        self._send_postback(self.postback_payload(snapshot))
            finally:
                with self._update_lock:
                    self._in_flight -= len(batch)

    def _send_postback(self, payload: dict[str, Any]) -> None:
        assert self.postback_url is not None
        request = urllib.request.Request(
            self.postback_url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
        except OSError:
            pass  # Kite does not retry failed postbacks either

    def _send_websocket(self, snapshot: dict[str, Any]) -> None:
        message = json.dumps({"type": "order", "data": snapshot})
        for connection in list(self._ws_clients):
            try:
                connection.send(message)
            except Exception:  # a client that went away
                self._ws_clients.discard(connection)

    def _ws_handler(self, connection: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        query = parse_qs(urlsplit(connection.request.path).query)
        if query.get("api_key") != [self.api_key] or query.get("access_token") != [
            self.access_token
        ]:
            connection.close(code=1008, reason="invalid api_key or access_token")
            return
        self._ws_clients.add(connection)
        try:
            for _message in connection:  # subscriptions and pings: nothing to answer
                pass
        except ConnectionClosed:
            pass  # a client gone without a closing handshake (a killed `serve`): as Kite
        finally:
            self._ws_clients.discard(connection)

    def wait_for_updates(self, timeout: float = 5.0) -> None:
        """Block until every update has been sent and its postback answered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._update_lock:
                if not self._updates and not self._in_flight:
                    return
            time.sleep(0.005)

    # ------------------------------------------------------------------ the API

    def handle(
        self, method: str, path: str, params: dict[str, str], body: Any, auth: str | None
    ) -> tuple[int, Any]:
        """Dispatch one request; returns (HTTP status, `data`), or raises KiteError."""
        route = _route(method, path)
        self.calls.append((time.monotonic(), route, method))
        if self.faults.rate_limit_next > 0:
            self.faults.rate_limit_next -= 1
            raise KiteError(429, "NetworkException", "Too many requests")
        if auth != f"token {self.api_key}:{self.access_token}":
            raise KiteError(403, "TokenException", "Incorrect `api_key` or `access_token`.")
        parts = [p for p in urlsplit(path).path.split("/") if p]
        if route == "order.place":
            return 200, self._place(parts[1], params)
        if route == "order.modify":
            return 200, self._modify(parts[2], params)
        if route == "order.cancel":
            return 200, self._cancel(parts[2])
        with self._lock:
            if route == "orders":
                return 200, [o.history[-1] for o in self.orders.values()]
            if route == "order.info":
                return 200, list(self._get_order(parts[1]).history)
            if route == "order.trades":
                order = self._get_order(parts[1])
                return 200, [t for t in self._visible_trades() if t["order_id"] == order.order_id]
            if route == "trades":
                return 200, self._visible_trades()
            if route == "portfolio.positions":
                return 200, self._positions()
            if route in ("market.quote.ltp", "market.quote"):
                names = parse_qs(urlsplit(path).query).get("i", [])
                return 200, self._quote(names, full=route == "market.quote")
            if route == "order.contract_note":
                return 200, self._contract_note(body)
        raise KiteError(404, "GeneralException", f"Route not found: {method} {urlsplit(path).path}")


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/orders/[a-z]+$"), "order.place"),
    ("PUT", re.compile(r"^/orders/[a-z]+/\w+$"), "order.modify"),
    ("DELETE", re.compile(r"^/orders/[a-z]+/\w+$"), "order.cancel"),
    ("GET", re.compile(r"^/orders$"), "orders"),
    ("GET", re.compile(r"^/orders/\w+/trades$"), "order.trades"),
    ("GET", re.compile(r"^/orders/\w+$"), "order.info"),
    ("GET", re.compile(r"^/trades$"), "trades"),
    ("GET", re.compile(r"^/portfolio/positions$"), "portfolio.positions"),
    ("GET", re.compile(r"^/quote/ltp$"), "market.quote.ltp"),
    ("GET", re.compile(r"^/quote$"), "market.quote"),
    ("POST", re.compile(r"^/charges/orders$"), "order.contract_note"),
]


def _route(method: str, path: str) -> str:
    bare = urlsplit(path).path
    for route_method, pattern, name in _ROUTES:
        if route_method == method and pattern.match(bare):
            return name
    return "unknown"


def _int_param(params: dict[str, str], name: str, default: int | None = None) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        if default is not None:
            return default
        raise KiteError(400, "InputException", f"Missing {name}")
    try:
        return int(raw)
    except ValueError:
        raise KiteError(400, "InputException", f"Invalid {name}: {raw}") from None


def _decimal_param(params: dict[str, str], name: str) -> Decimal:
    raw = params.get(name)
    if raw is None or raw == "":
        return Decimal(0)
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise KiteError(400, "InputException", f"Invalid {name}: {raw}") from None
    if not value.is_finite():
        raise KiteError(400, "InputException", f"Invalid {name}: {raw}")
    return value


class _Handler(BaseHTTPRequestHandler):
    sandbox: KiteSandbox
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        sandbox = self.sandbox
        if time.monotonic() < sandbox.faults.down_until:
            self.close_connection = True
            self.connection.close()  # gone away: no answer at all
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._reply(
                413,
                {"status": "error", "error_type": "InputException", "message": "Request too large"},
            )
            return
        raw = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type", "")
        body: Any = None
        params: dict[str, str] = {}
        if "json" in content_type and raw:
            try:
                body = json.loads(raw)
            except ValueError:
                self._reply(
                    400,
                    {"status": "error", "error_type": "InputException", "message": "Invalid JSON"},
                )
                return
        else:
            params = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        if self.command in ("GET", "DELETE"):
            params.update({k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()})
        route = _route(self.command, self.path)
        if route == "order.place" and sandbox.faults.fail_placements_before_accept > 0:
            sandbox.faults.fail_placements_before_accept -= 1
            self._reply(
                503,
                {
                    "status": "error",
                    "error_type": "NetworkException",
                    "message": "Gateway timed out before the order reached the OMS",
                },
            )
            return
        try:
            status, data = sandbox.handle(
                self.command, self.path, params, body, self.headers.get("Authorization")
            )
        except KiteError as error:
            self._reply(
                error.status,
                {
                    "status": "error",
                    "error_type": error.error_type,
                    "message": error.message,
                    "data": None,
                },
            )
            return
        if route == "order.place":
            faults = sandbox.faults
            if faults.delay_placement_response:
                time.sleep(faults.delay_placement_response)
            if faults.drop_placements_after_accept > 0:
                faults.drop_placements_after_accept -= 1
                self.close_connection = True
                self.connection.close()
                return
            if faults.fail_placements_after_accept > 0:
                faults.fail_placements_after_accept -= 1
                self._reply(
                    500,
                    {
                        "status": "error",
                        "error_type": "GeneralException",
                        "message": "Internal server error",
                    },
                )
                return
        self._reply(status, {"status": "success", "data": data})

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, default=_json_default).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _num(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")
