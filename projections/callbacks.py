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

A handler that raises: `poll()` raises its error, having delivered (and recorded as
delivered) every event before that one. Each event is folded into the subscription's
views once, and the callbacks it owes are kept until they are made: the next `poll()`
makes the one that raised again, with the same data, and those after it, then carries
on. (Folding again on retry counted a fill twice and lost the status and final-report
callbacks.) `run_forever` and `run_async` do that for you: they log the error (logger
`projections.callbacks`, with the subscription, log position and handler), keep it in
`last_error`, and retry the same callback, waiting twice as long after each failure in a
row (from `poll_interval` up to `max_backoff`), until it goes through or they are
stopped. A delivery that stopped at the first error would leave the strategy without
callbacks; one that skipped the event would leave it with wrong positions.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
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
#: A callback still to be made: the handler's kind and its arguments.
Owed = tuple[str, tuple[Any, ...]]

log = logging.getLogger(__name__)


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
        #: The event folded but not fully delivered (a handler raised): its log position
        #: and the callbacks it still owes.
        self._pending: tuple[int, list[Owed]] | None = None
        #: The error of the last failed delivery by `run_forever` / `run_async` (None once
        #: a delivery goes through again).
        self.last_error: BaseException | None = None
        self.name = name
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

    def _owed(self, event: Order.Event, position: int) -> list[Owed]:
        """Fold `event` into the views (once: the caller keeps what this returns until
        every callback in it is made) and list the callbacks it owes, in order, with the
        rows as they stand after it."""
        changed, position_row = self._fold(event, position)
        owed: list[Owed] = []
        if changed is not None:
            owed.append(("status", (changed,)))
        if isinstance(event, Order.Filled):
            report: ExecutionReport = self._views["reports"].get(
                "execution_reports", (str(event.originator_id),)
            )
            fill: ReportFill = self._views["reports"].get(
                "execution_fills", (str(event.originator_id), event.trade_id)
            )
            owed.append(("fill", (fill, report)))
            owed.append(("position", (position_row,)))
        if changed is not None and OrderStatus(changed.lifecycle).is_terminal:
            owed.append(("report", (changed,)))
        return owed

    # ------------------------------------------------------------------ delivery

    def poll(self) -> int:
        """Deliver the callbacks for one batch of new events. Returns events read.

        If a handler raises, the error propagates after the position of the events
        delivered before it is recorded; the failed event stays folded with its
        remaining callbacks owed, and the next call starts with them."""
        batch = self.source.read(self.position, self.batch_size)
        start = self.position
        try:
            for position, event in batch:
                if self._pending is None or self._pending[0] != position:
                    self._pending = (position, self._owed(event, position))
                owed = self._pending[1]
                while owed:
                    kind, args = owed[0]
                    self._call(kind, *args)
                    owed.pop(0)
                self._pending = None
                self.position = position
                self.delivered += 1
        finally:
            if self.position != start:
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

    def _poll_logged(self) -> int | None:
        """`poll()`, with an error logged and kept in `last_error`: None if it failed."""
        try:
            count = self.poll()
        except Exception as error:
            self.last_error = error
            if self._pending is not None and self._pending[1]:
                where = f"log position {self._pending[0]}, on_{self._pending[1][0][0]}"
            else:  # reading the log, or recording the position, failed
                where = f"reading after log position {self.position}"
            log.error(
                "callbacks %s: delivery failed at %s (%s: %s); retrying it",
                self.name,
                where,
                type(error).__name__,
                error,
                exc_info=error,
            )
            return None
        self.last_error = None
        return count

    def _wait_after(
        self, count: int | None, failures: int, poll_interval: float, max_backoff: float
    ) -> tuple[float, int]:
        """How long to wait after a poll (none after a full batch), and the failures in a
        row so far."""
        if count is None:
            return min(poll_interval * 2**failures, max_backoff), failures + 1
        return (poll_interval if count == 0 else 0.0), 0

    def run_forever(
        self, stop: threading.Event, poll_interval: float = 0.1, max_backoff: float = 30.0
    ) -> None:
        """Deliver until `stop` is set (call it on a thread of its own). A handler that
        raises is logged and retried, backing off, until it goes through (module doc)."""
        failures = 0
        try:
            while not stop.is_set():
                count = self._poll_logged()
                wait, failures = self._wait_after(count, failures, poll_interval, max_backoff)
                if wait:
                    stop.wait(wait)
        finally:
            if self._private_loop is not None:
                self._private_loop.close()
                self._private_loop = None

    def start(
        self, poll_interval: float = 0.1, max_backoff: float = 30.0
    ) -> tuple[threading.Thread, threading.Event]:
        """Run on a daemon thread; set the returned event to stop it."""
        stop = threading.Event()
        thread = threading.Thread(
            target=self.run_forever,
            args=(stop, poll_interval, max_backoff),
            name="ledger-callbacks",
            daemon=True,
        )
        thread.start()
        return thread, stop

    async def run_async(
        self, stop: asyncio.Event, poll_interval: float = 0.1, max_backoff: float = 30.0
    ) -> None:
        """Deliver from an asyncio program: reads happen in a worker thread, coroutine
        handlers run on this loop. A handler that raises is logged and retried, backing
        off, until it goes through (module doc)."""
        self._loop = asyncio.get_running_loop()
        failures = 0
        while not stop.is_set():
            count = await asyncio.to_thread(self._poll_logged)
            wait, failures = self._wait_after(count, failures, poll_interval, max_backoff)
            if wait:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
