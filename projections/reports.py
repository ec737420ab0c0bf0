"""Execution reports: one row per order, with its fills beside it.

Quantities, average fill price, status (through the domain's own transition table, so the
report cannot disagree with the order), submitted / first-fill / completed times, charges,
and slippage against the reference price: in currency and basis points, signed so that
worse is positive (paying more on a buy, receiving less on a sell).

Where Kite's quantity counts contracts (CDS, BCD, MCX), a price difference is worth the
contract's multiplier per unit of quantity, so slippage in rupees is scaled by the order's
`multiplier` (from its `Submitted`; 1 for orders recorded before events carried it).
Prices and basis points are per unit and need no scaling. Version 2 added the multiplier:
stores folded by version 1 are folded again into version 2's tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Final
from uuid import UUID

from ledger.domain.order import Order
from ledger.domain.status import EventKind, OrderStatus
from ledger.domain.values import Side
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
    money,
    next_lifecycle,
)


@dataclass(frozen=True, slots=True)
class ExecutionReport:
    order_id: str
    account: str
    client_order_id: str
    strategy: str
    exchange: str
    tradingsymbol: str
    side: str
    product: str
    order_type: str
    quantity: int
    filled_quantity: int
    filled_value: Decimal
    status: str
    lifecycle: str
    pending: str
    submitted_at: datetime
    first_fill_at: datetime | None
    last_fill_at: datetime | None
    completed_at: datetime | None
    fill_count: int
    charges: Decimal
    reference_price: Decimal | None
    broker_order_id: str
    reason: str
    multiplier: int

    @property
    def remaining_quantity(self) -> int:
        if OrderStatus(self.lifecycle).is_terminal:
            return 0
        return self.quantity - self.filled_quantity

    @property
    def average_price(self) -> Decimal | None:
        return divide(self.filled_value, self.filled_quantity) if self.filled_quantity else None

    @property
    def slippage(self) -> Decimal | None:
        """Rupees lost to the reference price over the filled quantity (worse > 0): the
        per-unit difference times the quantity times the contract multiplier (a GOLDM
        contract 10 rupees over is 100 rupees lost, not 10)."""
        if self.reference_price is None or not self.filled_quantity:
            return None
        sign = Side(self.side).sign
        per_units = self.filled_value - self.reference_price * self.filled_quantity
        return money(sign * per_units * self.multiplier)

    @property
    def slippage_bps(self) -> Decimal | None:
        """Slippage in basis points of the reference price (worse > 0)."""
        average = self.average_price
        if self.reference_price is None or average is None:
            return None
        sign = Side(self.side).sign
        return divide(sign * (average - self.reference_price) * 10000, self.reference_price)


@dataclass(frozen=True, slots=True)
class ReportFill:
    order_id: str
    trade_id: str
    quantity: int
    price: Decimal
    exchange_timestamp: datetime | None
    recorded_at: datetime
    source: str
    charges: Decimal | None
    log_position: int


_STATUS: Final = {s.value: s for s in OrderStatus}
_MODIFY_REQUESTED: Final = EventKind.MODIFY_REQUESTED.value
_CANCEL_REQUESTED: Final = EventKind.CANCEL_REQUESTED.value


def _display_status(lifecycle: OrderStatus, pending: str) -> str:
    if lifecycle.is_terminal:
        return lifecycle.value
    if pending == _CANCEL_REQUESTED:
        return OrderStatus.PENDING_CANCEL.value
    if pending == _MODIFY_REQUESTED:
        return OrderStatus.PENDING_MODIFY.value
    return lifecycle.value


def _value(wrapped: Any) -> Any:
    return None if wrapped is None else wrapped["_data_"]


def evolve(report: Any, record: Record) -> None:
    """One more record of its order, applied to a report cell in place; mirrors the
    aggregate (its status comes from the domain's own transition table)."""
    state = record.state
    kind = record.kind
    pending = report.pending
    if kind == "Filled":
        fill = fill_of(record)
        report.filled_quantity += fill.quantity
        report.filled_value += fill.value
        timestamp = state["timestamp"]["_data_"]
        if not report.first_fill_at:
            report.first_fill_at = timestamp
        report.last_fill_at = timestamp
        report.fill_count += 1
        if fill.charges is not None:
            report.charges += fill.charges
    elif kind == "Accepted":
        report.broker_order_id = state["broker_order_id"]
    elif kind == "Rejected" or kind == "Expired":
        report.reason = state["reason"]
        pending = ""
    elif kind == "Cancelled":
        report.reason = state["reason"] or ""
        pending = ""
    elif kind == "ModifyRequested":
        pending = _MODIFY_REQUESTED
    elif kind == "CancelRequested":
        pending = _CANCEL_REQUESTED
    elif kind == "ModifyRejected" or kind == "CancelRejected":
        pending = ""
    elif kind == "Modified":
        changes = state["changes"]["_data_"]
        if changes["quantity"] is not None:
            report.quantity = changes["quantity"]
        if changes["order_type"] is not None:
            report.order_type = changes["order_type"]["_data_"]
        if pending == _MODIFY_REQUESTED:
            pending = ""
    before = report.lifecycle
    after = next_lifecycle(before, kind, report.filled_quantity, report.quantity)
    if after in TERMINAL:
        pending = ""
        if after != before:
            report.completed_at = state["timestamp"]["_data_"]
    report.lifecycle = after
    report.pending = pending
    report.status = _display_status(_STATUS[after], pending)


def submitted_report(record: Record) -> Any:
    """The report cell a `Submitted` record starts."""
    state = record.state
    instrument = state["instrument"]["_data_"]
    return _REPORTS.cell(
        record.order_id,
        state["account"],
        state["client_order_id"],
        state["strategy"] or "",
        instrument["exchange"]["_data_"],
        instrument["tradingsymbol"],
        state["side"]["_data_"],
        state["product"]["_data_"],
        state["order_type"]["_data_"],
        state["quantity"],
        0,
        ZERO,
        _SUBMITTED,
        _SUBMITTED,
        "",
        state["timestamp"]["_data_"],
        None,
        None,
        None,
        0,
        ZERO,
        _decimal(state["reference_price"]),
        "",
        "",
        # Absent from orders submitted before v3 of `Submitted`, whose upcaster makes it 1.
        state.get("multiplier", 1),
    )


def _decimal(wrapped: Any) -> Decimal | None:
    return None if wrapped is None else Decimal(wrapped["_data_"])


_SUBMITTED: Final = OrderStatus.SUBMITTED.value


class ExecutionReportsProjection(Projection):
    name: ClassVar[str] = "reports"
    #: v2: `multiplier` on each report, so slippage is in rupees on CDS, BCD and MCX.
    version: ClassVar[int] = 2
    tables: ClassVar[tuple[Table, ...]] = (
        Table("execution_reports", ExecutionReport, ("order_id",), "per_order"),
        Table("execution_fills", ReportFill, ("order_id", "trade_id"), "append"),
    )
    handles: ClassVar[tuple[type[Order.Event], ...]] = (Order.Event,)

    def apply_record(self, working: Working, record: Record) -> None:
        key = (record.order_id,)
        if record.kind == "Submitted":
            cell = working.cells["execution_reports"][key] = submitted_report(record)
            working.changed["execution_reports"][key] = cell
            return
        report = working.cells["execution_reports"].get(key) or working.lookup(
            "execution_reports", key
        )
        if report is None:  # pragma: no cover - the log always starts an order with Submitted
            raise LookupError(f"event for unknown order {record.order_id} at {record.position}")
        evolve(report, record)
        working.changed["execution_reports"][key] = report
        if record.kind == "Filled":
            state = record.state
            fill = fill_of(record)
            trade_id = state["trade_id"]
            working.changed["execution_fills"][(key[0], trade_id)] = _FILLS.cell(
                key[0],
                trade_id,
                fill.quantity,
                fill.price,
                _value(state["exchange_timestamp"]),
                state["timestamp"]["_data_"],
                state["source"]["_data_"],
                fill.charges,
                record.position,
            )


_REPORTS: Final = ExecutionReportsProjection.tables[0]
_FILLS: Final = ExecutionReportsProjection.tables[1]


def report_for(view: View, order_id: UUID | str) -> ExecutionReport | None:
    return view.get("execution_reports", (str(order_id),))  # type: ignore[no-any-return]


def fills_for(view: View, order_id: UUID | str) -> list[ReportFill]:
    wanted = str(order_id)
    return sorted(
        (f for f in view.rows("execution_fills") if f.order_id == wanted),
        key=lambda f: f.log_position,
    )
