"""The gateway against Kite's records as Kite writes them (a scripted fake Kite: the
sandbox does not write these), on SQLite and PostgreSQL: in-between records, the moments
at which a reply or a fetch lands, and what Kite changes on its own."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from kiteconnect import exceptions as kite_errors

from ledger.application import OrderLedger
from ledger.charges import ChargesSchedule
from ledger.commands import CancelOrder, ModifyOrder, RecordCancelled
from ledger.domain.errors import InvalidCommand
from ledger.domain.order import Order
from ledger.domain.status import EventKind, OrderStatus
from ledger.domain.values import IST, OrderType, Product, Side, Source, Validity
from ledger.kite.gateway import KiteGateway
from ledger.kite.outbox import Attempt, Outbox
from ledger.kite.postbacks import expected_checksum
from ledger.kite.service import KiteService
from tests.conftest import LedgerFactory
from tests.kite_support import ACCOUNT, ScriptedKite, gateway_for, kite_record, kite_trade, submit
from tests.property.fuzz import kite_sample
from tests.support import FakeClock


def _changes(ledger: OrderLedger, order: Order) -> list[tuple[str, Decimal | None]]:
    """The order's modification events, with the price each names."""
    return [
        (type(e).__name__, e.changes.price)
        for e in ledger.history(order.id)
        if isinstance(e, Order.ModifyRequested | Order.Modified)
    ]


def test_kites_records_of_a_modification_in_flight_are_not_taken_for_its_terms(
    ledger: OrderLedger,
) -> None:
    """After modify_order Kite's history ends in MODIFY VALIDATION PENDING / MODIFY PENDING
    / MODIFIED records that still show the old terms (Kite's own sample order_info.json:
    300 on those, 300.1 on the OPEN after them). Read as the order's terms, they moved the
    order back to the old price right after the ledger's own modification, and the next
    poll forward again. The change is recorded once, when Kite shows it made; until then
    the request is pending."""
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    order = kite.placed(gateway, submit(ledger, "modify", price="812.35"))
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    in_flight = {**opened, "order_timestamp": "2026-11-24 09:25:00"}

    def take(params: dict[str, object]) -> None:  # Kite takes it; the exchange has not yet
        kite.histories[broker_id] += [
            {**in_flight, "status": "MODIFY VALIDATION PENDING"},
            {**in_flight, "status": "MODIFY PENDING"},
        ]

    kite.on_modify = take
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
    gateway.dispatch()
    assert ledger.get_order(order.id).price == Decimal("812.35")
    assert ledger.get_order(order.id).pending is EventKind.MODIFY_REQUESTED

    kite.histories[broker_id].append({**in_flight, "status": "MODIFIED"})
    gateway.poll()
    assert ledger.get_order(order.id).pending is EventKind.MODIFY_REQUESTED
    kite.histories[broker_id].append(
        kite_record(order, broker_id, price=813.0, order_timestamp="2026-11-24 09:25:00")
    )
    gateway.poll()
    gateway.poll()
    assert ledger.get_order(order.id).price == Decimal("813.00")
    assert _changes(ledger, order) == [
        ("ModifyRequested", Decimal("813.00")),
        ("Modified", Decimal("813.00")),
    ]


def test_a_converge_that_read_kite_before_another_does_not_move_the_terms_back(
    ledger: OrderLedger,
) -> None:
    """Two converges of one order race (the update worker on a postback, the poller): the
    one that read Kite's history first but records last must not take its older terms for
    a new modification and move the order back."""
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    order = kite.placed(gateway, submit(ledger, "race", price="812.35"))
    broker_id = order.broker_order_id or ""
    read, go_on = threading.Event(), threading.Event()

    def in_transit(order_id: str) -> None:  # the first read's reply, held up on its way
        if not read.is_set():
            read.set()
            go_on.wait(5)

    kite.on_history = in_transit
    worker = threading.Thread(target=gateway.converge, args=(broker_id, Source.POSTBACK))
    worker.start()
    try:
        assert read.wait(5)
        kite.histories[broker_id].append(
            kite_record(order, broker_id, price=813.0, order_timestamp="2026-11-24 09:30:00")
        )
        gateway.poll()
        assert ledger.get_order(order.id).price == Decimal("813.00")
    finally:
        go_on.set()
        worker.join(5)
    assert ledger.get_order(order.id).price == Decimal("813.00")
    assert _changes(ledger, order) == [("Modified", Decimal("813.00"))]


def test_a_converge_that_read_kite_before_the_ledgers_own_modification_keeps_it(
    ledger: OrderLedger,
) -> None:
    """The poller read Kite's history just before the dispatcher's modify_order reached
    Kite, and records after it: the old price it read is not a modification at Kite."""
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    order = kite.placed(gateway, submit(ledger, "own", price="812.35"))
    broker_id = order.broker_order_id or ""
    read, go_on = threading.Event(), threading.Event()

    def in_transit(order_id: str) -> None:
        if not read.is_set():
            read.set()
            go_on.wait(5)

    def modified_at_kite(params: dict[str, object]) -> None:
        kite.histories[broker_id].append(
            kite_record(order, broker_id, price=813.0, order_timestamp="2026-11-24 09:30:00")
        )

    kite.on_history = in_transit
    kite.on_modify = modified_at_kite
    poller = threading.Thread(target=gateway.converge, args=(broker_id, Source.POLL))
    poller.start()
    try:
        assert read.wait(5)
        ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
        gateway.dispatch()
        assert ledger.get_order(order.id).price == Decimal("813.00")
    finally:
        go_on.set()
        poller.join(5)
    assert ledger.get_order(order.id).price == Decimal("813.00")
    assert _changes(ledger, order) == [
        ("ModifyRequested", Decimal("813.00")),
        ("Modified", Decimal("813.00")),
    ]


def test_an_order_type_changed_at_kite_is_recorded_with_the_new_types_prices(
    ledger: OrderLedger,
) -> None:
    """Kite lets a stop order be changed to LIMIT or MARKET (its web app, another tool). The
    change came with no price when the price stayed (a LIMIT without one), and a MARKET
    order the broker reports was held to the request rule that it carry market protection:
    refused on every poll, for ever. And the stop's TRIGGER PENDING -> OPEN, which here is
    the type change, was read as a trigger."""
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    stop = kite.placed(
        gateway,
        submit(
            ledger,
            "to-limit",
            side="SELL",
            order_type="SL",
            price="795.00",
            trigger_price="796.00",
        ),
        status="TRIGGER PENDING",
    )
    to_market = kite.placed(
        gateway,
        submit(ledger, "to-market", order_type="SL", price="812.35", trigger_price="812.00"),
        status="TRIGGER PENDING",
    )
    for order, changed in (
        (stop, {"order_type": "LIMIT", "trigger_price": 0}),
        (to_market, {"order_type": "MARKET", "price": 0, "trigger_price": 0}),
    ):
        broker_id = order.broker_order_id or ""
        kite.histories[broker_id].append(
            kite_record(order, broker_id, order_timestamp="2026-11-24 09:40:00", **changed)
        )
        assert gateway.converge(broker_id, Source.POSTBACK).problems == []
    assert gateway.poll().problems == []

    limit = ledger.get_order(stop.id)
    assert (limit.order_type, limit.price, limit.trigger_price) == (
        OrderType.LIMIT,
        Decimal("795.00"),
        None,
    )
    market = ledger.get_order(to_market.id)
    assert (market.order_type, market.price, market.trigger_price) == (OrderType.MARKET, None, None)
    for order in (limit, market):
        assert order.triggered_at is None
        assert [type(e).__name__ for e in ledger.history(order.id)] == [
            "Submitted",
            "Accepted",
            "Modified",
        ]
    before = ledger.count_events()
    assert gateway.poll().problems == []
    assert ledger.count_events() == before


def test_an_order_kite_cut_to_what_had_filled_is_filled(ledger: OrderLedger) -> None:
    """Kite cut the order from 100 to 50 (modified at Kite) and it completed with 50
    filled. The ledger had all 50 filled before it learnt of the cut (the converge read the
    history just before the cut and the trades just after the last fill): Kite's quantity,
    equal to what had filled, was refused, and the order stayed PARTIALLY_FILLED 50/100
    for ever while Kite said COMPLETE."""
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    order = kite.placed(gateway, submit(ledger, "cut", quantity=100, price="812.35"))
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    part = {**opened, "filled_quantity": 40, "pending_quantity": 60, "average_price": 812.35}
    kite.histories[broker_id].append(part)
    kite.trade_book = [kite_trade(order, broker_id, "T1", 40, "812.35")]

    def cut_and_filled(order_id: str) -> None:  # while the history read is on its way
        kite.on_history = None
        done = {**part, "quantity": 50, "filled_quantity": 50, "pending_quantity": 0}
        kite.histories[broker_id] += [
            {**part, "status": "MODIFY VALIDATION PENDING"},
            {**part, "status": "MODIFY PENDING"},
            {**part, "status": "MODIFIED"},
            {**part, "quantity": 50, "pending_quantity": 10},
            {**done, "status": "COMPLETE", "order_timestamp": "2026-11-24 09:30:00"},
        ]
        kite.trade_book.append(kite_trade(order, broker_id, "T2", 10, "812.35"))

    kite.on_history = cut_and_filled
    gateway.converge(broker_id, Source.POSTBACK)
    assert ledger.get_order(order.id).filled_quantity == 50
    assert gateway.poll().problems == []
    done = ledger.get_order(order.id)
    assert (done.status, done.quantity, done.filled_quantity) == (OrderStatus.FILLED, 50, 50)
    assert [type(e).__name__ for e in ledger.history(order.id)][-1] == "Modified"
    assert gateway.poll().recorded == 0


def test_kite_cannot_cut_an_order_below_what_has_filled(ledger: OrderLedger) -> None:
    """A quantity below what has filled is impossible: refused and reported, not applied."""
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    order = kite.placed(gateway, submit(ledger, "below", quantity=100, price="812.35"))
    broker_id = order.broker_order_id or ""
    kite.trade_book = [kite_trade(order, broker_id, "T1", 40, "812.35")]
    part = kite_record(order, broker_id, filled_quantity=40, pending_quantity=60)
    kite.histories[broker_id].append(part)
    assert gateway.converge(broker_id, Source.POLL).problems == []
    kite.histories[broker_id].append({**part, "quantity": 30, "pending_quantity": 0})
    problems = gateway.converge(broker_id, Source.POLL).problems
    assert problems == [
        "RecordModified refused: quantity: must not be less than the 40 already filled, got 30"
    ]
    still = ledger.get_order(order.id)
    assert (still.status, still.quantity, still.filled_quantity) == (
        OrderStatus.PARTIALLY_FILLED,
        100,
        40,
    )


def test_polling_records_a_stop_order_that_triggered_with_no_prompt(ledger: OrderLedger) -> None:
    """Kite shows a triggered stop order as OPEN. With no postback (or at start-up), the
    poll took the ledger's untriggered order for up to date and never recorded the
    trigger."""
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    stops = [
        kite.placed(
            gateway,
            submit(
                ledger,
                f"stop-{n}",
                side="SELL",
                order_type="SL",
                price="795.00",
                trigger_price="796.00",
            ),
            status="TRIGGER PENDING",
        )
        for n in range(2)
    ]
    for stop, look in zip(stops, (gateway.poll, gateway.reconcile), strict=True):
        broker_id = stop.broker_order_id or ""
        kite.histories[broker_id].append(
            kite_record(stop, broker_id, exchange_update_timestamp="2026-11-24 10:05:00")
        )
        assert look().problems == []
        now = ledger.get_order(stop.id)
        assert now.status is OrderStatus.TRIGGERED
        assert now.triggered_at == datetime(2026, 11, 24, 10, 5, tzinfo=IST)
    assert gateway.poll().recorded == 0


def test_an_update_that_moves_a_trigger_price_is_converged_not_dropped(
    ledger: OrderLedger,
) -> None:
    """A postback or WebSocket update is skipped when the ledger already knows all it
    says; that test compared the price (of LIMIT and SL orders only) and never the trigger
    price, so an update for a trigger moved at Kite was dropped unread."""
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    service = KiteService(gateway, api_secret="secret", app_id=1234)
    service.worker.start()
    try:
        stop = kite.placed(
            gateway,
            submit(
                ledger, "sl", side="SELL", order_type="SL", price="795.00", trigger_price="796.00"
            ),
            status="TRIGGER PENDING",
        )
        market_stop = kite.placed(
            gateway,
            submit(
                ledger,
                "sl-m",
                side="SELL",
                quantity=10,
                order_type="SL-M",
                trigger_price="796.00",
                market_protection="-1",
            ),
            status="TRIGGER PENDING",
        )
        moved: dict[str, dict[str, Any]] = {}
        for order, trigger in ((stop, 797.0), (market_stop, 790.0)):
            broker_id = order.broker_order_id or ""
            moved[broker_id] = kite_record(
                order,
                broker_id,
                status="TRIGGER PENDING",
                trigger_price=trigger,
                order_timestamp="2026-11-24 09:30:00",
            )
            kite.histories[broker_id].append(moved[broker_id])
        postback = {**moved[stop.broker_order_id or ""], "app_id": 1234}
        postback["checksum"] = expected_checksum(
            postback["order_id"], postback["order_timestamp"], "secret"
        )
        assert service.accept_postback(json.dumps(postback).encode()) == (200, "accepted")
        service.on_websocket_update(None, {**moved[market_stop.broker_order_id or ""]})
        service.worker.drain()
        assert service.worker.skipped == 0
        assert ledger.get_order(stop.id).trigger_price == Decimal("797.00")
        assert ledger.get_order(market_stop.id).trigger_price == Decimal("790.00")
        service.accept_postback(json.dumps(postback).encode())  # a repeat: nothing new
        assert service.worker.skipped == 1
    finally:
        service.worker.stop()


def test_a_cancellation_kite_took_is_not_sent_again(ledger: OrderLedger) -> None:
    """Kite took the cancel_order call; the exchange had not confirmed yet (CANCEL PENDING)
    when the grace ran out, and the dispatcher sent it again. Kite refused the repeat ("being
    processed") and that refusal was recorded as CancelRejected, although the first
    cancellation stood. A send whose outcome is unknown is still sent again."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "cancel")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    sends: list[str] = []

    def cancel(params: dict[str, object]) -> None:
        sends.append("cancel")
        if len(sends) == 1:
            raise OSError("connection reset")  # did Kite get it? unknown
        if len(sends) == 2:
            kite.histories[broker_id].append({**opened, "status": "CANCEL PENDING"})
            return
        raise kite_errors.OrderException(
            "Order cannot be cancelled as it is being processed. Try later."
        )

    kite.on_cancel = cancel
    ledger.request_cancel(CancelOrder(order_id=order.id))
    gateway.dispatch()
    assert len(sends) == 1
    now[0] += 10
    gateway.dispatch()  # the outcome was unknown: sent again
    assert len(sends) == 2
    for _ in range(3):
        now[0] += 10
        gateway.dispatch()
        assert ledger.get_order(order.id).status is OrderStatus.PENDING_CANCEL
    assert len(sends) == 2

    kite.histories[broker_id].append(
        {**opened, "status": "CANCELLED", "cancelled_quantity": 100, "pending_quantity": 0}
    )
    gateway.poll()
    assert [type(e).__name__ for e in ledger.history(order.id)] == [
        "Submitted",
        "Accepted",
        "CancelRequested",
        "Cancelled",
    ]


def test_an_outbox_table_made_before_the_sent_mark_is_given_it(ledger: OrderLedger) -> None:
    """A ledger's outbox made by an earlier version has no `sent` column: opening it adds
    the column, keeps its rows (not sent), and a second opening changes nothing."""
    assert ledger.storage is not None
    first = Outbox(ledger.storage)
    first._conn.execute("DROP TABLE gateway_outbox")
    first._conn.execute(
        "CREATE TABLE gateway_outbox (order_id TEXT NOT NULL, request TEXT NOT NULL,"
        " version INTEGER NOT NULL, attempts INTEGER NOT NULL,"
        " last_attempt DOUBLE PRECISION NOT NULL, PRIMARY KEY (order_id, request, version))"
    )
    first._conn.execute("INSERT INTO gateway_outbox VALUES ('o-1', 'cancel', 3, 1, 1800000000.0)")
    first.close()
    outbox = Outbox(ledger.storage)
    try:
        assert outbox.attempt("o-1", "cancel", 3) == Attempt(1, 1_800_000_000.0, sent=False)
        outbox.mark_sent("o-1", "cancel", 3)
        Outbox(ledger.storage).close()
        assert outbox.attempt("o-1", "cancel", 3) == Attempt(1, 1_800_000_000.0, sent=True)
    finally:
        outbox.close()


def test_an_order_is_accepted_at_the_time_kite_opened_it_not_at_its_last_change(
    ledger: OrderLedger,
) -> None:
    """Kite moves order_timestamp on each modification: Kite's sample history (placed
    11:06:52, modified 11:08:16) was adopted as accepted at 11:08:16."""
    history = kite_sample("order_info.json")["data"]
    broker_id = str(history[0]["order_id"])
    kite = ScriptedKite(histories={broker_id: history})
    gateway = gateway_for(ledger, kite)
    assert gateway.reconcile().adopted == [broker_id]
    adopted = ledger.find_order(ACCOUNT, f"kite-{broker_id}")
    opened_at = datetime(2017, 12, 29, 11, 6, 52, tzinfo=IST)
    assert adopted.accepted_at == opened_at
    (accepted,) = [e for e in ledger.history(adopted.id) if isinstance(e, Order.Accepted)]
    assert accepted.broker_timestamp == opened_at


def test_a_fills_charges_are_those_of_the_day_it_is_dated(make_ledger: LedgerFactory) -> None:
    """A trade without fill_timestamp is dated by its exchange_timestamp; its charges were
    worked out on the schedule of the day the gateway ran (the clock): a reconciliation on
    2 April of a trade of 31 March used April's STT."""
    ledger = make_ledger(clock=FakeClock(datetime(2026, 4, 2, 4, 0, tzinfo=UTC)))
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    order = kite.placed(
        gateway,
        submit(
            ledger,
            "future",
            exchange="NFO",
            tradingsymbol="NIFTY26DECFUT",
            side="SELL",
            product="NRML",
            quantity=65,
            price="23000.0",
        ),
    )
    broker_id = order.broker_order_id or ""
    traded = "2026-03-31 15:00:00"
    kite.trade_book = [
        {
            **kite_trade(order, broker_id, "T1", 65, "23000"),
            "fill_timestamp": None,
            "exchange_timestamp": traded,
        }
    ]
    kite.histories[broker_id].append(
        kite_record(order, broker_id, status="COMPLETE", filled_quantity=65, pending_quantity=0)
    )
    assert gateway.converge(broker_id, Source.POLL).problems == []
    (fill,) = ledger.get_order(order.id).fills
    assert fill.exchange_timestamp == datetime(2026, 3, 31, 15, 0, tzinfo=IST)
    schedule = ChargesSchedule.bundled()
    future = ledger.instruments.get(order.instrument)

    def on(day: date) -> Decimal:
        return schedule.fill_charges(future, Product.NRML, Side.SELL, [], (65, Decimal(23000)), day)

    assert on(date(2026, 3, 31)) != on(date(2026, 4, 2))
    assert fill.charges == on(date(2026, 3, 31))


def test_reconciliation_reports_orders_the_ledger_and_kite_disagree_on(
    ledger: OrderLedger,
) -> None:
    """Reconciliation walked Kite's order book only: a ledger order that had ended counted
    as up to date whatever Kite said, and an open ledger order that Kite's book no longer
    lists (a DAY order Kite cancelled at the close while the ledger was down) was never
    mentioned. Both are reported; nothing is recorded that Kite did not report."""
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    ended = kite.placed(gateway, submit(ledger, "ended", price="740.00"))
    ledger.record(RecordCancelled(order_id=ended.id, reason="a postback for another order"))
    gone = kite.placed(gateway, submit(ledger, "gone", price="740.00"))
    del kite.histories[gone.broker_order_id or ""]
    agreed = kite.placed(gateway, submit(ledger, "agreed", price="740.00"))
    before = ledger.count_events()

    found = gateway.reconcile()
    assert found.differences == [
        f"order {ended.id} (ended, Kite {ended.broker_order_id}): the ledger has it"
        " CANCELLED, Kite OPEN",
        f"order {gone.id} (gone, Kite {gone.broker_order_id}): the ledger has it"
        " ACCEPTED, Kite's order book does not list it",
    ]
    assert str(agreed.id) not in " ".join(found.differences)
    assert found.problems == []
    assert ledger.count_events() == before


def test_a_market_order_kite_books_as_a_protected_limit_is_the_same_order(
    ledger: OrderLedger,
) -> None:
    """Kite books a MARKET order with market protection as a LIMIT order at the protection
    price, tagged "mktp" (the TATASTEEL record in Kite's sample orders.json). The ledger
    took that for a MARKET -> LIMIT modification nobody made, and dropped the order's
    market protection."""
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    order = kite.placed(
        gateway,
        submit(ledger, "market", quantity=10, order_type="MARKET", market_protection="2"),
    )
    broker_id = order.broker_order_id or ""
    booked = kite_record(
        order,
        broker_id,
        order_type="LIMIT",
        price=828.6,
        tags=[order.tag, "mktp", "mktp:2.00"],
    )
    kite.histories[broker_id] = [booked]
    assert gateway.poll().problems == []
    kite.trade_book = [kite_trade(order, broker_id, "T1", 10, "812.35")]
    kite.histories[broker_id].append(
        {
            **booked,
            "status": "COMPLETE",
            "filled_quantity": 10,
            "pending_quantity": 0,
            "average_price": 812.35,
        }
    )
    assert gateway.converge(broker_id, Source.POSTBACK).problems == []
    assert gateway.poll().recorded == 0
    done = ledger.get_order(order.id)
    assert (done.status, done.order_type, done.price, done.market_protection) == (
        OrderStatus.FILLED,
        OrderType.MARKET,
        None,
        Decimal(2),
    )
    assert [type(e).__name__ for e in ledger.history(order.id)] == [
        "Submitted",
        "Accepted",
        "Filled",
    ]


def test_a_cancellation_the_exchange_refused_after_kite_took_it_is_recorded_refused(
    ledger: OrderLedger,
) -> None:
    """Kite took the cancel_order call, then the exchange refused the cancellation and Kite
    shows the order OPEN again. A cancel marked sent is not sent again, and nothing
    concluded it: the order stayed PENDING_CANCEL for good and every modify was refused.
    After the grace Kite's history is looked up (once per grace) and the refusal recorded;
    the cancellation is not sent again."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "refused-cancel")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    sends: list[str] = []

    def cancel(params: dict[str, object]) -> None:
        sends.append("cancel")
        kite.histories[broker_id].append({**opened, "status": "CANCEL PENDING"})

    kite.on_cancel = cancel
    ledger.request_cancel(CancelOrder(order_id=order.id))
    gateway.dispatch()
    assert ledger.get_order(order.id).status is OrderStatus.PENDING_CANCEL
    looked_up = kite.calls.count("order_history")
    for _ in range(30):  # the exchange is slow: a look per grace, not per pass
        now[0] += 0.5
        gateway.dispatch()
    assert kite.calls.count("order_history") - looked_up <= 6
    assert ledger.get_order(order.id).status is OrderStatus.PENDING_CANCEL
    kite.histories[broker_id].append({**opened, "status": "OPEN"})  # the exchange: no
    now[0] += 10
    gateway.dispatch()
    assert ledger.get_order(order.id).status is OrderStatus.ACCEPTED
    assert [type(e).__name__ for e in ledger.history(order.id)][-2:] == [
        "CancelRequested",
        "CancelRejected",
    ]
    now[0] += 10
    gateway.dispatch()
    assert sends == ["cancel"]

    # Asked again: Kite takes it, the exchange has not answered yet. The earlier refusal
    # in the history is not this one's.
    kite.on_cancel = lambda params: sends.append("cancel")
    ledger.request_cancel(CancelOrder(order_id=order.id))
    gateway.dispatch()
    for _ in range(3):
        now[0] += 10
        gateway.dispatch()
    assert sends == ["cancel", "cancel"]
    assert ledger.get_order(order.id).status is OrderStatus.PENDING_CANCEL
    kite.histories[broker_id].append({**opened, "status": "CANCEL PENDING"})
    kite.histories[broker_id].append(
        {**opened, "status": "CANCELLED", "cancelled_quantity": 100, "pending_quantity": 0}
    )
    gateway.poll()
    assert ledger.get_order(order.id).status is OrderStatus.CANCELLED


def _takes(
    kite: ScriptedKite, broker_id: str, record: dict[str, Any]
) -> Callable[[dict[str, object]], None]:
    """An `on_modify` / `on_cancel` for a Kite that takes the call: its history gains a
    copy of `record` (MODIFY PENDING, CANCEL PENDING) and the exchange has not answered."""
    return lambda params: kite.histories[broker_id].append(dict(record))


def _gateway_on_a_clock(ledger: OrderLedger) -> tuple[list[float], ScriptedKite, KiteGateway]:
    """A scripted Kite and a gateway whose clock (`now[0]`) the test moves, with a grace
    of 3 s for sends whose outcome is unknown."""
    now = [1_800_000_000.0]
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite, clock=lambda: now[0], unknown_outcome_grace=3.0)
    return now, kite, gateway


def _placed_on_a_clock(
    ledger: OrderLedger,
    client_order_id: str,
    kite_shows: dict[str, Any] | None = None,
    **terms: Any,
) -> tuple[list[float], ScriptedKite, KiteGateway, Order]:
    """An order (a LIMIT buy at 812.35 unless `terms` say otherwise) placed at a scripted
    Kite (its record as `kite_shows` overrides) by a gateway on a clock the test moves."""
    now, kite, gateway = _gateway_on_a_clock(ledger)
    terms.setdefault("price", "812.35")
    placed = kite.placed(gateway, submit(ledger, client_order_id, **terms), **(kite_shows or {}))
    return now, kite, gateway, placed


def test_a_modification_the_exchange_refused_after_kite_took_it_is_recorded_refused(
    ledger: OrderLedger,
) -> None:
    """Kite took the modify_order call, then the exchange refused the change and Kite shows
    the order OPEN on its old terms. The ledger recorded Modified when Kite took the call,
    and Modified back at the next look: the audit trail showed a change that never was.
    Now the change is recorded when Kite shows it made; a refusal (a MODIFY PENDING record
    newer than the send, then the order working on its old terms) is ModifyRejected, with
    Kite's reason, and nothing is sent again."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "refused-modify")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    sends: list[dict[str, object]] = []

    def modify(params: dict[str, object]) -> None:
        sends.append(params)
        kite.histories[broker_id] += [
            {**opened, "status": "MODIFY VALIDATION PENDING"},
            {**opened, "status": "MODIFY PENDING"},
        ]

    kite.on_modify = modify
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
    gateway.dispatch()
    assert ledger.get_order(order.id).pending is EventKind.MODIFY_REQUESTED
    looked_up = kite.calls.count("order_history")
    for _ in range(30):  # the exchange is slow: a look per grace, not per pass
        now[0] += 0.5
        gateway.dispatch()
        gateway.poll()
    assert kite.calls.count("order_history") - looked_up <= 6
    assert ledger.get_order(order.id).pending is EventKind.MODIFY_REQUESTED
    kite.histories[broker_id].append(
        {**opened, "status": "OPEN", "status_message": "Price outside the day's range"}
    )
    gateway.poll()  # the terms are the ledger's: a poll has nothing to converge
    now[0] += 10
    gateway.dispatch()
    refused = ledger.get_order(order.id)
    assert refused.pending is None
    assert refused.price == Decimal("812.35")
    events = list(ledger.history(order.id))
    assert [type(e).__name__ for e in events][-2:] == ["ModifyRequested", "ModifyRejected"]
    assert isinstance(events[-1], Order.ModifyRejected)
    assert events[-1].reason == "Price outside the day's range"
    now[0] += 10
    gateway.dispatch()
    assert len(sends) == 1

    # Asked again: the earlier refusal in the history is not this request's outcome.
    kite.on_modify = lambda params: sends.append(params)
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.05")))
    for _ in range(3):
        gateway.dispatch()
        now[0] += 10
    assert len(sends) == 2
    assert ledger.get_order(order.id).pending is EventKind.MODIFY_REQUESTED
    kite.histories[broker_id] += [
        {**opened, "status": "MODIFY PENDING"},
        {**opened, "status": "OPEN", "price": 813.05},
    ]
    gateway.poll()
    made = ledger.get_order(order.id)
    assert (made.price, made.pending) == (Decimal("813.05"), None)
    assert [type(e).__name__ for e in ledger.history(order.id)][-2:] == [
        "ModifyRequested",
        "Modified",
    ]


def test_a_change_of_validity_alone_is_recorded_when_kite_shows_it(ledger: OrderLedger) -> None:
    """A modification that changes what a poll does not compare (validity, disclosed
    quantity) is recorded from the record that shows it, not taken for a refusal."""
    _, kite, gateway, order = _placed_on_a_clock(ledger, "validity")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]

    def modify(params: dict[str, object]) -> None:
        kite.histories[broker_id] += [
            {**opened, "status": "MODIFY PENDING"},
            {**opened, "status": "OPEN", "validity": "IOC", "disclosed_quantity": 0},
        ]

    kite.on_modify = modify
    ledger.request_modify(ModifyOrder(order_id=order.id, validity=Validity.IOC))
    gateway.dispatch()
    changed = ledger.get_order(order.id)
    assert (changed.validity, changed.pending) == (Validity.IOC, None)
    assert [type(e).__name__ for e in ledger.history(order.id)][-1] == "Modified"


def test_the_outcome_of_a_request_sent_before_a_restart_is_still_told(
    ledger: OrderLedger,
) -> None:
    """How many CANCEL PENDING (or MODIFY PENDING) records Kite's history held before a
    send was kept in the gateway's memory: after a restart a refused cancellation stayed
    PENDING_CANCEL until the strategy asked again. It is kept in the outbox now."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "restart")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    kite.on_cancel = _takes(kite, broker_id, {**opened, "status": "CANCEL PENDING"})
    ledger.request_cancel(CancelOrder(order_id=order.id))
    gateway.dispatch()
    assert ledger.get_order(order.id).status is OrderStatus.PENDING_CANCEL

    kite.histories[broker_id].append({**opened, "status": "OPEN"})  # the exchange: no
    restarted = gateway_for(ledger, kite, clock=lambda: now[0], unknown_outcome_grace=3.0)
    now[0] += 10
    restarted.dispatch()
    assert ledger.get_order(order.id).status is OrderStatus.ACCEPTED
    assert [type(e).__name__ for e in ledger.history(order.id)][-1] == "CancelRejected"

    kite.on_modify = _takes(kite, broker_id, {**opened, "status": "MODIFY PENDING"})
    ledger.request_modify(ModifyOrder(order_id=order.id, quantity=200))
    restarted.dispatch()
    kite.histories[broker_id].append({**opened, "status": "OPEN"})  # the exchange: no
    again = gateway_for(ledger, kite, clock=lambda: now[0], unknown_outcome_grace=3.0)
    now[0] += 10
    again.dispatch()
    assert ledger.get_order(order.id).pending is None
    assert ledger.get_order(order.id).quantity == 100
    assert [type(e).__name__ for e in ledger.history(order.id)][-1] == "ModifyRejected"


def test_a_fill_while_a_modification_is_on_its_way_is_not_taken_for_its_refusal(
    ledger: OrderLedger,
) -> None:
    """A trade's record can come between MODIFY PENDING and the exchange's answer; it
    shows the old terms, and is not the refusal of the change."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "fill-in-between")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    kite.on_modify = _takes(kite, broker_id, {**opened, "status": "MODIFY PENDING"})
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
    gateway.dispatch()
    part = {**opened, "status": "OPEN", "filled_quantity": 40, "pending_quantity": 60}
    kite.histories[broker_id].append(part)
    kite.trade_book.append(kite_trade(order, broker_id, "T-40", 40, "812.35"))
    gateway.poll()
    now[0] += 10
    gateway.dispatch()
    assert ledger.get_order(order.id).filled_quantity == 40
    assert ledger.get_order(order.id).pending is EventKind.MODIFY_REQUESTED
    kite.histories[broker_id].append({**part, "price": 813.0})
    gateway.poll()
    assert [type(e).__name__ for e in ledger.history(order.id)][-2:] == ["Filled", "Modified"]
    assert ledger.get_order(order.id).price == Decimal("813.00")


_LONG_REFUSAL = (
    "Markets are closed right now. Use GTT for placing long standing orders instead."
    " [Read more.](https://support.zerodha.com/category/trading-and-markets/"
    "kite-web-and-mobile/articles/what-is-the-good-till-triggered-gtt-feature)"
)


def test_a_refusal_longer_than_a_reason_is_recorded_and_the_rest_go_on(
    ledger: OrderLedger,
) -> None:
    """Kite's refusal messages can be longer than the 200 characters a reason holds. The
    refusal was built as a command that failed validation outside the recording, so every
    dispatch pass raised there: the refused order was sent again each pass and no later
    order, cancel or modify was sent at all."""
    _, kite, gateway, first = _placed_on_a_clock(ledger, "long-1")
    broker_id = first.broker_order_id or ""

    def refuse(params: dict[str, object]) -> None:
        raise kite_errors.OrderException(_LONG_REFUSAL)

    kite.on_cancel = refuse
    ledger.request_cancel(CancelOrder(order_id=first.id))
    kite.place_order = lambda **params: (_ for _ in ()).throw(  # type: ignore[method-assign]
        kite_errors.InputException(_LONG_REFUSAL)
    )
    second = submit(ledger, "long-2", price="812.35")
    report = gateway.dispatch()
    assert report.failed == []
    assert report.rejected == [second.id]
    rejected = ledger.get_order(second.id)
    assert rejected.status is OrderStatus.REJECTED
    assert rejected.reason is not None
    assert rejected.reason.startswith("Markets are closed right now.")
    assert len(rejected.reason) == 200
    assert [type(e).__name__ for e in ledger.history(first.id)][-1] == "CancelRejected"
    assert kite.calls.count("cancel_order") == 1
    assert broker_id in kite.histories


def test_one_orders_failure_does_not_hold_up_the_others_dispatch(ledger: OrderLedger) -> None:
    """Whatever one order's send raises is logged and reported; the orders after it are
    still sent."""
    _, kite, gateway, first = _placed_on_a_clock(ledger, "fails")

    def broken(params: dict[str, object]) -> None:
        raise RuntimeError("the client broke")

    kite.on_cancel = broken
    ledger.request_cancel(CancelOrder(order_id=first.id))
    later = submit(ledger, "after-it", price="812.35")
    report = gateway.dispatch()
    assert report.placed == [later.id]
    assert len(report.failed) == 1
    assert report.failed[0].startswith(f"{first.id}: the client broke")


def test_one_orders_bad_record_does_not_stop_a_poll(ledger: OrderLedger) -> None:
    """A record Kite sends that cannot be read is a problem of that order; the poll goes
    on with the rest of the book."""
    _, kite, gateway, bad = _placed_on_a_clock(ledger, "bad-record")
    good = kite.placed(gateway, submit(ledger, "good-record", price="812.35"))
    bad_id, good_id = bad.broker_order_id or "", good.broker_order_id or ""
    for broker_id in (bad_id, good_id):
        kite.histories[broker_id].append({**kite.histories[broker_id][0], "status": "CANCELLED"})
    kite.histories[bad_id][-1]["quantity"] = "lots"  # in its history, not in the book
    kite.orders = lambda: [  # type: ignore[method-assign]
        {**history[-1], "quantity": 100} for history in kite.histories.values()
    ]
    result = gateway.poll()
    assert ledger.get_order(good.id).status is OrderStatus.CANCELLED
    assert any(problem.startswith(f"order {bad_id}:") for problem in result.problems)


def test_an_outside_order_valid_for_minutes_is_adopted_with_its_fills(
    ledger: OrderLedger,
) -> None:
    """An order placed in Kite's web app with validity TTL: adopting it lost its
    `validity_ttl`, the ledger refused a TTL order without one, and its fills never reached
    the positions."""
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    outside = submit(ledger, "template", price="812.35", quantity=10)  # a record's shape
    broker_id = "260101000000777"
    done = kite_record(
        outside,
        broker_id,
        tag=None,
        tags=[],
        validity="TTL",
        validity_ttl=2,
        status="COMPLETE",
        filled_quantity=10,
        pending_quantity=0,
        average_price=812.35,
    )
    kite.histories[broker_id] = [{**done, "status": "OPEN", "filled_quantity": 0}, done]
    kite.trade_book.append(kite_trade(outside, broker_id, "555001", 10, "812.35"))
    result = gateway.poll()
    assert result.adopted == [broker_id]
    adopted = ledger.find_order(ACCOUNT, f"kite-{broker_id}")
    assert (adopted.validity, adopted.validity_ttl) == (Validity.TTL, 2)
    assert adopted.filled_quantity == 10


def test_a_cancellation_asked_for_again_while_pending_is_not_sent_again(
    ledger: OrderLedger,
) -> None:
    """The strategy asks again while Kite works on its cancellation. The repeat was sent
    as a request of its own; Kite refused it ("being processed"), and the ledger recorded
    CancelRejected although the cancellation went through."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "cancel-twice")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]

    def cancel(params: dict[str, object]) -> None:
        if kite.histories[broker_id][-1]["status"] == "CANCEL PENDING":
            raise kite_errors.OrderException(
                "Order cannot be cancelled as it is being processed. Try later."
            )
        kite.histories[broker_id].append({**opened, "status": "CANCEL PENDING"})

    kite.on_cancel = cancel
    ledger.request_cancel(CancelOrder(order_id=order.id))
    gateway.dispatch()
    now[0] += 1
    ledger.request_cancel(CancelOrder(order_id=order.id))
    for _ in range(3):
        gateway.dispatch()
        now[0] += 10
    assert kite.calls.count("cancel_order") == 1
    assert ledger.get_order(order.id).status is OrderStatus.PENDING_CANCEL
    kite.histories[broker_id].append(
        {**opened, "status": "CANCELLED", "cancelled_quantity": 100, "pending_quantity": 0}
    )
    gateway.poll()
    assert [type(e).__name__ for e in ledger.history(order.id)][2:] == [
        "CancelRequested",
        "CancelRequested",
        "Cancelled",
    ]


def test_two_modifications_asked_for_before_a_dispatch_are_sent_as_one(
    ledger: OrderLedger,
) -> None:
    """Only the latest request is sent; it carried only its own fields, so the first
    request's price was never sent, refused or recorded."""
    _, kite, gateway, order = _placed_on_a_clock(ledger, "two-modifies")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    sent: list[dict[str, object]] = []

    def modify(params: dict[str, object]) -> None:
        sent.append(params)
        kite.histories[broker_id] += [
            {**opened, "status": "MODIFY PENDING"},
            {**opened, "status": "OPEN", "price": 813.0, "quantity": 200},
        ]

    kite.on_modify = modify
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
    ledger.request_modify(ModifyOrder(order_id=order.id, quantity=200))
    gateway.dispatch()
    assert [(p.get("price"), p.get("quantity")) for p in sent] == [("813.00", 200)]
    changed = ledger.get_order(order.id)
    assert (changed.price, changed.quantity, changed.pending) == (Decimal("813.00"), 200, None)


def test_a_working_order_gone_from_the_next_days_book_expired_with_its_day(
    make_ledger: LedgerFactory,
) -> None:
    """The gateway was down over the close and missed a DAY order's end; the next day
    Kite's book no longer lists it. It stayed working in the ledger for good (and in what
    the dispatcher looks at), only ever reported as a difference. What Kite's history still
    says is recorded; an order that leaves working is recorded Expired, and reported.
    The same day, an unlisted order is only a difference; an after-market order is given
    the next session too."""
    clock = FakeClock()
    ledger = make_ledger(clock=clock)
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    missed = kite.placed(gateway, submit(ledger, "missed-close", price="812.35"))
    filled = kite.placed(gateway, submit(ledger, "filled-at-close", price="812.35"))
    amo = kite.placed(gateway, submit(ledger, "after-hours", price="812.35", variety="amo"))
    filled_id = filled.broker_order_id or ""
    done = kite_record(
        filled, filled_id, status="COMPLETE", filled_quantity=100, pending_quantity=0
    )
    old_histories = dict(kite.histories)
    kite.histories.clear()  # the book is empty
    same_day = gateway.poll()
    assert same_day.expired == []
    assert len(same_day.differences) == 3

    clock.advance(timedelta(days=1))  # the next trading day: still only Kite's history
    kite.order_history = lambda order_id: (  # type: ignore[method-assign]
        [*old_histories[filled_id], done] if order_id == filled_id else []
    )
    kite.trade_book.append(kite_trade(filled, filled_id, "T-1", 100, "812.35"))
    next_day = gateway.poll()
    assert ledger.get_order(missed.id).status is OrderStatus.EXPIRED
    assert ledger.get_order(filled.id).status is OrderStatus.FILLED
    assert ledger.get_order(amo.id).status is OrderStatus.ACCEPTED
    assert len(next_day.expired) == 1
    assert "missed-close" in next_day.expired[0]
    assert [o.id for o in gateway.open_orders()] == [amo.id]

    clock.advance(timedelta(days=1))
    gateway.poll()
    assert ledger.get_order(amo.id).status is OrderStatus.EXPIRED


def test_an_order_cancelled_before_it_was_sent_that_kite_works_after_all_is_cancelled_there(
    ledger: OrderLedger,
) -> None:
    """The placement timed out, the strategy cancelled, and Kite's book did not show the
    order within the grace, so the ledger cancelled it before sending. The placement had
    reached Kite late: the ledger took Kite's id onto the CANCELLED order and never sent a
    cancellation, and the order worked (and filled) at the exchange."""
    now, kite, gateway = _gateway_on_a_clock(ledger)
    placed: list[dict[str, Any]] = []

    def time_out(**params: Any) -> str:
        placed.append(params)
        raise OSError("read timed out")

    kite.place_order = time_out  # type: ignore[method-assign]
    order = submit(ledger, "late", price="812.35")
    gateway.dispatch()
    ledger.request_cancel(CancelOrder(order_id=order.id))
    now[0] += 30
    gateway.dispatch()
    assert ledger.get_order(order.id).status is OrderStatus.CANCELLED
    broker_id = "261124000000500"
    kite.histories[broker_id] = [kite_record(ledger.get_order(order.id), broker_id)]
    cancels: list[object] = []
    kite.on_cancel = lambda params: cancels.append(params["order_id"])
    result = gateway.poll()
    assert cancels == [broker_id]
    assert any("cancelled it there" in problem for problem in result.problems)
    now[0] += 30
    gateway.poll()
    assert cancels == [broker_id]
    assert len(placed) == 1
    assert ledger.get_order(order.id).status is OrderStatus.CANCELLED


def test_a_second_placement_of_a_ledger_order_is_reported_as_a_duplicate(
    ledger: OrderLedger,
) -> None:
    """A placement timed out, Kite's book did not show it within the grace, the order was
    sent again, and then the first placement turned up: it carries the ledger's own tag. It
    was adopted as an outside order of strategy "external", with nothing said. Its fills are
    real, so it is still adopted, but under the strategy of the order it duplicates, and
    reported."""
    now, kite, gateway = _gateway_on_a_clock(ledger)
    sends = 0
    place = kite.place_order

    def first_times_out(**params: Any) -> str:
        nonlocal sends
        sends += 1
        if sends == 1:
            raise OSError("read timed out")
        return place(**params)

    kite.place_order = first_times_out  # type: ignore[method-assign]
    order = submit(ledger, "twice", price="812.35", strategy="momentum")
    gateway.dispatch()
    now[0] += 30
    gateway.dispatch()
    second = ledger.get_order(order.id)
    assert second.broker_order_id == kite.next_order_id
    kite.histories[kite.next_order_id] = [kite_record(second, kite.next_order_id)]
    first = "261124000000500"
    kite.histories[first] = [kite_record(second, first)]
    result = gateway.poll()
    assert result.adopted == [first]
    duplicate = ledger.find_order(ACCOUNT, f"kite-{first}")
    assert duplicate.strategy == "momentum"
    assert any("duplicate placement" in problem for problem in result.problems)


def test_an_orders_trades_are_recorded_in_kites_numeric_order(ledger: OrderLedger) -> None:
    """Trade ids were sorted as text, so trade "10" was recorded before trade "9"."""
    _, kite, gateway, order = _placed_on_a_clock(ledger, "trade-order")
    broker_id = order.broker_order_id or ""
    kite.trade_book += [
        kite_trade(order, broker_id, "10", 60, "812.35"),
        kite_trade(order, broker_id, "9", 40, "812.35"),
    ]
    kite.histories[broker_id].append(
        {**kite.histories[broker_id][0], "status": "COMPLETE", "filled_quantity": 100}
    )
    gateway.poll()
    assert [fill.trade_id for fill in ledger.get_order(order.id).fills] == ["9", "10"]


def test_a_refusal_with_control_characters_is_recorded_without_them(ledger: OrderLedger) -> None:
    """The ledger refuses text with control characters; Kite's message is cleaned, not
    refused, or the refused order would be sent again every pass."""
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    kite.place_order = lambda **params: (_ for _ in ()).throw(  # type: ignore[method-assign]
        kite_errors.InputException("Invalid\x00 price\x07")
    )
    order = submit(ledger, "control", price="812.35")
    assert gateway.dispatch().rejected == [order.id]
    assert ledger.get_order(order.id).reason == "Invalid price"


# ---------------------------------------------------------------- review of the above


def test_a_modification_merged_into_one_on_its_way_is_not_dropped_when_the_first_is_made(
    ledger: OrderLedger,
) -> None:
    """A (price) is at Kite; B (quantity) is asked for and merged. Kite made A, a poll
    converged it before the dispatcher ran again: the Modified of A closed the merged
    request, and B was never sent, refused or recorded."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "merge-on-its-way")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    sent: list[dict[str, object]] = []

    def modify(params: dict[str, object]) -> None:
        sent.append(params)
        kite.histories[broker_id].append({**opened, "status": "MODIFY PENDING"})
        if "quantity" in params:  # the merged request: Kite makes both
            kite.histories[broker_id].append(
                {**opened, "status": "OPEN", "price": 813.0, "quantity": 200}
            )

    kite.on_modify = modify
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
    gateway.dispatch()
    ledger.request_modify(ModifyOrder(order_id=order.id, quantity=200))
    kite.histories[broker_id].append({**opened, "status": "OPEN", "price": 813.0})  # A made
    gateway.poll()
    assert ledger.get_order(order.id).pending is EventKind.MODIFY_REQUESTED
    now[0] += 10
    gateway.dispatch()
    assert [p.get("quantity") for p in sent] == [None, 200]
    made = ledger.get_order(order.id)
    assert (made.price, made.quantity, made.pending) == (Decimal("813.00"), 200, None)


def test_a_converge_between_kites_reply_and_the_sent_mark_records_the_whole_change(
    ledger: OrderLedger,
) -> None:
    """The postback's converge came before the dispatcher marked the request sent: Kite's
    record showed price and validity, the ledger recorded the price alone and closed the
    request, so the validity was lost."""
    _, kite, gateway, order = _placed_on_a_clock(ledger, "postback-first")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]

    def modify(params: dict[str, object]) -> None:
        kite.histories[broker_id] += [
            {**opened, "status": "MODIFY PENDING"},
            {**opened, "status": "OPEN", "price": 813.0, "validity": "IOC"},
        ]
        gateway.converge(broker_id, Source.POSTBACK)

    kite.on_modify = modify
    ledger.request_modify(
        ModifyOrder(order_id=order.id, price=Decimal("813.00"), validity=Validity.IOC)
    )
    gateway.dispatch()
    made = ledger.get_order(order.id)
    assert (made.price, made.validity, made.pending) == (Decimal("813.00"), Validity.IOC, None)


def test_a_pending_modification_can_be_taken_back(ledger: OrderLedger) -> None:
    """Asking for the order's own terms while a change is on its way was refused ("the
    order already has these terms"); it takes the change back, and is done when Kite
    shows those terms."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "take-back")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    kite.on_modify = _takes(kite, broker_id, {**opened, "status": "MODIFY PENDING"})
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
    gateway.dispatch()
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("812.35")))
    with pytest.raises(InvalidCommand, match="pending modification already asks"):
        ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("812.35")))
    gateway.dispatch()  # Kite still works on the first: the take-back waits for its answer
    assert kite.calls.count("modify_order") == 1
    kite.histories[broker_id].append({**opened, "price": 813.0})  # the first made
    kite.on_modify = lambda params: kite.histories[broker_id].extend(
        [{**opened, "status": "MODIFY PENDING"}, {**opened, "price": 812.35}]
    )
    now[0] += 5
    gateway.dispatch()
    back = ledger.get_order(order.id)
    assert (back.price, back.pending) == (Decimal("812.35"), None)
    assert [type(e).__name__ for e in ledger.history(order.id)][-1] == "Modified"


def test_a_refusal_that_comes_after_a_fill_is_still_recorded(ledger: OrderLedger) -> None:
    """MODIFY PENDING, then a trade's record, then the exchange's refusal: only a record
    with nothing newly filled was taken as the answer if it came right after MODIFY
    PENDING, so the order stayed PENDING_MODIFY for good."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "refused-after-fill")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    kite.on_modify = _takes(kite, broker_id, {**opened, "status": "MODIFY PENDING"})
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
    gateway.dispatch()
    part = {**opened, "status": "OPEN", "filled_quantity": 40, "pending_quantity": 60}
    kite.histories[broker_id] += [part, {**part, "status_message": "Price outside the range"}]
    kite.trade_book.append(kite_trade(order, broker_id, "T-40", 40, "812.35"))
    gateway.poll()
    now[0] += 10
    gateway.dispatch()
    refused = ledger.get_order(order.id)
    assert (refused.status, refused.price) == (OrderStatus.PARTIALLY_FILLED, Decimal("812.35"))
    assert refused.pending is None
    assert "ModifyRejected" in [type(e).__name__ for e in ledger.history(order.id)]


def test_a_modification_kite_never_shows_is_refused_after_the_time_limit(
    ledger: OrderLedger,
) -> None:
    """Kite took it and its history never says: the request (which holds the terms the
    ledger records) is closed after `request_timeout`, and Kite's terms are recorded."""
    now, _, gateway, order = _placed_on_a_clock(ledger, "never-shown")
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
    gateway.dispatch()
    now[0] += 30
    gateway.dispatch()
    assert ledger.get_order(order.id).pending is EventKind.MODIFY_REQUESTED
    now[0] += 40
    gateway.dispatch()
    events = list(ledger.history(order.id))
    assert isinstance(events[-1], Order.ModifyRejected)
    assert events[-1].reason == "Kite did not show the change within 60 s of taking it"


def test_a_cancellation_asked_for_again_after_the_first_was_refused_is_sent(
    ledger: OrderLedger,
) -> None:
    """The exchange refused the first; the strategy asked again before the ledger saw the
    refusal. The repeat was folded into the first and answered by its refusal: never
    sent, and the order worked on."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "cancel-after-refusal")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    sends: list[object] = []

    def cancel(params: dict[str, object]) -> None:
        sends.append(params["order_id"])
        kite.histories[broker_id].append({**opened, "status": "CANCEL PENDING"})
        if len(sends) == 1:
            kite.histories[broker_id].append({**opened, "status": "OPEN"})  # refused
        else:
            kite.histories[broker_id].append(
                {**opened, "status": "CANCELLED", "pending_quantity": 0, "cancelled_quantity": 100}
            )

    kite.on_cancel = cancel
    ledger.request_cancel(CancelOrder(order_id=order.id))
    gateway.dispatch()
    now[0] += 1
    ledger.request_cancel(CancelOrder(order_id=order.id))
    for _ in range(3):
        now[0] += 10
        gateway.dispatch()
        gateway.poll()
    assert len(sends) == 2
    assert ledger.get_order(order.id).status is OrderStatus.CANCELLED


def test_a_cancellation_sent_before_the_outbox_kept_its_count_is_still_told(
    ledger: OrderLedger,
) -> None:
    """A row written before `baseline` existed (sent, no count) left a refused
    cancellation PENDING_CANCEL for good; it now stands on the refusals answered before."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "no-baseline")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    kite.on_cancel = _takes(kite, broker_id, {**opened, "status": "CANCEL PENDING"})
    ledger.request_cancel(CancelOrder(order_id=order.id))
    gateway.dispatch()
    gateway.outbox._conn.execute("UPDATE gateway_outbox SET baseline = NULL")
    kite.histories[broker_id].append({**opened, "status": "OPEN"})
    now[0] += 10
    gateway.dispatch()
    assert [type(e).__name__ for e in ledger.history(order.id)][-1] == "CancelRejected"


def test_an_unreadable_history_of_an_earlier_days_order_does_not_expire_it(
    make_ledger: LedgerFactory,
) -> None:
    """Kite still had the order's history (COMPLETE, with its trade), but one field could
    not be read: taken for "no history", the order was recorded Expired and its fill lost
    for good. It is reported, and looked at again."""
    clock = FakeClock()
    ledger = make_ledger(clock=clock)
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    order = kite.placed(gateway, submit(ledger, "unreadable", price="812.35"))
    broker_id = order.broker_order_id or ""
    history = kite.histories.pop(broker_id)
    done = kite_record(order, broker_id, status="COMPLETE", filled_quantity=100, quantity="lots")
    clock.advance(timedelta(days=1))
    kite.order_history = lambda order_id: [*history, done]  # type: ignore[method-assign]
    result = gateway.poll()
    assert ledger.get_order(order.id).status is OrderStatus.ACCEPTED
    assert result.expired == []
    assert any("unreadable" in problem for problem in result.problems)


# ---------------------------------------------------------------- second review


def _names(ledger: OrderLedger, order: Order) -> list[str]:
    return [type(e).__name__ for e in ledger.history(order.id)][2:]


def test_our_change_made_and_then_moved_on_from_outside_is_recorded_made(
    ledger: OrderLedger,
) -> None:
    """Kite made our change, then the trader moved the price again in Kite's web app
    before the ledger looked: the latest record did not show ours, and the newest MODIFY
    records (the trader's) were taken for our refusal."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "ours-then-theirs")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    kite.on_modify = _takes(kite, broker_id, {**opened, "status": "MODIFY PENDING"})
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
    gateway.dispatch()
    kite.histories[broker_id] += [
        {**opened, "price": 813.0},
        {**opened, "price": 813.0, "status": "MODIFY PENDING"},
        {**opened, "price": 814.0},
    ]
    now[0] += 10
    gateway.dispatch()
    assert _names(ledger, order) == ["ModifyRequested", "Modified", "Modified"]
    assert ledger.get_order(order.id).price == Decimal("814.00")


def test_a_trade_while_a_cancellation_is_on_its_way_is_not_its_refusal(
    ledger: OrderLedger,
) -> None:
    now, kite, gateway, order = _placed_on_a_clock(ledger, "trade-then-cancel")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    kite.on_cancel = _takes(kite, broker_id, {**opened, "status": "CANCEL PENDING"})
    ledger.request_cancel(CancelOrder(order_id=order.id))
    gateway.dispatch()
    part = {**opened, "filled_quantity": 30, "pending_quantity": 70}
    kite.histories[broker_id].append(part)
    kite.trade_book.append(kite_trade(order, broker_id, "9001", 30, "812.35"))
    now[0] += 10
    gateway.dispatch()
    kite.histories[broker_id].append(
        {**part, "status": "CANCELLED", "pending_quantity": 0, "cancelled_quantity": 70}
    )
    gateway.poll()
    assert _names(ledger, order) == ["CancelRequested", "Filled", "Cancelled"]


def test_a_modification_merged_during_a_dispatch_pass_is_sent_whole(ledger: OrderLedger) -> None:
    """The pass's view of the orders predated a request merged while another order's
    modification was being sent: the older changes went out under the newer version."""
    _, kite, gateway, first = _placed_on_a_clock(ledger, "pass-a")
    second = kite.placed(gateway, submit(ledger, "pass-b", price="812.35"))
    sent: list[tuple[object, dict[str, object]]] = []

    def modify(params: dict[str, object]) -> None:
        sent.append((params["order_id"], params))
        if params["order_id"] == first.broker_order_id and len(sent) == 1:
            ledger.request_modify(ModifyOrder(order_id=second.id, quantity=200))

    kite.on_modify = modify
    ledger.request_modify(ModifyOrder(order_id=first.id, price=Decimal("813.00")))
    ledger.request_modify(ModifyOrder(order_id=second.id, price=Decimal("813.00")))
    gateway.dispatch()
    to_second = [params for broker_id, params in sent if broker_id == second.broker_order_id]
    assert [(p.get("price"), p.get("quantity")) for p in to_second] == [("813.00", 200)]


def test_a_request_kite_took_though_its_reply_was_lost_is_not_sent_again(
    ledger: OrderLedger,
) -> None:
    """Kite took it (its record is in the history) and the reply was lost: sent again
    after the grace, Kite refused the repeat ("being processed") and the ledger recorded
    that refusal as the request's."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "lost-reply")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    calls: list[str] = []

    def modify(params: dict[str, object]) -> None:
        calls.append("modify")
        if len(calls) > 1:
            raise kite_errors.OrderException("Order cannot be modified as it is being processed.")
        kite.histories[broker_id].append({**opened, "status": "MODIFY PENDING"})
        raise OSError("read timed out")

    kite.on_modify = modify
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
    gateway.dispatch()
    now[0] += 10
    gateway.dispatch()
    kite.histories[broker_id].append({**opened, "price": 813.0})
    now[0] += 10
    gateway.dispatch()
    assert calls == ["modify"]
    assert _names(ledger, order) == ["ModifyRequested", "Modified"]


def test_a_protected_market_order_changed_to_a_limit_order_is_recorded_changed(
    ledger: OrderLedger,
) -> None:
    """Kite keeps the "mktp" tags it set at placement: the record of the made change was
    read as the ledger's market order still, so the change never showed, and was refused
    after the time limit."""
    now, kite, gateway = _gateway_on_a_clock(ledger)
    ledger_market = kite.placed(
        gateway,
        submit(ledger, "market", quantity=10, order_type="MARKET", market_protection="2"),
        order_type="LIMIT",
        price=820.0,
        tags=["mktp", "mktp:2.00"],
    )
    market_id = ledger_market.broker_order_id or ""
    booked = kite.histories[market_id][0]
    kite.on_modify = lambda params: kite.histories[market_id].extend(
        [{**booked, "status": "MODIFY PENDING"}, {**booked, "price": 810.0}]
    )
    ledger.request_modify(
        ModifyOrder(order_id=ledger_market.id, order_type=OrderType.LIMIT, price=Decimal("810"))
    )
    gateway.dispatch()
    now[0] += 10
    gateway.dispatch()
    changed = ledger.get_order(ledger_market.id)
    assert (changed.order_type, changed.price, changed.pending) == (
        OrderType.LIMIT,
        Decimal("810"),
        None,
    )


def test_taking_back_a_change_whose_reply_was_lost_is_sent(ledger: OrderLedger) -> None:
    """The first change's reply was lost; the strategy took it back (the order's own
    price). Kite's record of the old price "showed" the take-back, which was recorded
    done and never sent: when Kite made the first change the order ended on it."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "take-back-lost")
    broker_id = order.broker_order_id or ""
    sends: list[object] = []

    def lost(params: dict[str, object]) -> None:
        sends.append(params.get("price"))
        raise OSError("connection reset")

    kite.on_modify = lost
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
    gateway.dispatch()
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("812.35")))
    gateway.converge(broker_id, Source.POSTBACK)
    assert ledger.get_order(order.id).pending is EventKind.MODIFY_REQUESTED
    kite.on_modify = lambda params: sends.append(params.get("price"))
    now[0] += 10
    gateway.dispatch()
    assert sends == ["813.00", "812.35"]


# ---------------------------------------------------------------- third review


def _stop_on_a_clock(
    ledger: OrderLedger, client_order_id: str
) -> tuple[list[float], ScriptedKite, KiteGateway, Order]:
    """A SELL stop-limit waiting for its trigger at a scripted Kite."""
    return _placed_on_a_clock(
        ledger,
        client_order_id,
        {"status": "TRIGGER PENDING"},
        side="SELL",
        order_type="SL",
        price="795.00",
        trigger_price="796.00",
    )


def test_a_stop_triggering_while_its_modification_is_on_its_way_is_not_its_refusal(
    ledger: OrderLedger,
) -> None:
    """A trailing stop moved as the price nears it: the trigger's OPEN record (nothing
    filled) came between MODIFY PENDING and the exchange's answer, and was taken for the
    answer: ModifyRejected, then Modified."""
    now, kite, gateway, order = _stop_on_a_clock(ledger, "trailing")
    broker_id = order.broker_order_id or ""
    waiting = kite.histories[broker_id][0]
    kite.on_modify = _takes(kite, broker_id, {**waiting, "status": "MODIFY PENDING"})
    ledger.request_modify(
        ModifyOrder(order_id=order.id, price=Decimal("797.00"), trigger_price=Decimal("798.00"))
    )
    gateway.dispatch()
    kite.histories[broker_id].append({**waiting, "status": "OPEN"})  # triggered
    now[0] += 10
    gateway.dispatch()
    kite.histories[broker_id].append(
        {**waiting, "status": "OPEN", "price": 797.0, "trigger_price": 798.0}
    )
    now[0] += 10
    gateway.dispatch()
    assert _names(ledger, order) == ["ModifyRequested", "Triggered", "Modified"]


def test_a_stop_triggering_while_its_cancellation_is_on_its_way_is_not_its_refusal(
    ledger: OrderLedger,
) -> None:
    now, kite, gateway, order = _stop_on_a_clock(ledger, "trailing-cancel")
    broker_id = order.broker_order_id or ""
    waiting = kite.histories[broker_id][0]
    kite.on_cancel = _takes(kite, broker_id, {**waiting, "status": "CANCEL PENDING"})
    ledger.request_cancel(CancelOrder(order_id=order.id))
    gateway.dispatch()
    kite.histories[broker_id].append({**waiting, "status": "OPEN"})  # triggered
    now[0] += 10
    gateway.dispatch()
    kite.histories[broker_id].append(
        {**waiting, "status": "CANCELLED", "pending_quantity": 0, "cancelled_quantity": 100}
    )
    gateway.poll()
    assert _names(ledger, order) == ["CancelRequested", "Triggered", "Cancelled"]


def test_kites_refusal_answers_only_the_request_it_was_sent_for(ledger: OrderLedger) -> None:
    """The strategy corrected itself while the call was in flight; Kite refused the first
    request, and the correction was closed with it, never sent."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "corrected")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    sends: list[object] = []

    def modify(params: dict[str, object]) -> None:
        sends.append(params.get("price"))
        if len(sends) == 1:
            ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
            raise kite_errors.InputException("Price is outside the day's price band")
        kite.histories[broker_id] += [
            {**opened, "status": "MODIFY PENDING"},
            {**opened, "price": float(str(params["price"]))},
        ]

    kite.on_modify = modify
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("900.00")))
    gateway.dispatch()
    now[0] += 10
    gateway.dispatch()
    assert sends == ["900.00", "813.00"]
    assert ledger.get_order(order.id).price == Decimal("813.00")
    assert _names(ledger, order)[-1] == "Modified"


def test_a_disclosed_quantity_kite_made_after_the_time_limit_is_recorded(
    ledger: OrderLedger,
) -> None:
    """Validity and disclosed quantity were compared neither by a converge nor by a poll:
    made by the exchange after the request had been closed, they never reached the
    ledger."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "disclosed-late")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    kite.on_modify = _takes(kite, broker_id, {**opened, "status": "MODIFY PENDING"})
    ledger.request_modify(ModifyOrder(order_id=order.id, disclosed_quantity=10))
    gateway.dispatch()
    now[0] += 70
    gateway.dispatch()
    assert _names(ledger, order)[-1] == "ModifyRejected"
    kite.histories[broker_id].append({**opened, "disclosed_quantity": 10})
    gateway.poll()
    assert ledger.get_order(order.id).disclosed_quantity == 10


def test_an_outside_change_is_not_taken_for_a_request_that_never_reached_kite(
    ledger: OrderLedger,
) -> None:
    """Our call failed to connect; the trader changed the quantity in Kite's web app. Its
    MODIFY records were counted as ours: the row was marked sent, and our change never
    sent again. Ours is known by a record that shows it; without one it is sent again
    after the time limit."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "not-ours")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    sends: list[object] = []

    def modify(params: dict[str, object]) -> None:
        sends.append(params.get("price"))
        if len(sends) == 1:
            raise OSError("connection refused")
        latest = kite.histories[broker_id][-1]
        kite.histories[broker_id] += [
            {**latest, "status": "MODIFY PENDING"},
            {**latest, "price": 813.0},
        ]

    kite.on_modify = modify
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
    gateway.dispatch()
    kite.histories[broker_id] += [
        {**opened, "status": "MODIFY PENDING"},
        {**opened, "quantity": 150, "pending_quantity": 150},
    ]
    for _ in range(8):
        now[0] += 10
        gateway.dispatch()
    gateway.poll()
    assert sends == ["813.00", "813.00"]
    made = ledger.get_order(order.id)
    assert (made.price, made.quantity, made.pending) == (Decimal("813.00"), 150, None)


def test_a_quantity_kite_changed_while_a_request_is_open_counts_for_the_fills(
    ledger: OrderLedger,
) -> None:
    """Found by a randomised run against a model of Kite: the trader raised the quantity
    in Kite's web app while the strategy's price change was open. Kite's terms were held
    back until the request settled, the fills counted against the old quantity, and the
    order ended FILLED for good with the request dropped. A change that does not carry the
    request's terms is recorded and leaves the request open (`closes_request`)."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "raised-outside", quantity=10)
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    kite.histories[broker_id] += [
        {**opened, "status": "MODIFY PENDING"},
        {**opened, "quantity": 40, "pending_quantity": 40},
    ]
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("812.40")))
    kite.histories[broker_id].append(
        {**opened, "quantity": 40, "filled_quantity": 10, "pending_quantity": 30}
    )
    kite.trade_book.append(kite_trade(order, broker_id, "T1", 10, "812.35"))
    gateway.converge(broker_id, Source.POSTBACK)
    working = ledger.get_order(order.id)
    assert (working.status, working.quantity, working.filled_quantity) == (
        OrderStatus.PENDING_MODIFY,
        40,
        10,
    )
    kite.on_modify = lambda params: kite.histories[broker_id].extend(
        [
            {**kite.histories[broker_id][-1], "status": "MODIFY PENDING"},
            {**kite.histories[broker_id][-1], "price": float(str(params["price"]))},
        ]
    )
    now[0] += 10
    gateway.dispatch()
    done = ledger.get_order(order.id)
    assert (done.status, done.quantity, done.price) == (
        OrderStatus.PARTIALLY_FILLED,
        40,
        Decimal("812.40"),
    )


def test_a_request_merged_while_the_first_is_at_kite_waits_for_its_answer(
    ledger: OrderLedger,
) -> None:
    """Found by a randomised run: B (merged with A) was sent while Kite still worked on A;
    Kite refused B as "being processed", and that refusal was recorded as B's answer, so
    the strategy's latest request was dropped although Kite never judged it."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "busy")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    sent: list[object] = []

    def modify(params: dict[str, object]) -> None:
        sent.append(params.get("price"))
        if kite.histories[broker_id][-1]["status"] == "MODIFY PENDING":
            raise kite_errors.OrderException("Order cannot be modified as it is being processed.")
        kite.histories[broker_id].append(
            {**kite.histories[broker_id][-1], "status": "MODIFY PENDING"}
        )

    kite.on_modify = modify
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("812.40")))
    gateway.dispatch()
    now[0] += 5
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("812.50")))
    gateway.dispatch()
    assert sent == ["812.40"]
    kite.histories[broker_id].append({**opened, "price": 812.40})  # A made
    now[0] += 5
    gateway.dispatch()
    assert sent == ["812.40", "812.50"]
    kite.histories[broker_id].append({**opened, "price": 812.50})
    now[0] += 5
    gateway.dispatch()
    done = ledger.get_order(order.id)
    assert (done.price, done.pending) == (Decimal("812.50"), None)
    assert "ModifyRejected" not in _names(ledger, order)


def test_a_cancellation_refused_while_kite_works_on_a_modification_is_sent_again(
    ledger: OrderLedger,
) -> None:
    """Found by a randomised run: Kite refuses a request on an order while another is in
    its hands ("being processed"). That is no answer to the cancellation, which was
    recorded refused; it is sent again after the grace (a few times at most)."""
    now, kite, gateway, order = _placed_on_a_clock(ledger, "busy-cancel")
    broker_id = order.broker_order_id or ""
    opened = kite.histories[broker_id][0]
    kite.on_modify = _takes(kite, broker_id, {**opened, "status": "MODIFY PENDING"})
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("813.00")))
    gateway.dispatch()
    cancels: list[object] = []

    def cancel(params: dict[str, object]) -> None:
        cancels.append(params["order_id"])
        if kite.histories[broker_id][-1]["status"] == "MODIFY PENDING":
            raise kite_errors.OrderException(
                "Order cannot be cancelled as it is being processed. Try later."
            )
        kite.histories[broker_id] += [
            {**kite.histories[broker_id][-1], "status": "CANCEL PENDING"},
            {**kite.histories[broker_id][-1], "status": "CANCELLED", "pending_quantity": 0},
        ]

    kite.on_cancel = cancel
    ledger.request_cancel(CancelOrder(order_id=order.id))
    gateway.dispatch()
    assert len(cancels) == 1
    assert ledger.get_order(order.id).pending is EventKind.CANCEL_REQUESTED
    kite.histories[broker_id].append({**opened, "price": 813.0})  # the modification made
    now[0] += 10
    gateway.dispatch()
    assert len(cancels) == 2
    assert ledger.get_order(order.id).status is OrderStatus.CANCELLED
    assert "CancelRejected" not in _names(ledger, order)


def test_reconcile_beside_serve_does_not_adopt_an_order_serve_placed_meanwhile(
    make_ledger: LedgerFactory,
) -> None:
    """`reconcile` (a process of its own) read the log, then Kite's book; an order that
    `serve` placed while that read was in flight carried a tag reconcile had not read, and
    was adopted as an outside order: one order at Kite, two in the ledger, its fills
    counted twice."""
    serve_ledger, reconcile_ledger = make_ledger(), make_ledger()
    kite = ScriptedKite()
    serve, reconcile = gateway_for(serve_ledger, kite), gateway_for(reconcile_ledger, kite)
    book = kite.orders

    def serve_places_one_while_the_book_is_read() -> list[dict[str, Any]]:
        order = submit(serve_ledger, "strat-42", quantity=10, price="812.35")
        placed = kite.placed(serve, order)
        broker_id = placed.broker_order_id
        assert broker_id is not None
        kite.histories[broker_id] = [
            kite_record(
                placed, broker_id, status="COMPLETE", filled_quantity=10, pending_quantity=0,
                average_price=812.35,
            )
        ]  # fmt: skip
        kite.trade_book.append(kite_trade(placed, broker_id, "T-1", 10, "812.35"))
        kite.orders = book  # type: ignore[method-assign]
        return book()

    kite.orders = serve_places_one_while_the_book_is_read  # type: ignore[method-assign]
    result = reconcile.reconcile()
    assert result.adopted == []
    assert result.problems == []
    orders = reconcile_ledger.all_orders()
    assert [(o.client_order_id, o.filled_quantity) for o in orders] == [("strat-42", 10)]


def test_an_odd_record_in_kites_books_does_not_stop_the_poll(ledger: OrderLedger) -> None:
    """The order book and the trade book were parsed whole: one record the parser refused
    (an order placed in Kite's web app, a trade of it) stopped every poll, and `serve`'s
    start, so the ledger's own fills were never picked up."""
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    placed = kite.placed(gateway, submit(ledger, "ours", quantity=10, price="812.35"))
    broker_id = placed.broker_order_id
    assert broker_id is not None
    kite.histories[broker_id] = [
        kite_record(
            placed, broker_id, status="COMPLETE", filled_quantity=10, pending_quantity=0,
            average_price=812.35,
        )
    ]  # fmt: skip
    kite.trade_book.append(kite_trade(placed, broker_id, "T-1", 10, "812.35"))
    odd = kite_record(placed, "261124000009999", filled_quantity=None, tag=None)
    kite.histories["261124000009999"] = [odd]
    kite.trade_book.append({"trade_id": "T-odd", "order_id": "261124000009999"})
    result = gateway.poll()
    assert ledger.get_order(placed.id).filled_quantity == 10
    assert [p.split(" not read:")[0] for p in result.problems] == [
        "Kite order 261124000009999 (record 1)",
        "Kite trade T-odd (record 1)",
    ]
    KiteService(gateway, api_secret="s", app_id=1, poll_interval=3600).start().stop()


def test_an_unreadable_book_copy_of_our_order_is_not_reported_missing(ledger: OrderLedger) -> None:
    """Read record by record, an order whose copy in Kite's book did not parse was
    reported as one Kite's book "does not list", and its fills were not picked up,
    though its history (read on its own) parses."""
    kite = ScriptedKite()
    gateway = gateway_for(ledger, kite)
    order = kite.placed(gateway, submit(ledger, "ours", quantity=100, price="812.35"))
    broker_id = order.broker_order_id
    assert broker_id is not None
    good = kite_record(
        order, broker_id, filled_quantity=40, pending_quantity=60, average_price=812.35
    )
    kite.histories[broker_id] = [good]
    kite.trade_book.append(kite_trade(order, broker_id, "T-1", 40, "812.35"))
    kite.orders = lambda: [dict(good, filled_quantity=None)]  # type: ignore[method-assign]
    result = gateway.poll()
    assert [p.split(" not read:")[0] for p in result.problems] == [
        f"Kite order {broker_id} (record 0)"
    ]
    assert result.differences == []
    assert ledger.get_order(order.id).filled_quantity == 40
