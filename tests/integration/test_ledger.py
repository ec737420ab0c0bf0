"""The application service against real databases: every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import ConnectionPoolClosedError, OperationalError

from ledger.application import OrderLedger, open_ledger
from ledger.commands import (
    CancelOrder,
    ModifyOrder,
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
from ledger.domain.errors import (
    ClientOrderIdReused,
    ConcurrencyConflict,
    InstrumentMismatch,
    InvalidCommand,
    OrderNotFound,
    Overfill,
    TransitionRefused,
    UnknownInstrument,
)
from ledger.domain.order import Order
from ledger.domain.status import OrderStatus
from ledger.domain.values import IST, Exchange, InstrumentRef, OrderChanges, OrderType, Source
from ledger.persistence import StorageUnavailable
from tests.conftest import LedgerFactory
from tests.support import FakeClock, accepted, fill, submit_command

D = Decimal


def state(order: Order) -> dict[str, Any]:
    """Everything an order knows, for comparing two rebuilds of it."""
    return {k: v for k, v in vars(order).items() if k != "_pending_events"}


def test_submit_is_durable_and_read_back_by_a_fresh_instance(make_ledger: LedgerFactory) -> None:
    order = make_ledger().submit(submit_command())
    again = make_ledger().get_order(order.id)
    assert state(again) == state(order)
    assert again.status is OrderStatus.SUBMITTED
    assert again.tag == "KL" + order.id.hex[:18]


def test_resubmission_returns_the_same_order_and_writes_nothing(ledger: OrderLedger) -> None:
    first = ledger.submit(submit_command())
    before = ledger.count_events()
    second = ledger.submit(submit_command())
    assert second.id == first.id
    assert ledger.count_events() == before == 1


def test_resubmission_after_a_modification_still_finds_the_order(ledger: OrderLedger) -> None:
    order = ledger.submit(submit_command())
    ledger.record(accepted(order))
    ledger.record(RecordModified(order_id=order.id, price=D("812.40")))
    assert ledger.submit(submit_command()).version == 3


def test_reused_client_order_id_with_other_terms_is_refused(ledger: OrderLedger) -> None:
    ledger.submit(submit_command())
    with pytest.raises(ClientOrderIdReused, match="quantity"):
        ledger.submit(submit_command(quantity=5))
    # Every term the submission sets, not only the main ones (these passed silently,
    # handing back an order with other terms than asked).
    with pytest.raises(ClientOrderIdReused, match="disclosed_quantity"):
        ledger.submit(submit_command(disclosed_quantity=10))
    timed = submit_command(client_order_id="t-1", validity="TTL", validity_ttl=5)
    ledger.submit(timed)
    with pytest.raises(ClientOrderIdReused, match="validity_ttl"):
        ledger.submit(timed.model_copy(update={"validity_ttl": 10}))
    market = submit_command(
        client_order_id="m-1", order_type="MARKET", price=None, market_protection=D(-1)
    )
    ledger.submit(market)
    with pytest.raises(ClientOrderIdReused, match="market_protection"):
        ledger.submit(market.model_copy(update={"market_protection": D(2)}))
    assert ledger.submit(market).version == 1
    assert ledger.count_events() == 3


def test_a_whole_life(ledger: OrderLedger) -> None:
    order = ledger.submit(submit_command(quantity=100))
    ledger.record(accepted(order, "2411290001"))
    ledger.record(fill(order, "T1", 40, "812.35"))
    ledger.request_modify(ModifyOrder(order_id=order.id, price=D("812.50")))
    assert ledger.get_order(order.id).status is OrderStatus.PENDING_MODIFY
    ledger.record(RecordModified(order_id=order.id, price=D("812.50")))
    ledger.request_cancel(CancelOrder(order_id=order.id, reason="done"))
    ledger.record(RecordCancelRejected(order_id=order.id, reason="order is being filled"))
    ledger.record(fill(order, "T2", 60, "812.50"))
    final = ledger.get_order(order.id)
    assert final.status is OrderStatus.FILLED
    assert final.average_price == D("812.44")
    assert final.broker_order_id == "2411290001"
    assert [type(e).__name__ for e in ledger.history(order.id)] == [
        "Submitted",
        "Accepted",
        "Filled",
        "ModifyRequested",
        "Modified",
        "CancelRequested",
        "CancelRejected",
        "Filled",
    ]


def test_every_broker_update_kind_is_recorded(ledger: OrderLedger) -> None:
    stop = ledger.submit(
        submit_command(order_type="SL", price=D("812.35"), trigger_price=D("812.00"))
    )
    ledger.record(accepted(stop))
    ledger.record(RecordTriggered(order_id=stop.id, triggered_at=ledger.clock()))
    ledger.request_modify(ModifyOrder(order_id=stop.id, quantity=120))
    ledger.record(RecordModifyRejected(order_id=stop.id, reason="margin"))
    ledger.record(RecordExpired(order_id=stop.id, reason="day end"))
    assert ledger.get_order(stop.id).status is OrderStatus.EXPIRED

    rejected = ledger.submit(submit_command(client_order_id="c-2"))
    ledger.record(RecordRejected(order_id=rejected.id, reason="RMS", source=Source.EXCHANGE))
    got = ledger.get_order(rejected.id)
    assert got.status is OrderStatus.REJECTED
    assert got.reason == "RMS"


def test_fill_after_cancel_is_kept(ledger: OrderLedger) -> None:
    order = ledger.submit(submit_command())
    ledger.record(accepted(order))
    ledger.request_cancel(CancelOrder(order_id=order.id))
    ledger.record(RecordCancelled(order_id=order.id))
    ledger.record(fill(order, "T9", 30))
    got = ledger.get_order(order.id)
    assert got.status is OrderStatus.CANCELLED
    assert got.filled_quantity == 30


def test_duplicate_fills_from_every_source_count_once(ledger: OrderLedger) -> None:
    order = ledger.submit(submit_command())
    ledger.record(accepted(order))
    for source in Source:
        update = fill(order, "T1", 40).model_copy(update={"source": source})
        ledger.record(update)
    assert ledger.get_order(order.id).filled_quantity == 40
    assert ledger.count_events() == 3


def test_read_at_version_and_as_of(ledger: OrderLedger) -> None:
    clock = ledger.clock
    assert isinstance(clock, FakeClock)
    order = ledger.submit(submit_command())
    after_submit = clock.now
    clock.advance(timedelta(minutes=1))
    ledger.record(accepted(order))
    after_accept = clock.now
    clock.advance(timedelta(minutes=1))
    ledger.record(fill(order, "T1", 100))

    assert ledger.get_order(order.id, at_version=1).status is OrderStatus.SUBMITTED
    assert ledger.get_order(order.id, at_version=2).status is OrderStatus.ACCEPTED
    assert ledger.get_order(order.id, at_version=3).status is OrderStatus.FILLED
    assert ledger.get_order(order.id, as_of=after_submit).version == 1
    assert ledger.get_order(order.id, as_of=after_accept + timedelta(seconds=30)).version == 2
    assert ledger.get_order(order.id, as_of=clock.now.astimezone(IST)).version == 3
    with pytest.raises(OrderNotFound, match="submitted later"):
        ledger.get_order(order.id, as_of=after_submit - timedelta(hours=1))
    with pytest.raises(OrderNotFound, match="at version 9"):
        ledger.get_order(order.id, at_version=9)
    with pytest.raises(InvalidCommand, match="as_of: must be timezone-aware"):
        ledger.get_order(order.id, as_of=after_submit.replace(tzinfo=None))


def test_list_orders_by_status_instrument_account_strategy(ledger: OrderLedger) -> None:
    a = ledger.submit(submit_command(client_order_id="a", strategy="alpha"))
    b = ledger.submit(
        submit_command(
            client_order_id="b", tradingsymbol="INFY", price=D("1900.0"), strategy="beta"
        )
    )
    c = ledger.submit(submit_command(client_order_id="c", account="ZZ9999", strategy="alpha"))
    ledger.record(accepted(a))
    ledger.record(fill(a, "T1", 100))

    def ids(orders: list[Order]) -> list[str]:
        return [o.client_order_id for o in orders]

    assert ids(ledger.list_orders()) == ["a", "b", "c"]
    assert ids(ledger.list_orders(status=OrderStatus.FILLED)) == ["a"]
    assert ids(ledger.list_orders(status=OrderStatus.SUBMITTED)) == ["b", "c"]
    assert ids(ledger.list_orders(instrument=InstrumentRef(Exchange.NSE, "INFY"))) == ["b"]
    assert ids(ledger.list_orders(account="ZZ9999")) == ["c"]
    assert ids(ledger.list_orders(strategy="alpha")) == ["a", "c"]
    assert ids(ledger.list_orders(strategy="alpha", account="AB1234")) == ["a"]
    assert b.id != c.id


def test_history_of_unknown_order(ledger: OrderLedger) -> None:
    with pytest.raises(OrderNotFound):
        ledger.history(uuid4())
    with pytest.raises(OrderNotFound):
        ledger.get_order(uuid4())


# ---------------------------------------------------------------- bad input writes nothing


def _bad_inputs(ledger: OrderLedger, order: Order) -> list[tuple[type[Exception], Any]]:
    unknown = uuid4()
    return [
        (Overfill, lambda: ledger.record(fill(order, "T-over", 61))),
        (OrderNotFound, lambda: ledger.record(RecordCancelled(order_id=unknown))),
        (OrderNotFound, lambda: ledger.request_cancel(CancelOrder(order_id=unknown))),
        (
            InstrumentMismatch,
            lambda: ledger.record(
                RecordFill(
                    order_id=order.id,
                    trade_id="T-x",
                    exchange=Exchange.NSE,
                    tradingsymbol="INFY",
                    quantity=1,
                    price=D("1900"),
                )
            ),
        ),
        (
            InvalidCommand,
            lambda: ledger.submit(submit_command(client_order_id="n", price=D("812.33"))),
        ),
        (InvalidCommand, lambda: ledger.submit(submit_command(client_order_id="n", quantity=0))),
        (InvalidCommand, lambda: ledger.submit(submit_command(client_order_id="n", quantity=-3))),
        (
            InvalidCommand,
            lambda: ledger.submit(SubmitOrder.parse({**_valid(), "price": 812.35})),
        ),
        (
            InvalidCommand,
            lambda: ledger.request_modify(
                ModifyOrder.parse({"order_id": order.id, "price": 812.4})
            ),
        ),
        (
            InvalidCommand,
            lambda: ledger.request_modify(ModifyOrder(order_id=order.id, price=D("812.33"))),
        ),
        (
            UnknownInstrument,
            lambda: ledger.submit(submit_command(client_order_id="n", tradingsymbol="NOPE")),
        ),
        (ClientOrderIdReused, lambda: ledger.submit(submit_command(side="SELL"))),
    ]


def _valid() -> dict[str, Any]:
    return submit_command(client_order_id="n").model_dump()


def test_refused_commands_leave_the_log_exactly_as_it_was(ledger: OrderLedger) -> None:
    order = ledger.submit(submit_command())
    ledger.record(accepted(order))
    ledger.record(fill(order, "T1", 40))
    before = [(e.originator_id, e.originator_version) for e in ledger.iter_log()]
    for expected, attempt in _bad_inputs(ledger, order):
        with pytest.raises(expected) as caught:
            attempt()
        assert str(caught.value)
    after = [(e.originator_id, e.originator_version) for e in ledger.iter_log()]
    assert after == before
    assert ledger.get_order(order.id).filled_quantity == 40


def test_cancel_of_a_finished_order_is_refused(ledger: OrderLedger) -> None:
    order = ledger.submit(submit_command())
    ledger.record(accepted(order))
    ledger.record(fill(order, "T1", 100))
    with pytest.raises(
        TransitionRefused, match="CancelRequested is not allowed when status is FILLED"
    ):
        ledger.request_cancel(CancelOrder(order_id=order.id))
    with pytest.raises(
        TransitionRefused, match="ModifyRequested is not allowed when status is FILLED"
    ):
        ledger.request_modify(ModifyOrder(order_id=order.id, price=D("812.50")))
    assert ledger.count_events() == 3


# ---------------------------------------------------------------- concurrent writers


def test_a_lost_race_is_retried_and_loses_no_update(make_ledger: LedgerFactory) -> None:
    first, second = make_ledger(), make_ledger()
    order = first.submit(submit_command())
    first.record(accepted(order))
    real_save = first._save_order
    interfered: list[bool] = []

    def interfere_then_save(*aggregates: Any, **kwargs: Any) -> Any:
        if not interfered:
            interfered.append(True)
            second.record(fill(order, "T-second", 30))  # saved between decision and save
        return real_save(*aggregates, **kwargs)

    first._save_order = interfere_then_save  # type: ignore[method-assign]
    first.record(fill(order, "T-first", 20))
    final = second.get_order(order.id)
    assert final.trade_ids == {"T-first", "T-second"}
    assert final.filled_quantity == 50
    assert final.version == 4


def test_a_remembered_order_that_is_stale_is_decided_again(make_ledger: LedgerFactory) -> None:
    first, second = make_ledger(), make_ledger()
    order = first.submit(submit_command())
    first.record(accepted(order))  # `first` now remembers version 2
    second.record(fill(order, "T-second", 30))
    second.record(fill(order, "T-third", 70))  # filled: version 4
    # Decided on the remembered version 2, this fill would be new; it conflicts on save,
    # is decided again on version 4, and is then recognised as already recorded.
    again = first.record(fill(order, "T-third", 70))
    assert again.version == 4
    assert again.filled_quantity == 100
    # A request refused on the remembered state is checked on the log before refusing:
    # cancelling a filled order is refused by the order as it is now.
    with pytest.raises(TransitionRefused):
        first.request_cancel(CancelOrder(order_id=order.id))
    assert first.count_events() == 4


def test_charges_for_are_worked_out_on_the_order_the_fill_is_recorded_on(
    make_ledger: LedgerFactory,
) -> None:
    """`record(fill, charges_for=...)` asks for the fill's charges on the order it is
    decided on, and again after a conflict: the share of a fill depends on the ones
    before it, which another writer may have recorded meanwhile."""
    first, second = make_ledger(), make_ledger()
    order = first.submit(submit_command())
    first.record(accepted(order))  # `first` remembers version 2, with no fills
    second.record(fill(order, "T-second", 30))
    seen: list[int] = []

    def charges_for(current: Order) -> Decimal:
        seen.append(current.filled_quantity)
        return Decimal("1.00") if not current.fills else Decimal("0.25")

    recorded = first.record(fill(order, "T-third", 70), charges_for=charges_for)
    assert seen == [0, 30]  # decided on the remembered state, then on the log's
    assert [f.charges for f in recorded.fills] == [None, Decimal("0.25")]
    with pytest.raises(InvalidCommand, match="charges_for"):
        first.record(accepted(order), charges_for=charges_for)
    charged = fill(order, "T-fourth", 1).model_copy(update={"charges": Decimal(1)})
    with pytest.raises(InvalidCommand, match="charges_for"):
        first.record(charged, charges_for=charges_for)
    assert first.count_events() == 4


def test_endless_conflicts_give_up_with_a_clear_error(make_ledger: LedgerFactory) -> None:
    first, second = make_ledger(max_attempts=3), make_ledger()
    order = first.submit(submit_command(quantity=1000))
    first.record(accepted(order))
    real_save = first._save_order
    counter = iter(range(100))

    def interfere_then_save(*aggregates: Any, **kwargs: Any) -> Any:
        second.record(fill(order, f"T-{next(counter)}", 1))
        return real_save(*aggregates, **kwargs)

    first._save_order = interfere_then_save  # type: ignore[method-assign]
    with pytest.raises(ConcurrencyConflict, match="gave up after 3 attempts"):
        first.record(fill(order, "T-first", 20))
    assert "T-first" not in second.get_order(order.id).trade_ids


def errors_of_threads(
    work: Callable[..., object], arguments: Iterable[tuple[Any, ...]]
) -> list[BaseException]:
    """`work(*args)` for each args, each on a thread of its own, all at once; what they
    raised (a thread's exception would otherwise only be printed)."""
    errors: list[BaseException] = []

    def guarded(*args: Any) -> None:
        try:
            work(*args)
        except BaseException as error:  # reported to the caller
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=args) for args in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrent_writers_threads(make_ledger: LedgerFactory) -> None:
    """Four writers, each with its own connections, fill one order at once: all land."""
    writers = [make_ledger(max_attempts=200) for _ in range(4)]
    order = writers[0].submit(submit_command(quantity=1000))
    writers[0].record(accepted(order))

    def work(index: int, writer: OrderLedger) -> None:
        for n in range(10):
            writer.record(fill(order, f"T-{index}-{n}", 1))

    assert errors_of_threads(work, enumerate(writers)) == []
    final = writers[0].get_order(order.id)
    assert final.filled_quantity == 40
    assert final.version == 42


def test_eight_threads_on_one_ledger_share_transactions_and_lose_nothing(
    make_ledger: LedgerFactory,
) -> None:
    """One ledger, eight strategy threads: their commands are group-committed; every one
    lands once, including fills racing on one shared order."""
    ledger = make_ledger(max_attempts=200)
    shared = ledger.submit(submit_command(client_order_id="shared", quantity=1000))
    ledger.record(accepted(shared))

    def work(index: int) -> None:
        for n in range(6):
            own = ledger.submit(submit_command(client_order_id=f"t{index}-{n}"))
            ledger.record(accepted(own, f"B{index}{n}"))
            ledger.record(fill(own, f"T{index}-{n}", 100))
            ledger.record(fill(shared, f"S{index}-{n}", 1))

    assert errors_of_threads(work, ((i,) for i in range(8))) == []
    assert ledger.count_events() == 2 + 8 * 6 * 4
    assert ledger.get_order(shared.id).filled_quantity == 48
    assert all(o.filled_quantity == o.quantity for o in ledger.all_orders() if o.id != shared.id)
    committer = ledger._committer
    assert committer.commands == 2 + 8 * 6 * 4
    assert committer.transactions <= committer.commands


def test_snapshots_taken_while_other_threads_append_all_land(make_ledger: LedgerFactory) -> None:
    """Snapshots are written on the library's pooled connection while other threads'
    appends go through the recorder's own (on SQLite): the two writers wait for each
    other, and every event and snapshot lands."""
    ledger = make_ledger(max_attempts=200)
    orders = []
    for index in range(4):
        order = ledger.submit(submit_command(client_order_id=f"long-{index}", quantity=1000))
        ledger.record(accepted(order, f"B-long-{index}"))
        orders.append(order)

    def work(index: int) -> None:
        for n in range(105):  # a snapshot at version 100
            ledger.record(fill(orders[index], f"L{index}-{n}", 1))

    assert errors_of_threads(work, ((i,) for i in range(4))) == []
    assert ledger.count_events() == 4 * 107
    assert ledger.snapshots is not None
    for order in orders:
        assert list(ledger.snapshots.get(order.id)), "a snapshot at version 100"
        assert ledger.get_order(order.id).filled_quantity == 105


def test_concurrent_resubmissions_make_one_order(make_ledger: LedgerFactory) -> None:
    writers = [make_ledger() for _ in range(4)]
    results: list[Order] = []
    barrier = threading.Barrier(len(writers))

    def work(writer: OrderLedger) -> None:
        barrier.wait()
        results.append(writer.submit(submit_command()))

    assert errors_of_threads(work, ((w,) for w in writers)) == []
    assert len({o.id for o in results}) == 1
    assert writers[0].count_events() == 1


# ---------------------------------------------------------------- encoding round trips


def test_every_value_type_round_trips_exactly(make_ledger: LedgerFactory) -> None:
    """Decimal, enums, dates, aware datetimes (in IST), nested values: what is read back
    equals what was written, type for type."""
    ledger = make_ledger()
    future = ledger.submit(
        submit_command(
            exchange=Exchange.NFO,
            tradingsymbol="NIFTY26DECFUT",
            quantity=130,
            order_type="SL-M",
            price=None,
            trigger_price=D("26000.1"),
            market_protection=D("2.5"),
            reference_price=D("25999.123456789012345678901234567"),
            validity="TTL",
            validity_ttl=30,
        )
    )
    ledger.record(accepted(future))
    ledger.request_modify(
        ModifyOrder(order_id=future.id, order_type=OrderType.SL_M, trigger_price=D("26000.5"))
    )
    exchange_time = ledger.clock().astimezone(IST)
    ledger.record(
        RecordFill(
            order_id=future.id,
            trade_id="T1",
            exchange=Exchange.NFO,
            tradingsymbol="NIFTY26DECFUT",
            quantity=65,
            price=D("26001.30"),
            exchange_timestamp=exchange_time,
            charges=D("23.6149"),
        )
    )
    written = make_ledger().history(future.id)
    live = ledger.get_order(future.id)

    submitted = written[0]
    assert isinstance(submitted, Order.Submitted)
    assert submitted.expiry == date(2026, 12, 29)
    assert type(submitted.expiry) is date
    assert submitted.order_type is OrderType.SL_M
    assert submitted.instrument == InstrumentRef(Exchange.NFO, "NIFTY26DECFUT")
    assert submitted.reference_price == D("25999.123456789012345678901234567")
    assert submitted.market_protection == D("2.5")
    requested = written[2]
    assert isinstance(requested, Order.ModifyRequested)
    assert requested.changes == OrderChanges(order_type=OrderType.SL_M, trigger_price=D("26000.5"))
    filled = written[3]
    assert isinstance(filled, Order.Filled)
    assert filled.price == D("26001.30")
    assert str(filled.price) == "26001.30"  # scale kept, not just value
    assert filled.charges == D("23.6149")
    assert filled.exchange_timestamp == exchange_time
    assert filled.exchange_timestamp is not None
    assert filled.exchange_timestamp.utcoffset() == timedelta(hours=5, minutes=30)
    assert filled.source is Source.BROKER
    assert written == ledger.history(future.id)
    assert state(make_ledger().get_order(future.id)) == state(live)


def test_event_topics_and_versions_are_pinned() -> None:
    """Stored events name their class by topic: renaming one would orphan the log."""
    from ledger.domain.order import ORDER_EVENT_CLASSES

    assert [cls.TOPIC for cls in ORDER_EVENT_CLASSES] == [
        f"ledger.domain.order:Order.{name}"
        for name in (
            "Submitted",
            "Accepted",
            "Rejected",
            "ModifyRequested",
            "Modified",
            "ModifyRejected",
            "Triggered",
            "Filled",
            "CancelRequested",
            "Cancelled",
            "CancelRejected",
            "Expired",
        )
    ]
    # v2 added the hash chain (previous_hash, hash); v1 events upcast (test_upcasting.py).
    # v3 of Submitted and Filled added the contract multiplier; v2 ones upcast to 1.
    # v3 of Modified added closes_request; v2 ones upcast to True (they always closed it).
    assert {cls.__name__: cls.class_version for cls in ORDER_EVENT_CLASSES} == {
        cls.__name__: 3 if cls in (Order.Submitted, Order.Filled, Order.Modified) else 2
        for cls in ORDER_EVENT_CLASSES
    }
    assert Order.TOPIC == "ledger.domain.order:Order"


def test_long_orders_load_from_snapshots_equal_to_a_full_replay(make_ledger: LedgerFactory) -> None:
    writer = make_ledger()
    order = writer.submit(submit_command(quantity=1000))
    writer.record(accepted(order))
    for n in range(248):
        writer.record(fill(order, f"T{n}", 1))
    snapshots = list(writer.snapshots.get(order.id)) if writer.snapshots else []
    assert [s.originator_version for s in snapshots] == [100, 200]
    reader = make_ledger()
    events = reader.history(order.id)
    assert len(events) == 250
    for version in (99, 100, 150, 200, 250):
        folded: Order | None = None
        for event in events[:version]:
            folded = event.mutate(folded)
        assert folded is not None
        assert state(reader.get_order(order.id, at_version=version)) == state(folded)
    assert reader.get_order(order.id).filled_quantity == 248


def test_a_refusal_on_a_remembered_state_is_the_refusal_even_with_one_attempt(
    make_ledger: LedgerFactory,
) -> None:
    ledger = make_ledger(max_attempts=1)
    order = ledger.submit(submit_command())
    ledger.record(accepted(order))
    ledger.record(fill(order, "T1", 100))
    with pytest.raises(TransitionRefused):  # not ConcurrencyConflict
        ledger.request_cancel(CancelOrder(order_id=order.id))
    assert ledger.record(fill(order, "T1", 100)).version == 3  # a no-op, confirmed


def test_a_closed_ledger_refuses_commands_and_writes_nothing(make_ledger: LedgerFactory) -> None:
    """After `close()` a command is refused as the library's closed pool refuses it (on
    PostgreSQL the pool's error, as the database being unavailable); on SQLite it once
    opened its appending connection again and wrote."""
    ledger = make_ledger()
    ledger.submit(submit_command(client_order_id="before"))
    ledger.close()
    with pytest.raises((ConnectionPoolClosedError, StorageUnavailable)):
        ledger.submit(submit_command(client_order_id="after"))
    assert make_ledger().count_events() == 1


def test_failing_to_open_the_sqlite_appending_connection_is_storage_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection commands append through is opened on the first command; when that
    fails (no file descriptors left, say) the command fails as any unavailable database
    does: not acknowledged, to be sent again; nothing written."""
    import sqlite3

    book = open_ledger(tmp_path / "ledger.db", clock=FakeClock())

    def refuse(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(sqlite3, "connect", refuse)
    with pytest.raises(StorageUnavailable, match="not acknowledged"):
        book.submit(submit_command(client_order_id="a"))
    monkeypatch.undo()
    assert book.count_events() == 0
    book.submit(submit_command(client_order_id="a"))
    assert book.count_events() == 1
    book.close()


def test_a_snapshot_that_cannot_be_written_does_not_fail_its_committed_command(
    ledger: OrderLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot at version 100 is written after the command's events commit. Its
    failure (another writer holding the lock past the timeout) raised the library's own
    error: the caller, told nothing was written, retried a request that was in the log,
    and it was written twice."""
    order = ledger.submit(submit_command(client_order_id="snap", quantity=1000))
    ledger.record(accepted(order, "B-snap"))
    for n in range(97):  # versions 3 to 99
        ledger.record(fill(order, f"S{n}", 1))
    assert ledger.snapshots is not None

    def refused(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("database is locked")

    monkeypatch.setattr(ledger.snapshots.recorder, "insert_events", refused)
    cancelled = ledger.request_cancel(CancelOrder(order_id=order.id, reason="flatten"))
    assert cancelled.version == 100
    kinds = [type(e).__name__ for e in ledger.history(order.id)]
    assert kinds.count("CancelRequested") == 1
    assert len(kinds) == 100
    monkeypatch.undo()
    assert ledger.get_order(order.id).version == 100


def test_an_order_is_found_by_its_id_as_text_on_every_backend(ledger: OrderLedger) -> None:
    """SQLite's recorder looks orders up by `uuid.hex`: the text of an existing order's id
    read as not found there and as the order on PostgreSQL; text that is no id at all was
    "storage unavailable, may be sent again" on PostgreSQL."""
    order = ledger.submit(submit_command())
    assert ledger.get_order(str(order.id)).id == order.id  # type: ignore[arg-type]
    assert len(ledger.history(str(order.id))) == 1  # type: ignore[arg-type]
    with pytest.raises(InvalidCommand, match="order_id: must be an order id, got 'nonsense'"):
        ledger.get_order("nonsense")  # type: ignore[arg-type]
    with pytest.raises(InvalidCommand, match="at_version: must be a whole number"):
        ledger.get_order(order.id, at_version=True)
    with pytest.raises(InvalidCommand, match="as_of: must be a datetime"):
        ledger.get_order(order.id, as_of="2026-01-01")  # type: ignore[arg-type]


def test_the_api_names_what_is_wrong_with_an_argument_of_the_wrong_kind(
    ledger: OrderLedger,
) -> None:
    order = ledger.submit(submit_command())
    assert ledger.list_orders(status="SUBMITTED") == [order]  # type: ignore[arg-type]
    with pytest.raises(InvalidCommand, match="status: must be one of"):
        ledger.list_orders(status="DONE")  # type: ignore[arg-type]
    with pytest.raises(InvalidCommand, match=r"expected a SubmitOrder .* got dict"):
        ledger.submit({"account": "AB1234"})  # type: ignore[arg-type]
    with pytest.raises(InvalidCommand, match=r"expected a CancelOrder .* got NoneType"):
        ledger.request_cancel(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidCommand, match=r"expected a RecordAccepted or .* got dict"):
        ledger.record({"order_id": order.id})  # type: ignore[arg-type]
