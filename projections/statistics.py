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
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import ClassVar, Final

from ledger.domain.order import Order
from ledger.domain.status import OrderStatus
from ledger.domain.values import Source
from projections.base import (
    TERMINAL,
    ZERO,
    Projection,
    Record,
    Table,
    View,
    Working,
    divide,
    fill_of,
    next_lifecycle,
)


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


_SUBMITTED: Final = OrderStatus.SUBMITTED.value
_REQUESTS: Final = frozenset({"CancelRequested", "ModifyRequested"})
_LEDGER: Final = Source.LEDGER.value


class StatisticsProjection(Projection):
    name: ClassVar[str] = "statistics"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table, ...]] = (
        Table("stats_orders", OrderTally, ("order_id",), "per_order"),
        Table("stats_positions", NetPosition, ("account", "exchange", "tradingsymbol", "product")),
        Table("stats_totals", Totals, ("key",)),
    )
    handles: ClassVar[tuple[type[Order.Event], ...]] = (Order.Event,)

    def apply_record(self, working: Working, record: Record) -> None:
        key = (record.order_id,)
        state = record.state
        kind = record.kind
        if kind == "Submitted":
            working.cells["stats_orders"][key] = working.changed["stats_orders"][key] = (
                _TALLIES.cell(
                    key[0],
                    _SUBMITTED,
                    state["quantity"],
                    0,
                    False,
                    False,
                    state["timestamp"]["_data_"],
                    None,
                )
            )
            return
        tally = working.cells["stats_orders"].get(key) or working.lookup("stats_orders", key)
        if tally is None:  # pragma: no cover - the log always starts an order with Submitted
            raise LookupError(f"event for unknown order {record.order_id} at {record.position}")
        if kind == "Filled":
            tally.filled_quantity += fill_of(record).quantity
            self._count_fill(working, record)
        elif kind == "Modified":
            quantity = state["changes"]["_data_"]["quantity"]
            if quantity is not None:
                tally.quantity = quantity
        elif kind == "Rejected":
            tally.failed = state["source"]["_data_"] == _LEDGER
        # Anything the broker or exchange said (not our own requests) shows it has the order.
        if kind not in _REQUESTS:
            tally.acknowledged = True
        before = tally.lifecycle
        after = next_lifecycle(before, kind, tally.filled_quantity, tally.quantity)
        if after != before and after in TERMINAL:
            tally.completed_at = state["timestamp"]["_data_"]
        tally.lifecycle = after
        working.changed["stats_orders"][key] = tally

    @staticmethod
    def _count_fill(working: Working, record: Record) -> None:
        fill = fill_of(record)
        totals = working.cells["stats_totals"].get(_TOTALS_KEY)
        if totals is None:
            totals = working.cells["stats_totals"][_TOTALS_KEY] = _TOTALS.cell(
                "all", 0, 0, ZERO, ZERO
            )
        totals.fills += 1
        totals.volume += fill.quantity
        totals.turnover += fill.value * fill.multiplier
        if fill.charges is not None:
            totals.commission += fill.charges
        working.changed["stats_totals"][_TOTALS_KEY] = totals
        pkey = (fill.account, fill.exchange, fill.tradingsymbol, fill.product)
        current = working.cells["stats_positions"].get(pkey)
        if current is None:
            current = working.cells["stats_positions"][pkey] = _NETS.cell(*pkey, 0)
        current.net_quantity += fill.quantity * fill.sign
        working.changed["stats_positions"][pkey] = current


_TALLIES: Final = StatisticsProjection.tables[0]
_NETS: Final = StatisticsProjection.tables[1]
_TOTALS: Final = StatisticsProjection.tables[2]


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
