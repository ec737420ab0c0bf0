"""Execution summary and statistics: the counters a trading monitor expects.

The fold keeps one small row per order (its status, quantities and times), the net
quantity per position, and running totals; the counters are read from those rows, so each
has one definition:

* total_submitted / total_orders: orders the ledger recorded (one `Submitted` each);
* total_completed, total_cancelled, total_rejected, total_expired: orders ended so;
* total_failed: orders refused before they reached the broker (rejected with source
  `ledger`);
* total_fills, total_volume (units traded), total_turnover (value traded),
  total_commission (charges recorded on fills);
* pending_count: orders still open; queue_size: open orders the broker has not yet
  acknowledged (the placement outbox); monitored_positions: positions that are not flat;
* fill_rate: filled quantity / ordered quantity over ended orders;
* average_time_to_fill: submission to completion, over completed orders (record times).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import ClassVar

from ledger.domain.order import Order
from ledger.domain.status import OrderStatus, next_status
from ledger.domain.values import Source
from projections.base import ZERO, Projection, Table, View, divide, money


@dataclass(frozen=True, slots=True)
class OrderTally:
    order_id: str
    lifecycle: str
    quantity: int
    filled_quantity: int
    acknowledged: bool
    failed: bool
    submitted_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class NetPosition:
    account: str
    exchange: str
    tradingsymbol: str
    product: str
    net_quantity: int


@dataclass(frozen=True, slots=True)
class Totals:
    key: str
    fills: int
    volume: int
    turnover: Decimal
    commission: Decimal


_TOTALS_KEY = ("all",)


class StatisticsProjection(Projection):
    name: ClassVar[str] = "statistics"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table, ...]] = (
        Table("stats_orders", OrderTally, ("order_id",)),
        Table("stats_positions", NetPosition, ("account", "exchange", "tradingsymbol", "product")),
        Table("stats_totals", Totals, ("key",)),
    )
    handles: ClassVar[tuple[type[Order.Event], ...]] = (Order.Event,)

    def apply(self, view: View, event: Order.Event, position: int) -> None:
        key = (str(event.originator_id),)
        if isinstance(event, Order.Submitted):
            view.put(
                "stats_orders",
                key,
                OrderTally(
                    key[0],
                    OrderStatus.SUBMITTED.value,
                    event.quantity,
                    0,
                    False,
                    False,
                    event.timestamp,
                    None,
                ),
            )
            return
        tally: OrderTally = view.get("stats_orders", key)
        filled, quantity = tally.filled_quantity, tally.quantity
        acknowledged, failed = tally.acknowledged, tally.failed
        if isinstance(event, Order.Filled):
            filled += event.quantity
            self._count_fill(view, event)
        elif isinstance(event, Order.Modified) and event.changes.quantity is not None:
            quantity = event.changes.quantity
        elif isinstance(event, Order.Rejected):
            failed = event.source is Source.LEDGER
        # Anything the broker or exchange said (not our own requests) shows it has the order.
        if not isinstance(event, Order.CancelRequested | Order.ModifyRequested):
            acknowledged = True
        before = OrderStatus(tally.lifecycle)
        after = next_status(before, event.KIND, filled_quantity=filled, quantity=quantity)
        completed_at = tally.completed_at
        if after.is_terminal and after is not before:
            completed_at = event.timestamp
        view.put(
            "stats_orders",
            key,
            replace(
                tally,
                lifecycle=after.value,
                quantity=quantity,
                filled_quantity=filled,
                acknowledged=acknowledged,
                failed=failed,
                completed_at=completed_at,
            ),
        )

    @staticmethod
    def _count_fill(view: View, event: Order.Filled) -> None:
        totals: Totals = view.get("stats_totals", _TOTALS_KEY) or Totals("all", 0, 0, ZERO, ZERO)
        view.put(
            "stats_totals",
            _TOTALS_KEY,
            Totals(
                "all",
                fills=totals.fills + 1,
                volume=totals.volume + event.quantity,
                turnover=money(totals.turnover + event.price * event.quantity),
                commission=money(totals.commission + (event.charges or ZERO)),
            ),
        )
        pkey = (
            event.account,
            event.instrument.exchange.value,
            event.instrument.tradingsymbol,
            event.product.value,
        )
        current: NetPosition | None = view.get("stats_positions", pkey)
        net = (current.net_quantity if current else 0) + event.quantity * event.side.sign
        view.put("stats_positions", pkey, NetPosition(*pkey, net_quantity=net))


@dataclass(frozen=True, slots=True)
class ExecutionStatistics:
    total_orders: int
    total_submitted: int
    total_completed: int
    total_cancelled: int
    total_rejected: int
    total_expired: int
    total_failed: int
    total_fills: int
    total_volume: int
    total_turnover: Decimal
    total_commission: Decimal
    pending_count: int
    queue_size: int
    monitored_positions: int
    fill_rate: Decimal | None
    average_time_to_fill: timedelta | None
    counts_by_status: dict[str, int]


def statistics(view: View) -> ExecutionStatistics:
    """The counters, read from the statistics projection's rows."""
    tallies: list[OrderTally] = list(view.rows("stats_orders"))
    by_status = Counter(t.lifecycle for t in tallies)
    totals: Totals = view.get("stats_totals", _TOTALS_KEY) or Totals("all", 0, 0, ZERO, ZERO)
    open_orders = [t for t in tallies if not OrderStatus(t.lifecycle).is_terminal]
    ended = [t for t in tallies if OrderStatus(t.lifecycle).is_terminal]
    ordered = sum(t.quantity for t in ended)
    completed = [t for t in tallies if t.lifecycle == OrderStatus.FILLED.value and t.completed_at]
    waits = [t.completed_at - t.submitted_at for t in completed if t.completed_at is not None]
    return ExecutionStatistics(
        total_orders=len(tallies),
        total_submitted=len(tallies),
        total_completed=by_status[OrderStatus.FILLED.value],
        total_cancelled=by_status[OrderStatus.CANCELLED.value],
        total_rejected=by_status[OrderStatus.REJECTED.value],
        total_expired=by_status[OrderStatus.EXPIRED.value],
        total_failed=sum(1 for t in tallies if t.failed),
        total_fills=totals.fills,
        total_volume=totals.volume,
        total_turnover=totals.turnover,
        total_commission=totals.commission,
        pending_count=len(open_orders),
        queue_size=sum(1 for t in open_orders if not t.acknowledged),
        monitored_positions=sum(1 for p in view.rows("stats_positions") if p.net_quantity != 0),
        fill_rate=divide(Decimal(sum(t.filled_quantity for t in ended)), ordered)
        if ordered
        else None,
        average_time_to_fill=sum(waits, timedelta()) / len(waits) if waits else None,
        counts_by_status=dict(sorted(by_status.items())),
    )
