"""Callbacks for strategies, driven from the log.

A `CallbackSubscription` follows the log on its own thread (or as an asyncio task) and
calls the strategy back:

* `on_status(report)`: an order's status changed (the report after the change);
* `on_fill(fill, report)`: a fill was recorded;
* `on_report(report)`: an order ended (filled, cancelled, rejected, expired): its final
  execution report;
* `on_position(position)`: a position changed.

Handlers may be plain functions or coroutine functions (awaited, on the subscription's
event loop when run with `run_async`, or on a private loop in the thread).

The subscription remembers how far it has delivered (a tracking row in the projection
store), so nothing is lost across a restart; within a run nothing is delivered twice. After
a crash, callbacks for the batch in flight are delivered again: handlers should be
idempotent over (order id, version). Writers never wait for callbacks: commands commit to
the log and return; the subscription reads the log afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from ledger.domain.order import Order
from ledger.domain.status import OrderStatus
from projections.base import Projection, Table, View
from projections.positions import Position, PositionsProjection
from projections.reports import ExecutionReport, ExecutionReportsProjection, ReportFill
from projections.runner import EventSource
from projections.store import ProjectionStore

Handler = Callable[..., Any]


class _CursorProjection(Projection):
    """Gives a subscription a tracking row of its own (it keeps no tables)."""

    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table, ...]] = ()
    handles: ClassVar[tuple[type[Order.Event], ...]] = ()

    def __init__(self, name: str) -> None:
        self.name = f"callbacks_{name}"  # type: ignore[misc]

    def apply(self, view: View, event: Order.Event, position: int) -> None:  # pragma: no cover
        pass


class CallbackSubscription:
    """Delivers order and position callbacks from the log to a strategy."""

    def __init__(
        self,
        source: EventSource,
        store: ProjectionStore,
        name: str,
        *,
        on_status: Handler | None = None,
        on_fill: Handler | None = None,
        on_report: Handler | None = None,
        on_position: Handler | None = None,
        batch_size: int = 500,
    ) -> None:
        if not name.replace("_", "").isalnum():
            raise ValueError(f"subscription name {name!r}: letters, digits and _ only")
        self.source = source
        self.store = store
        self.handlers = {
            "status": on_status,
            "fill": on_fill,
            "report": on_report,
            "position": on_position,
        }
        self.batch_size = batch_size
        self._cursor = _CursorProjection(name)
        self._reports = ExecutionReportsProjection()
        self._positions = PositionsProjection()
        self._views = {"reports": View(), "positions": View()}
        store.ensure([self._cursor])
        self.position = store.position(self._cursor)
        self.delivered = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._restore_state()

    def _restore_state(self) -> None:
        """Fold, silently, what was delivered before: the views callbacks are built from."""
        after = 0
        while after < self.position:
            batch = self.source.read(after, self.batch_size)
            if not batch:
                break
            for position, event in batch:
                if position > self.position:
                    return
                self._fold(event, position)
                after = position

    def _fold(
        self, event: Order.Event, position: int
    ) -> tuple[ExecutionReport | None, Position | None]:
        before = self._views["reports"].get("execution_reports", (str(event.originator_id),))
        self._reports.apply(self._views["reports"], event, position)
        report = self._views["reports"].get("execution_reports", (str(event.originator_id),))
        position_row = None
        if isinstance(event, Order.Filled):
            self._positions.apply(self._views["positions"], event, position)
            key = (
                event.account,
                event.instrument.exchange.value,
                event.instrument.tradingsymbol,
                event.product.value,
            )
            position_row = self._views["positions"].get("positions", key)
        status_changed = before is None or before.status != report.status
        return (report if status_changed else None), position_row

    # ------------------------------------------------------------------ delivery

    def poll(self) -> int:
        """Deliver the callbacks for one batch of new events. Returns events read."""
        batch = self.source.read(self.position, self.batch_size)
        for position, event in batch:
            changed, position_row = self._fold(event, position)
            report: ExecutionReport = self._views["reports"].get(
                "execution_reports", (str(event.originator_id),)
            )
            if changed is not None:
                self._call("status", changed)
            if isinstance(event, Order.Filled):
                fill: ReportFill = self._views["reports"].get(
                    "execution_fills", (str(event.originator_id), event.trade_id)
                )
                self._call("fill", fill, report)
                self._call("position", position_row)
            if changed is not None and OrderStatus(changed.lifecycle).is_terminal:
                self._call("report", changed)
            self.position = position
            self.delivered += 1
        if batch:
            self.store.commit([(self._cursor, {})], self.position)
        return len(batch)

    def _call(self, kind: str, *args: Any) -> None:
        handler = self.handlers[kind]
        if handler is None:
            return
        result = handler(*args)
        if inspect.isawaitable(result):
            self._await(result)

    def _await(self, awaitable: Awaitable[Any]) -> None:
        if self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), self._loop).result()
        else:
            if self._private_loop is None:
                self._private_loop = asyncio.new_event_loop()
            self._private_loop.run_until_complete(awaitable)

    _private_loop: asyncio.AbstractEventLoop | None = None

    def run_forever(self, stop: threading.Event, poll_interval: float = 0.1) -> None:
        """Deliver until `stop` is set (call it on a thread of its own)."""
        try:
            while not stop.is_set():
                if self.poll() == 0:
                    stop.wait(poll_interval)
        finally:
            if self._private_loop is not None:
                self._private_loop.close()
                self._private_loop = None

    def start(self, poll_interval: float = 0.1) -> tuple[threading.Thread, threading.Event]:
        """Run on a daemon thread; set the returned event to stop it."""
        stop = threading.Event()
        thread = threading.Thread(
            target=self.run_forever,
            args=(stop, poll_interval),
            name="ledger-callbacks",
            daemon=True,
        )
        thread.start()
        return thread, stop

    async def run_async(self, stop: asyncio.Event, poll_interval: float = 0.1) -> None:
        """Deliver from an asyncio program: reads happen in a worker thread, coroutine
        handlers run on this loop."""
        self._loop = asyncio.get_running_loop()
        while not stop.is_set():
            count = await asyncio.to_thread(self.poll)
            if count == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll_interval)


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
