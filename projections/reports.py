"""Execution reports: one row per order, with its fills beside it.

Quantities, average fill price, status (through the domain's own transition table, so the
report cannot disagree with the order), submitted / first-fill / completed times, charges,
and slippage against the reference price: in currency and basis points, signed so that
worse is positive (paying more on a buy, receiving less on a sell).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import ClassVar
from uuid import UUID

from ledger.domain.order import Order
from ledger.domain.status import EventKind, OrderStatus, next_status
from ledger.domain.values import Side
from projections.base import ZERO, Projection, Table, View, divide, money


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
        """Currency lost to the reference price over the filled quantity (worse > 0)."""
        if self.reference_price is None or not self.filled_quantity:
            return None
        sign = Side(self.side).sign
        return money(sign * (self.filled_value - self.reference_price * self.filled_quantity))

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


def _display_status(lifecycle: OrderStatus, pending: str) -> str:
    if lifecycle.is_terminal:
        return lifecycle.value
    if pending == EventKind.CANCEL_REQUESTED.value:
        return OrderStatus.PENDING_CANCEL.value
    if pending == EventKind.MODIFY_REQUESTED.value:
        return OrderStatus.PENDING_MODIFY.value
    return lifecycle.value


def evolve(report: ExecutionReport, event: Order.Event) -> ExecutionReport:
    """The report after one more event of its order. Pure; mirrors the aggregate."""
    lifecycle = OrderStatus(report.lifecycle)
    pending = report.pending
    changes: dict[str, object] = {}
    filled, quantity = report.filled_quantity, report.quantity
    match event:
        case Order.Accepted():
            changes["broker_order_id"] = event.broker_order_id
        case Order.Rejected() | Order.Expired():
            changes["reason"] = event.reason
            pending = ""
        case Order.Cancelled():
            changes["reason"] = event.reason or ""
            pending = ""
        case Order.ModifyRequested():
            pending = EventKind.MODIFY_REQUESTED.value
        case Order.CancelRequested():
            pending = EventKind.CANCEL_REQUESTED.value
        case Order.ModifyRejected() | Order.CancelRejected():
            pending = ""
        case Order.Modified():
            if event.changes.quantity is not None:
                quantity = event.changes.quantity
                changes["quantity"] = quantity
            if event.changes.order_type is not None:
                changes["order_type"] = event.changes.order_type.value
            if pending == EventKind.MODIFY_REQUESTED.value:
                pending = ""
        case Order.Filled():
            filled += event.quantity
            changes.update(
                filled_quantity=filled,
                filled_value=money(report.filled_value + event.price * event.quantity),
                first_fill_at=report.first_fill_at or event.timestamp,
                last_fill_at=event.timestamp,
                fill_count=report.fill_count + 1,
                charges=money(report.charges + (event.charges or ZERO)),
            )
    new_lifecycle = next_status(lifecycle, event.KIND, filled_quantity=filled, quantity=quantity)
    if new_lifecycle.is_terminal:
        pending = ""
        if new_lifecycle is not lifecycle:
            changes["completed_at"] = event.timestamp
    return replace(
        report,
        lifecycle=new_lifecycle.value,
        pending=pending,
        status=_display_status(new_lifecycle, pending),
        **changes,  # type: ignore[arg-type]
    )


def submitted_report(event: Order.Submitted) -> ExecutionReport:
    return ExecutionReport(
        order_id=str(event.originator_id),
        account=event.account,
        client_order_id=event.client_order_id,
        strategy=event.strategy or "",
        exchange=event.instrument.exchange.value,
        tradingsymbol=event.instrument.tradingsymbol,
        side=event.side.value,
        product=event.product.value,
        order_type=event.order_type.value,
        quantity=event.quantity,
        filled_quantity=0,
        filled_value=ZERO,
        status=OrderStatus.SUBMITTED.value,
        lifecycle=OrderStatus.SUBMITTED.value,
        pending="",
        submitted_at=event.timestamp,
        first_fill_at=None,
        last_fill_at=None,
        completed_at=None,
        fill_count=0,
        charges=ZERO,
        reference_price=event.reference_price,
        broker_order_id="",
        reason="",
    )


class ExecutionReportsProjection(Projection):
    name: ClassVar[str] = "reports"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table, ...]] = (
        Table("execution_reports", ExecutionReport, ("order_id",)),
        Table("execution_fills", ReportFill, ("order_id", "trade_id")),
    )
    handles: ClassVar[tuple[type[Order.Event], ...]] = (Order.Event,)

    def apply(self, view: View, event: Order.Event, position: int) -> None:
        key = (str(event.originator_id),)
        if isinstance(event, Order.Submitted):
            view.put("execution_reports", key, submitted_report(event))
            return
        report = view.get("execution_reports", key)
        if report is None:  # pragma: no cover - the log always starts an order with Submitted
            raise LookupError(f"event for unknown order {event.originator_id} at {position}")
        view.put("execution_reports", key, evolve(report, event))
        if isinstance(event, Order.Filled):
            view.put(
                "execution_fills",
                (key[0], event.trade_id),
                ReportFill(
                    order_id=key[0],
                    trade_id=event.trade_id,
                    quantity=event.quantity,
                    price=event.price,
                    exchange_timestamp=event.exchange_timestamp,
                    recorded_at=event.timestamp,
                    source=event.source.value,
                    charges=event.charges,
                    log_position=position,
                ),
            )


def report_for(view: View, order_id: UUID | str) -> ExecutionReport | None:
    return view.get("execution_reports", (str(order_id),))  # type: ignore[no-any-return]


def fills_for(view: View, order_id: UUID | str) -> list[ReportFill]:
    wanted = str(order_id)
    return sorted(
        (f for f in view.rows("execution_fills") if f.order_id == wanted),
        key=lambda f: f.log_position,
    )
