"""Strategy callbacks driven from the log: complete, remembered across restarts, never in
the way of writers, and usable from asyncio."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import pytest

from ledger.application import OrderLedger
from ledger.demo import run_session
from projections.callbacks import CallbackSubscription
from projections.positions import Position
from projections.reports import ExecutionReport, ReportFill
from projections.runner import LedgerLog
from projections.store import ProjectionStore, store_for_ledger_url
from tests.support import accepted, fill, submit_command


@pytest.fixture
def store(database_url: str) -> Any:
    store = store_for_ledger_url(database_url)
    yield store
    store.close()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def status(self, report: ExecutionReport) -> None:
        self.calls.append(("status", (report.client_order_id, report.status)))

    def fill(self, fill: ReportFill, report: ExecutionReport) -> None:
        self.calls.append(("fill", (report.client_order_id, fill.trade_id)))

    def report(self, report: ExecutionReport) -> None:
        self.calls.append(("report", (report.client_order_id, report.status)))

    def position(self, position: Position) -> None:
        self.calls.append(("position", (position.tradingsymbol, position.net_quantity)))

    def subscribe(self, ledger: OrderLedger, store: ProjectionStore) -> CallbackSubscription:
        return CallbackSubscription(
            LedgerLog(ledger),
            store,
            "strategy_a",
            on_status=self.status,
            on_fill=self.fill,
            on_report=self.report,
            on_position=self.position,
            batch_size=7,
        )

    def kinds(self) -> Counter[str]:
        return Counter(kind for kind, _ in self.calls)


def drain(subscription: CallbackSubscription) -> None:
    while subscription.poll():
        pass


def test_every_kind_of_callback_is_delivered(ledger: OrderLedger, store: ProjectionStore) -> None:
    run_session(ledger)
    recorder = Recorder()
    drain(recorder.subscribe(ledger, store))
    kinds = recorder.kinds()
    assert kinds["fill"] == 8  # the duplicate report of one trade is not a second fill
    assert kinds["position"] == 8
    assert kinds["report"] == 6  # 3 filled, 2 cancelled, 1 rejected; one order still works
    assert ("report", ("s1-infy-sell", "CANCELLED")) in recorder.calls
    assert ("status", ("s1-rel-buy", "PENDING_MODIFY")) in recorder.calls
    assert ("position", ("SBIN", 100)) in recorder.calls
    index = recorder.calls.index(("fill", ("s1-sbin-buy", "0001000002")))
    assert recorder.calls[index + 2] == ("report", ("s1-sbin-buy", "FILLED"))


def test_nothing_is_lost_or_repeated_across_a_restart(
    ledger: OrderLedger, store: ProjectionStore
) -> None:
    run_session(ledger)
    first = Recorder()
    drain(first.subscribe(ledger, store))
    run_session(ledger)
    second = Recorder()
    subscription = second.subscribe(ledger, store)
    drain(subscription)
    assert {c for _, c in second.calls if c[0].startswith("s1-")} == set()
    assert second.kinds() == first.kinds()
    # Positions carry on from what the first run delivered, not from zero.
    assert ("position", ("SBIN", 150)) in second.calls
    assert subscription.poll() == 0


def test_a_slow_callback_never_blocks_a_writer(ledger: OrderLedger, store: ProjectionStore) -> None:
    release = threading.Event()
    entered = threading.Event()

    def stuck(*_: Any) -> None:
        entered.set()
        release.wait(30)  # a callback that takes as long as it likes

    order = ledger.submit(submit_command(quantity=1000))
    subscription = CallbackSubscription(LedgerLog(ledger), store, "slow", on_status=stuck)
    thread, stop = subscription.start(poll_interval=0.01)
    try:
        assert entered.wait(10)
        started = time.monotonic()
        ledger.record(accepted(order))
        for n in range(50):
            ledger.record(fill(order, f"T{n}", 1))
        elapsed = time.monotonic() - started
        assert ledger.get_order(order.id).filled_quantity == 50
        assert not release.is_set()  # every write above finished while the callback hung
        assert elapsed < 25
    finally:
        release.set()
        stop.set()
        thread.join(10)


def test_asyncio_handlers(ledger: OrderLedger, store: ProjectionStore) -> None:
    run_session(ledger)
    seen: list[str] = []

    async def on_fill(fill: ReportFill, report: ExecutionReport) -> None:
        await asyncio.sleep(0)
        seen.append(fill.trade_id)

    async def main() -> None:
        subscription = CallbackSubscription(LedgerLog(ledger), store, "async_one", on_fill=on_fill)
        stop = asyncio.Event()
        task = asyncio.create_task(subscription.run_async(stop, poll_interval=0.01))
        for _ in range(500):
            if len(seen) == 8:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(main())
    assert len(seen) == 8
    assert len(set(seen)) == 8


def test_coroutine_handlers_work_on_the_thread_too(
    ledger: OrderLedger, store: ProjectionStore
) -> None:
    run_session(ledger)
    seen: list[str] = []

    async def on_report(report: ExecutionReport) -> None:
        seen.append(report.status)

    subscription = CallbackSubscription(LedgerLog(ledger), store, "async_two", on_report=on_report)
    drain(subscription)
    assert sorted(seen) == ["CANCELLED", "CANCELLED", "FILLED", "FILLED", "FILLED", "REJECTED"]


def test_bad_subscription_name(ledger: OrderLedger, store: ProjectionStore) -> None:
    with pytest.raises(ValueError, match="letters, digits and _"):
        CallbackSubscription(LedgerLog(ledger), store, "drop table;")


class Flaky(Recorder):
    """A recorder whose handler of one kind raises the first `failures` times it is
    called (a strategy's transient error)."""

    def __init__(self, kind: str, failures: int = 1) -> None:
        super().__init__()
        self.failing = kind
        self.failures = failures

    def _fail(self, kind: str) -> None:
        if kind == self.failing and self.failures:
            self.failures -= 1
            raise RuntimeError(f"transient error in on_{kind}")

    def status(self, report: ExecutionReport) -> None:
        self._fail("status")
        super().status(report)

    def fill(self, fill: ReportFill, report: ExecutionReport) -> None:
        self._fail("fill")
        self.calls.append(("filled", (fill.trade_id, report.filled_quantity)))

    def report(self, report: ExecutionReport) -> None:
        self._fail("report")
        self.calls.append(("report", (report.status, report.filled_quantity)))

    def position(self, position: Position) -> None:
        self._fail("position")
        super().position(position)


@pytest.mark.parametrize("kind", ["status", "fill", "report", "position"])
def test_a_handler_that_raises_gets_the_same_callback_again_and_nothing_is_folded_twice(
    ledger: OrderLedger, store: ProjectionStore, kind: str
) -> None:
    """The event was folded into the subscription's views before its callbacks ran and
    folded again when poll() was called after a handler raised: a 40-share fill came back
    as a position of 80, the status and final-report callbacks were lost, and a later
    event raised KeyError on every poll. Now each event is folded once; a retry owes
    exactly the callbacks not yet made, with the data of that event."""
    order = ledger.submit(submit_command(quantity=100))
    ledger.record(accepted(order))
    ledger.record(fill(order, "T1", 40))
    ledger.record(fill(order, "T2", 60, price="812.40"))
    flaky = Flaky(kind)
    subscription = flaky.subscribe(ledger, store)
    with pytest.raises(RuntimeError, match=f"on_{kind}"):
        drain(subscription)
    drain(subscription)
    assert flaky.failures == 0
    assert flaky.calls == [
        ("status", ("c-1", "SUBMITTED")),
        ("status", ("c-1", "ACCEPTED")),
        ("status", ("c-1", "PARTIALLY_FILLED")),
        ("filled", ("T1", 40)),
        ("position", ("SBIN", 40)),
        ("status", ("c-1", "FILLED")),
        ("filled", ("T2", 100)),
        ("position", ("SBIN", 100)),
        ("report", ("FILLED", 100)),
    ]
    assert subscription.poll() == 0


def test_after_a_handler_raised_a_new_subscription_resumes_at_the_event_that_failed(
    ledger: OrderLedger, store: ProjectionStore
) -> None:
    """What was delivered before the failure is remembered; the failed event's callbacks
    are all made again by a subscription started afresh (at least once across restarts)."""
    order = ledger.submit(submit_command(quantity=100))
    ledger.record(accepted(order))
    ledger.record(fill(order, "T1", 40))
    flaky = Flaky("position")
    with pytest.raises(RuntimeError):
        drain(flaky.subscribe(ledger, store))
    again = Recorder()
    drain(again.subscribe(ledger, store))
    assert again.calls == [
        ("status", ("c-1", "PARTIALLY_FILLED")),
        ("fill", ("c-1", "T1")),
        ("position", ("SBIN", 40)),
    ]


def test_run_forever_logs_a_failing_handler_and_delivers_again(
    ledger: OrderLedger, store: ProjectionStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raised ended the delivery thread (its callbacks stopped for good,
    with nothing but a traceback on stderr); now the failure is logged and the same
    callback retried, backing off, until it goes through."""
    order = ledger.submit(submit_command(quantity=100))
    ledger.record(accepted(order))
    ledger.record(fill(order, "T1", 40))
    flaky = Flaky("fill", failures=2)
    subscription = flaky.subscribe(ledger, store)
    with caplog.at_level("ERROR", logger="projections.callbacks"):
        thread, stop = subscription.start(poll_interval=0.01)
        try:
            for _ in range(500):
                if ("position", ("SBIN", 40)) in flaky.calls:
                    break
                time.sleep(0.01)
            assert thread.is_alive()
        finally:
            stop.set()
            thread.join(10)
    assert flaky.calls.count(("filled", ("T1", 40))) == 1
    assert ("position", ("SBIN", 40)) in flaky.calls
    failures = [r for r in caplog.records if "on_fill" in r.getMessage()]
    assert len(failures) == 2
    assert "strategy_a" in failures[0].getMessage()
    assert subscription.last_error is None


def test_run_async_logs_a_failing_handler_and_delivers_again(
    ledger: OrderLedger, store: ProjectionStore, caplog: pytest.LogCaptureFixture
) -> None:
    order = ledger.submit(submit_command(quantity=100))
    ledger.record(accepted(order))
    ledger.record(fill(order, "T1", 40))
    seen: list[tuple[str, int]] = []
    failures = [1]

    async def on_fill(fill: ReportFill, report: ExecutionReport) -> None:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("transient error in on_fill")
        seen.append((fill.trade_id, report.filled_quantity))

    async def main() -> None:
        subscription = CallbackSubscription(LedgerLog(ledger), store, "async_x", on_fill=on_fill)
        stop = asyncio.Event()
        task = asyncio.create_task(subscription.run_async(stop, poll_interval=0.01))
        for _ in range(500):
            if seen or task.done():
                break
            await asyncio.sleep(0.01)
        assert not task.done()
        stop.set()
        await task

    with caplog.at_level("ERROR", logger="projections.callbacks"):
        asyncio.run(main())
    assert seen == [("T1", 40)]
    assert any("on_fill" in r.getMessage() for r in caplog.records)
