"""Events stored by an older version of the ledger are read by today's code.

tests/fixtures/ledger-v1.db was written by the v1 event classes (before the hash chain):
the demo's session (every kind of event) and an order with 150 fills, so it also holds a v1
snapshot. `upcast_v1_v2` reads each v1 event as a v2 event with no chain, and the
aggregate's `upcast_v1_v2` does the same for the v1 snapshot.

tests/fixtures/ledger-v2.db holds the same session written by the code before `Submitted`
and `Filled` recorded the contract multiplier (v2 events, a v3 snapshot): they read as
multiplier 1, and their stored hashes, computed without it, still verify.
(tests/fixtures/make_fixture.py says how both were made.)
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from ledger.application import OrderLedger, open_ledger
from ledger.checkpoints import check_integrity, write_checkpoint
from ledger.commands import RecordFill
from ledger.domain.order import Order
from ledger.domain.status import OrderStatus
from ledger.domain.values import Exchange, OrderType
from projections import all_projections
from projections.pointintime import fold_all
from projections.rebuild import rebuild
from projections.runner import LedgerLog, ProjectionRunner
from projections.store import store_for_ledger_url
from projections.verify import verify
from tests.support import FakeClock

FIXTURES = Path(__file__).parent.parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "ledger-v1.expected.json").read_text())


def _copy_of(name: str, folder: Path) -> OrderLedger:
    copy = folder / "ledger.db"
    shutil.copy(FIXTURES / f"ledger-{name}.db", copy)
    return open_ledger(copy, clock=FakeClock())


@pytest.fixture
def old_ledger(tmp_path: Path) -> Iterator[OrderLedger]:
    ledger = _copy_of("v1", tmp_path)
    yield ledger
    ledger.close()


@pytest.fixture
def v2_ledger(tmp_path: Path) -> Iterator[OrderLedger]:
    ledger = _copy_of("v2", tmp_path)
    yield ledger
    ledger.close()


def test_the_fixture_really_is_v1() -> None:
    lite = sqlite3.connect(FIXTURES / "ledger-v1.db")
    states = [bytes(s) for (s,) in lite.execute("SELECT state FROM stored_events")]
    (snapshot,) = [bytes(s) for (s,) in lite.execute("SELECT state FROM stored_snapshots")]
    lite.close()
    assert len(states) == 181
    assert not any(b"class_version" in s or b"previous_hash" in s for s in states)
    assert b"chain_hash" not in snapshot
    assert b"class_version" not in snapshot


@pytest.mark.parametrize("name", ["v1", "v2"])
def test_old_orders_read_as_they_were(name: str, tmp_path: Path) -> None:
    expected_orders = json.loads((FIXTURES / f"ledger-{name}.expected.json").read_text())
    ledger = _copy_of(name, tmp_path)
    try:
        orders = {str(order.id): order for order in ledger.all_orders()}
        assert set(orders) == set(expected_orders)
        for order_id, expected in expected_orders.items():
            # Each order twice: folded from the whole log, and loaded (snapshot + events).
            for order in (orders[order_id], ledger.get_order(UUID(order_id))):
                assert order.status.value == expected["status"]
                assert order.version == expected["version"]
                assert order.filled_quantity == expected["filled_quantity"]
                average = order.average_price
                assert (str(average) if average is not None else None) == expected["average_price"]
                assert order.multiplier == 1
                assert (order.chain_hash is None) == (name == "v1")
    finally:
        ledger.close()


def test_the_v2_fixture_really_is_v2() -> None:
    lite = sqlite3.connect(FIXTURES / "ledger-v2.db")
    states = [bytes(s) for (s,) in lite.execute("SELECT state FROM stored_events")]
    (snapshot,) = [bytes(s) for (s,) in lite.execute("SELECT state FROM stored_snapshots")]
    lite.close()
    assert len(states) == 181
    assert all(b'"previous_hash"' in s and b"multiplier" not in s for s in states)
    assert b"multiplier" not in snapshot
    assert b'"class_version":3' in snapshot


def test_v2_events_read_as_multiplier_1_and_still_verify(v2_ledger: OrderLedger) -> None:
    events = list(v2_ledger.iter_log())
    fills = [e for e in events if isinstance(e, Order.Filled)]
    submissions = [e for e in events if isinstance(e, Order.Submitted)]
    assert fills
    assert submissions
    assert all(e.multiplier == 1 for e in fills)
    assert all(e.multiplier == 1 for e in submissions)
    report = check_integrity(v2_ledger)
    assert report.ok, report.findings
    assert (report.chains.unchained, report.chains.chained) == (0, 181)


def test_a_new_fill_on_a_v2_order_carries_its_multiplier_and_chains_on(
    v2_ledger: OrderLedger,
) -> None:
    partial, last = _fill_the_partly_filled_order(v2_ledger, "after-multiplier-1")
    assert isinstance(last, Order.Filled)
    assert last.multiplier == 1
    assert last.previous_hash == partial.chain_hash is not None
    assert _chains_after_a_checkpoint(v2_ledger) == (0, 182)


def test_projections_fold_v2_events(v2_ledger: OrderLedger) -> None:
    _rebuild_and_verify(v2_ledger)


def test_reports_of_orders_recorded_before_the_multiplier_read_it_as_1(
    v2_ledger: OrderLedger,
) -> None:
    """`Submitted` events of the v2 fixture carry no `multiplier`: their execution reports
    fold with 1 (and slippage is what it always was), not with a missing key."""
    store = store_for_ledger_url(v2_ledger.storage)
    try:
        runner = ProjectionRunner(LedgerLog(v2_ledger), store, all_projections())
        runner.catch_up()
        reports = list(runner.view("reports").rows("execution_reports"))
    finally:
        store.close()
    assert len(reports) == len(EXPECTED)
    assert {report.multiplier for report in reports} == {1}


def test_v1_events_upcast_with_no_chain(old_ledger: OrderLedger) -> None:
    events = list(old_ledger.iter_log())
    assert len(events) == 181
    assert all(e.previous_hash is None and e.event_hash is None for e in events)


def test_new_events_on_a_v1_order_start_a_chain(old_ledger: OrderLedger) -> None:
    partial, last = _fill_the_partly_filled_order(old_ledger, "after-upgrade-1")
    order = old_ledger.get_order(partial.id)
    assert last.previous_hash is None  # the event before it has no hash
    assert last.event_hash is not None
    assert order.chain_hash == last.event_hash
    assert order.filled_quantity == partial.filled_quantity + 1
    assert _chains_after_a_checkpoint(old_ledger) == (181, 1)


def test_projections_fold_v1_events(old_ledger: OrderLedger) -> None:
    _rebuild_and_verify(old_ledger)
    views = fold_all(((0, e) for e in old_ledger.iter_log()), all_projections())
    positions = views["positions"].contents()
    assert positions  # the demo's fills, folded from v1 events


def test_every_stored_version_has_its_upcaster() -> None:
    assert Order.Cancelled.class_version == 2
    assert hasattr(Order.Cancelled, "upcast_v1_v2")
    for cls in (Order.Submitted, Order.Filled):
        assert cls.class_version == 3
        assert hasattr(cls, "upcast_v1_v2")
        assert hasattr(cls, "upcast_v2_v3")
    assert Order.class_version == 4
    assert all(hasattr(Order, f"upcast_v{n}_v{n + 1}") for n in (1, 2, 3))
    assert Exchange.NSE.value == "NSE"


def test_a_v2_snapshot_of_an_order_modified_to_limit_drops_its_market_protection() -> None:
    """`Modified` now clears the market protection of a type without any; a v2 snapshot
    taken before still held it, and `verify` called the order's snapshot corrupt."""
    state: dict[str, Any] = {"order_type": OrderType.LIMIT, "market_protection": Decimal(-1)}
    Order.upcast_v2_v3(state)
    assert state["market_protection"] is None
    market = {"order_type": OrderType.MARKET, "market_protection": Decimal(-1)}
    Order.upcast_v2_v3(market)
    assert market["market_protection"] == Decimal(-1)
    stored = {"order_type": "SL", "market_protection": "2.5"}  # as plain stored values
    Order.upcast_v2_v3(stored)
    assert stored["market_protection"] is None


def _fill_the_partly_filled_order(ledger: OrderLedger, trade_id: str) -> tuple[Order, Order.Event]:
    """One more fill on the fixture's partly filled order: the order before it, and the
    event the fill made."""
    partial = next(o for o in ledger.all_orders() if o.status is OrderStatus.PARTIALLY_FILLED)
    ledger.record(
        RecordFill(
            order_id=partial.id,
            trade_id=trade_id,
            exchange=partial.instrument.exchange,
            tradingsymbol=partial.instrument.tradingsymbol,
            quantity=1,
            price=partial.price or Decimal("1"),
        )
    )
    return partial, ledger.history(partial.id)[-1]


def _chains_after_a_checkpoint(ledger: OrderLedger) -> tuple[int, int]:
    """(unchained, chained) events of a clean integrity check after a checkpoint."""
    assert write_checkpoint(ledger) is not None
    report = check_integrity(ledger)
    assert report.ok, report.findings
    return report.chains.unchained, report.chains.chained


def _rebuild_and_verify(ledger: OrderLedger) -> None:
    """The fixture's 181 events rebuild every projection, and verify finds it clean."""
    store = store_for_ledger_url(ledger.storage)
    try:
        rebuild(LedgerLog(ledger), store, all_projections())
        report = verify(ledger, store, all_projections())
        assert report.ok, report.problems
        assert report.events == 181
    finally:
        store.close()
