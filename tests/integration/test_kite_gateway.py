"""The gateway against the Kite sandbox, through the official client, on SQLite and
PostgreSQL: exactly-once placement, converging updates, reconciliation, charges."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from kiteconnect import KiteConnect

from ledger.application import OrderLedger
from ledger.commands import CancelOrder
from ledger.domain.order import Order
from ledger.domain.status import OrderStatus
from ledger.domain.values import Exchange, InstrumentRef, OrderType, Product, Side
from ledger.kite.gateway import KiteGateway
from ledger.kite.limiter import RateLimiter
from ledger.kite.outbox import Outbox
from ledger.kite.sandbox import KiteSandbox, checksum
from tests.conftest import LedgerFactory
from tests.kite_support import (
    ACCOUNT,
    assert_matches_sandbox,
    client,
    gateway_for,
    place_at_kite,
    running_service,
    settle,
    submit,
    trading_session,
)


@pytest.fixture
def sandbox() -> Iterator[KiteSandbox]:
    with KiteSandbox(seed=11) as sandbox:
        yield sandbox


def test_a_trading_session_converges_to_the_broker(
    ledger: OrderLedger, sandbox: KiteSandbox
) -> None:
    gateway = gateway_for(ledger, sandbox)
    made = trading_session(ledger, sandbox, gateway)
    settle(sandbox, gateway)
    assert_matches_sandbox(ledger, sandbox)
    status = {name: ledger.get_order(order.id).status for name, order in made.items()}
    assert status["full"] is OrderStatus.FILLED
    assert status["market"] is OrderStatus.FILLED
    assert status["reject"] is OrderStatus.REJECTED
    assert status["cancel"] is OrderStatus.CANCELLED
    assert status["modify"] is OrderStatus.FILLED
    assert ledger.get_order(made["modify"].id).price == Decimal("812.35")
    ioc = ledger.get_order(made["ioc"].id)
    assert ioc.status is OrderStatus.CANCELLED
    assert 0 < ioc.filled_quantity < 300
    race = ledger.get_order(made["race"].id)
    assert race.status is OrderStatus.CANCELLED
    assert race.filled_quantity > 0  # the fill that beat the cancel is kept
    stop = ledger.get_order(made["stop"].id)
    assert stop.triggered_at is not None
    assert stop.filled_quantity > 0
    partial = ledger.get_order(made["partial"].id)
    assert partial.status is OrderStatus.CANCELLED
    assert 0 < partial.filled_quantity < 400
    assert all(f.charges is not None for o in ledger.all_orders() for f in o.fills)
    assert gateway.poll().recorded == 0  # nothing left to learn


def test_postbacks_drive_the_ledger_and_bad_ones_change_nothing(
    ledger: OrderLedger, sandbox: KiteSandbox
) -> None:
    gateway = gateway_for(ledger, sandbox)
    with running_service(gateway, sandbox) as service:
        order = submit(ledger, "pb", quantity=10, price="812.35")
        gateway.dispatch()
        sandbox.step(3)
        sandbox.wait_for_updates()
        service.worker.drain()
        assert ledger.get_order(order.id).status is OrderStatus.FILLED  # no poll: postbacks did it
        before = ledger.count_events()
        sim = sandbox.orders[ledger.get_order(order.id).broker_order_id or ""]
        genuine = sandbox.postback_payload(sim.history[-1])

        def post(body: bytes) -> tuple[int, dict[str, Any]]:
            request = urllib.request.Request(service.postback_url, data=body, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        assert post(json.dumps(genuine).encode())[0] == 200
        forged = {**genuine, "checksum": "0" * 64}
        status, answer = post(json.dumps(forged).encode())
        assert (status, answer["message"]) == (
            401,
            "checksum mismatch: not signed with this app's secret",
        )
        status, answer = post(b"{not json")
        assert status == 400
        assert "malformed postback" in answer["message"]
        other_app = {**genuine, "app_id": 99}
        status, answer = post(json.dumps(other_app).encode())
        assert (status, answer["message"]) == (403, "postback for another app (99)")
        unknown = {**genuine, "order_id": "999999999999999", "tag": None}
        unknown["checksum"] = checksum(
            unknown["order_id"], unknown["order_timestamp"], sandbox.api_secret
        )
        status, answer = post(json.dumps(unknown).encode())
        assert status == 404
        assert "unknown order 999999999999999" in answer["message"]
        not_ours = {**genuine, "order_id": "999999999999998"}  # our tag, another order id
        not_ours["checksum"] = checksum(
            not_ours["order_id"], not_ours["order_timestamp"], sandbox.api_secret
        )
        assert post(json.dumps(not_ours).encode())[0] == 404
        status, answer = post(b"x" * 70000)
        assert status == 413
        for pieces, pause in (([b'{"order'], 0.0), ([b"{", b"x", b"y", b"z"], 0.8)):
            # Declared 200 bytes; sent a few and stopped, or trickled them slowly: answered
            # within the body's 2 s deadline, not awaited.
            started = time.monotonic()
            status, answer = _raw_post(service.postback_url, 200, pieces, pause)
            assert status == 408
            assert "shorter than its Content-Length" in answer["message"]
            assert time.monotonic() - started < 4
        service.worker.drain()
        assert ledger.count_events() == before


def test_duplicated_dropped_and_reordered_updates_converge(
    ledger: OrderLedger, sandbox: KiteSandbox
) -> None:
    gateway = gateway_for(ledger, sandbox)
    sandbox.faults.drop_updates = 0.3
    sandbox.faults.duplicate_updates = 0.5
    sandbox.faults.reorder_updates = True
    with running_service(gateway, sandbox) as service:
        trading_session(ledger, sandbox, gateway)
        sandbox.wait_for_updates()
        service.worker.drain()
        settle(sandbox, gateway)
        assert_matches_sandbox(ledger, sandbox)


def test_a_lost_placement_reply_is_looked_up_not_resent(
    ledger: OrderLedger, sandbox: KiteSandbox
) -> None:
    gateway = gateway_for(ledger, sandbox)
    order = submit(ledger, "lost", quantity=10, price="800.00")  # rests: below the market
    sandbox.faults.fail_placements_after_accept = 1  # in the book, then a 500
    report = gateway.dispatch()
    assert report.unknown_outcome == [order.id]
    assert len(sandbox.orders) == 1
    import time

    time.sleep(0.25)
    report = gateway.dispatch()
    assert report.found_at_broker == [order.id]
    assert len(sandbox.orders) == 1
    assert ledger.get_order(order.id).broker_order_id == next(iter(sandbox.orders))
    sandbox.faults.drop_placements_after_accept = 1  # in the book, then no answer at all
    second = submit(ledger, "dropped", quantity=10, price="800.00")
    assert gateway.dispatch().unknown_outcome == [second.id]
    time.sleep(0.25)
    gateway.dispatch()
    assert len(sandbox.orders) == 2
    assert ledger.get_order(second.id).status is not OrderStatus.SUBMITTED


def test_a_lost_placement_is_never_matched_to_another_orders_broker_order(
    ledger: OrderLedger, sandbox: KiteSandbox
) -> None:
    """Orders written before tags were the ledger's own may share a label: after a lost
    reply, the look-up at Kite must not take the broker order another ledger order holds
    (it would never be placed, and that order's fills would count twice)."""
    gateway = gateway_for(ledger, sandbox)

    def legacy(name: str) -> Order:
        return Order.submit(
            account=ACCOUNT,
            client_order_id=name,
            instrument=ledger.instruments.get(InstrumentRef(Exchange.NSE, "SBIN")),
            side=Side.BUY,
            quantity=10,
            order_type=OrderType.LIMIT,
            product=Product.CNC,
            price=Decimal("800.00"),
            tag="momentum",
            actor="strategy",
            at=datetime.now(UTC),
        )

    first, second, third = legacy("legacy-1"), legacy("legacy-2"), legacy("legacy-3")
    ledger.save(first)
    assert gateway.dispatch().placed == [first.id]
    ledger.save(second)
    sandbox.faults.fail_placements_before_accept = 1  # an error, and nothing in the book
    assert gateway.dispatch().unknown_outcome == [second.id]
    time.sleep(0.25)
    report = gateway.dispatch()
    assert report.found_at_broker == []
    assert report.placed == [second.id]
    assert len(sandbox.orders) == 2

    # The third is booked at Kite but its reply is lost, and a poll meets its broker
    # order before the dispatcher looks again: it is the third's (the one order with that
    # label, instrument and side and no broker order), not an outside order to adopt,
    # after which the look-up would skip it and place the third a second time.
    ledger.save(third)
    sandbox.faults.drop_placements_after_accept = 1  # booked, then no answer
    assert gateway.dispatch().unknown_outcome == [third.id]
    # (The first order changed at Kite meanwhile, so the poll converges it too, and the
    # label's last order seen is the first, which holds another broker order.)
    kite_id = ledger.get_order(first.id).broker_order_id
    gateway.kite.modify_order(variety="regular", order_id=kite_id, price="800.05")
    assert gateway.poll().adopted == []
    time.sleep(0.25)
    gateway.dispatch()
    assert len(sandbox.orders) == 3
    held = {ledger.get_order(o.id).broker_order_id for o in (first, second, third)}
    assert held == set(sandbox.orders)


def test_a_placement_still_in_flight_is_not_sent_by_another_dispatcher(
    ledger: OrderLedger, sandbox: KiteSandbox, make_ledger: LedgerFactory
) -> None:
    """Two dispatchers on one ledger: while the first one's `place_order` waits on Kite,
    the second must neither send the order nor call it cancelled before it was sent,
    however long past its grace it looks, and even when the try outlasts the lease it
    began with (the client's timeout bounds each wait on the socket, not the request):
    the lease is renewed while the try is in flight."""
    slow = client(sandbox)
    place = slow.place_order

    def slow_place(**params: Any) -> Any:  # the request in transit, not yet in the book
        time.sleep(1.2)
        return place(**params)

    slow.place_order = slow_place
    assert ledger.storage is not None
    first = KiteGateway(
        ledger,
        slow,
        outbox=Outbox(ledger.storage),
        account=ACCOUNT,
        limiter=RateLimiter({"orders": ((1.0, 1000),), "other": ((1.0, 1000),)}),
        send_lease=0.4,  # shorter than the 1.2 s try
    )
    second = gateway_for(make_ledger(), sandbox)  # grace 0.2 s
    order = submit(ledger, "in-flight", quantity=10, price="800.00")
    sending = threading.Thread(target=first.dispatch)
    sending.start()
    try:
        for _ in range(8):  # 0.2 s to 1.0 s into the first one's send
            time.sleep(0.1)
            report = second.dispatch()
            assert report.placed == []
            assert report.found_at_broker == []
    finally:
        sending.join()
    assert len(sandbox.orders) == 1
    assert ledger.get_order(order.id).broker_order_id == next(iter(sandbox.orders))


def test_a_trade_reported_after_the_cancel_is_a_late_fill(
    ledger: OrderLedger, sandbox: KiteSandbox
) -> None:
    """Kite's trade book lags its order book: the cancel is seen first, the trade after."""
    gateway = gateway_for(ledger, sandbox)
    sandbox.faults.trade_lag_steps = 2
    sandbox.liquidity = (0.3, 0.3)
    order = submit(ledger, "late", quantity=100, price="812.35")
    gateway.dispatch()  # partly filled at once, but the trade is not visible yet
    ledger.request_cancel(CancelOrder(order_id=order.id))
    gateway.dispatch()
    assert ledger.get_order(order.id).status is OrderStatus.CANCELLED
    assert ledger.get_order(order.id).filled_quantity == 0
    sandbox.step(2)
    gateway.poll()
    late = ledger.get_order(order.id)
    assert late.status is OrderStatus.CANCELLED
    assert late.filled_quantity == 30
    assert [type(e).__name__ for e in ledger.history(order.id)][-2:] == ["Cancelled", "Filled"]
    assert_matches_sandbox(ledger, sandbox)


def test_orders_placed_outside_the_ledger_are_adopted(
    ledger: OrderLedger, sandbox: KiteSandbox
) -> None:
    kite = client(sandbox)
    broker_id = place_at_kite(kite, quantity=5, price="812.35", tag="webapp")
    sandbox.step(3)
    gateway = gateway_for(ledger, sandbox)
    first = gateway.reconcile()
    assert first.adopted == [broker_id]
    adopted = ledger.find_order("ZD1234", f"kite-{broker_id}")
    assert adopted.strategy == "external"
    assert adopted.filled_quantity == sandbox.orders[broker_id].filled_quantity
    events = ledger.count_events()
    second = gateway.reconcile()
    assert second.adopted == []
    assert second.recorded == 0
    assert ledger.count_events() == events  # a second reconciliation adds nothing


def test_429_is_backed_off_and_retried(ledger: OrderLedger, sandbox: KiteSandbox) -> None:
    gateway = gateway_for(ledger, sandbox)
    order = submit(
        ledger,
        "odd-lot",
        exchange="NFO",
        tradingsymbol="NIFTY26DECFUT",
        quantity=65,
        price="26000.0",
        product="NRML",
    )
    sandbox.faults.rate_limit_next = 2  # 429 twice: backed off and retried
    report = gateway.dispatch()
    assert report.placed == [order.id]
    assert [c for c in sandbox.calls if c[1] == "order.place"].__len__() == 3


def test_a_placement_kite_refuses_is_recorded_as_rejected(ledger: OrderLedger) -> None:
    from ledger.instruments import InstrumentCatalog

    known = InstrumentCatalog(
        [i for i in InstrumentCatalog.bundled() if i.ref.tradingsymbol != "TCS"]
    )
    with KiteSandbox(instruments=known) as sandbox:
        gateway = gateway_for(ledger, sandbox)
        order = submit(ledger, "unknown-at-kite", tradingsymbol="TCS", quantity=1, price="3500.0")
        report = gateway.dispatch()
        assert report.rejected == [order.id]
        refused = ledger.get_order(order.id)
        assert refused.status is OrderStatus.REJECTED
        assert refused.reason == "Invalid instrument: NSE:TCS"
        assert sandbox.orders == {}


def test_the_limiter_keeps_a_burst_within_kites_limits(
    ledger: OrderLedger, sandbox: KiteSandbox
) -> None:
    gateway = gateway_for(ledger, sandbox, limiter=RateLimiter())
    for n in range(25):
        submit(ledger, f"burst-{n}", quantity=1, price="800.00")
    gateway.dispatch()
    placed = sorted(t for t, route, _ in sandbox.calls if route == "order.place")
    assert len(placed) == 25
    for i in range(len(placed) - 10):
        assert placed[i + 10] - placed[i] >= 1.0, "11 placements inside one second"


def test_charges_compare_with_the_virtual_contract_note(
    ledger: OrderLedger, sandbox: KiteSandbox
) -> None:
    from ledger.charges import ChargesSchedule, compare_contract_note, contract_note_request
    from ledger.domain.values import IST

    gateway = gateway_for(ledger, sandbox)
    order = submit(ledger, "charged", quantity=100, price="812.35", product="MIS")
    gateway.dispatch()
    sandbox.step(5)
    settle(sandbox, gateway)
    order = ledger.get_order(order.id)
    assert order.filled_quantity > 0
    instrument = ledger.instruments.get(order.instrument)
    ours = ChargesSchedule.bundled().order_charges(
        instrument,
        order.product,
        order.side,
        [(f.quantity, f.price) for f in order.fills],
        order.created_on.astimezone(IST).date(),
    )
    assert ours.total == sum((f.charges or Decimal(0) for f in order.fills), Decimal(0))
    request = contract_note_request([order])
    assert request[0]["order_id"] == order.broker_order_id
    note = client(sandbox).get_virtual_contract_note(request)
    assert "order_id" not in note[0]  # as Kite answers: by the request's order
    assert compare_contract_note({order.broker_order_id or "": ours}, note, requested=request) == []


def _raw_post(
    url: str, declared: int, pieces: list[bytes], pause: float
) -> tuple[int, dict[str, Any]]:
    """POST with a Content-Length of `declared`, sending `pieces` `pause` seconds apart."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(
            f"POST {parts.path} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n".encode()
        )
        for piece in pieces:
            with contextlib.suppress(OSError):  # the server may answer and close first
                conn.sendall(piece)
            time.sleep(pause)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_sends_lease_covers_the_clients_timeout(ledger: OrderLedger) -> None:
    """kiteconnect hands its timeout to requests, which also takes (connect, read)."""
    assert ledger.storage is not None
    for timeout, lease in [(10, 15.0), ((3, 10), 18.0), (None, 12.0)]:
        kite = KiteConnect("key", "token", timeout=timeout)
        gateway = KiteGateway(ledger, kite, outbox=Outbox(ledger.storage), account=ACCOUNT)
        assert gateway.send_lease == lease


def test_a_fill_recorded_meanwhile_by_another_process_is_not_charged_twice(
    make_ledger: LedgerFactory,
) -> None:
    """A fill's charges are its share of its order's, so they depend on the fills before
    it. The gateway worked them out on the order it had read; when another process (a
    `reconcile` beside `serve`) recorded a fill in between, the ledger's retry decided on
    the fresh order but kept the stale figure, and the order paid its Rs 20 flat options
    brokerage (and its GST) twice: 77.20 where Kite bills 53.60."""
    from ledger.charges import ChargesSchedule
    from ledger.commands import RecordAccepted, RecordFill
    from ledger.domain.values import IST, Source
    from ledger.kite.payloads import KiteTrade

    serve, reconcile = make_ledger(), make_ledger()
    option = "NIFTY26DEC26000CE"
    order = submit(
        serve, "opt-1", exchange="NFO", tradingsymbol=option, side="SELL", quantity=130,
        product="NRML", price="120.50",
    )  # fmt: skip
    serve.record(RecordAccepted(order_id=order.id, broker_order_id="B1"))
    assert serve.storage is not None
    gateway = KiteGateway(serve, None, outbox=Outbox(serve.storage), account=ACCOUNT)
    at = datetime(2026, 11, 24, 4, 30, tzinfo=UTC)

    def trade(trade_id: str) -> KiteTrade:
        return KiteTrade.model_validate(
            {
                "trade_id": trade_id, "order_id": "B1", "exchange": "NFO",
                "tradingsymbol": option, "product": "NRML", "transaction_type": "SELL",
                "quantity": 65, "average_price": 120.5, "fill_timestamp": at,
            }
        )  # fmt: skip

    read_order = gateway._charges_for

    def another_process_records_a_fill_meanwhile(
        current: Order, kite_trade: KiteTrade
    ) -> Decimal | None:
        if not current.fills:
            share = read_order(current, trade("T1"))
            reconcile.record(
                RecordFill(
                    order_id=order.id, trade_id="T1", exchange=Exchange.NFO,
                    tradingsymbol=option, quantity=65, price=Decimal("120.50"),
                    exchange_timestamp=at, charges=share, source=Source.POLL,
                )
            )  # fmt: skip
        return read_order(current, kite_trade)

    gateway._charges_for = another_process_records_a_fill_meanwhile  # type: ignore[method-assign,assignment]
    problems: list[str] = []
    gateway._record_fill(order.id, trade("T2"), Source.POSTBACK, problems)
    assert problems == []
    recorded = serve.get_order(order.id)
    assert sorted(f.trade_id for f in recorded.fills) == ["T1", "T2"]
    billed = ChargesSchedule.bundled().order_charges(
        serve.instruments.get(recorded.instrument),
        Product.NRML,
        Side.SELL,
        [(65, Decimal("120.50")), (65, Decimal("120.50"))],
        at.astimezone(IST).date(),
    )
    assert recorded.charges == billed.total == Decimal("53.60")
