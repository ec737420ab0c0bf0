"""Verify: replay every order and every projection from the log and compare.

* Each order's events must run from version 1 without a gap, decode, and fold through the
  aggregate without error; the folded order must keep its invariants (filled quantity
  within the order quantity and equal to the sum of distinct fills).
* Each stored projection must equal the fold of the log up to the position it records.

Every difference is listed; an empty list means the ledger is consistent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from ledger.application import OrderLedger
from ledger.domain.order import Order
from projections.base import Projection, Record
from projections.runner import decode, stored_records
from projections.store import ProjectionStore

_PAGE = 5000


@dataclass
class VerifyReport:
    orders: int = 0
    events: int = 0
    projections: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    ledger: OrderLedger,
    store: ProjectionStore,
    projections: Sequence[Projection],
    *,
    on_events: Callable[[int], None] | None = None,
    max_rows_listed: int = 20,
) -> VerifyReport:
    report = VerifyReport()
    events: list[tuple[int, Order.Event]] = []
    records: list[Record] = []  # what the projections fold: the stored states, parsed
    after = 0
    while True:
        notifications = ledger.recorder.select_notifications(
            start=after, limit=_PAGE, inclusive_of_start=False
        )
        if not notifications:
            break
        for notification in notifications:
            try:
                decoded = decode(ledger.mapper, [(notification.id, notification)])
                stored = stored_records(
                    [
                        (
                            notification.id,
                            str(notification.originator_id),
                            notification.originator_version,
                            notification.topic,
                            notification.state,
                        )
                    ]
                )
            except Exception as error:  # a record that does not decode is itself a finding
                report.problems.append(f"log position {notification.id}: cannot decode: {error}")
                continue
            events.extend(decoded)
            records.extend(stored)
        after = notifications[-1].id
        if on_events is not None:
            on_events(len(notifications))
    report.events = len(events)
    _verify_orders(events, report)
    _verify_snapshots(ledger, events, report)
    for projection in projections:
        _verify_projection(projection, store, records, report, max_rows_listed)
    return report


def _verify_orders(events: list[tuple[int, Order.Event]], report: VerifyReport) -> None:
    by_order: dict[UUID, list[tuple[int, Order.Event]]] = defaultdict(list)
    for position, event in events:
        by_order[event.originator_id].append((position, event))
    report.orders = len(by_order)
    for order_id, items in by_order.items():
        versions = [event.originator_version for _, event in items]
        if versions != list(range(1, len(versions) + 1)):
            report.problems.append(
                f"order {order_id}: versions in the log are {versions[:12]}, not 1..{len(versions)}"
            )
            continue
        order: Any = None
        try:
            for _, event in items:
                order = event.mutate(order)
        except Exception as error:
            report.problems.append(
                f"order {order_id}: replay fails at version {event.originator_version}: {error}"
            )
            continue
        assert isinstance(order, Order)
        if order.filled_quantity > order.quantity:
            report.problems.append(
                f"order {order_id}: filled {order.filled_quantity} of {order.quantity}"
            )
        if order.filled_quantity != sum(f.quantity for f in order.fills):
            report.problems.append(f"order {order_id}: filled quantity differs from its fills")
        if len(order.trade_ids) != len(order.fills):
            report.problems.append(f"order {order_id}: a trade id is counted twice")


def _verify_snapshots(
    ledger: OrderLedger, events: list[tuple[int, Order.Event]], report: VerifyReport
) -> None:
    """Each stored snapshot of an order must equal the fold of its events to that version."""
    if ledger.snapshots is None:
        return
    by_order: dict[UUID, list[Order.Event]] = defaultdict(list)
    for _, event in events:
        by_order[event.originator_id].append(event)
    for order_id, order_events in by_order.items():
        if len(order_events) < 2:
            continue
        for snapshot in ledger.snapshots.get(order_id):
            version = snapshot.originator_version
            folded: Any = None
            for event in order_events[:version]:
                folded = event.mutate(folded)
            try:
                restored: Any = snapshot.mutate(None)  # type: ignore[attr-defined]
            except Exception as error:
                report.problems.append(
                    f"order {order_id}: snapshot at version {version} does not load: {error}"
                )
                continue
            if _state(restored) != _state(folded):
                report.problems.append(
                    f"order {order_id}: snapshot at version {version} differs from its events"
                )


def _state(order: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(order).items() if k != "_pending_events"}


def _verify_projection(
    projection: Projection,
    store: ProjectionStore,
    records: list[Record],
    report: VerifyReport,
    max_rows_listed: int,
) -> None:
    store.ensure([projection])
    position = store.position(projection)
    expected = projection.fold_records(r for r in records if r.position <= position).contents()
    stored = store.load_view(projection).contents()
    report.projections += 1
    listed = 0
    for table in sorted(set(expected) | set(stored)):
        want, have = expected.get(table, {}), stored.get(table, {})
        for key in sorted(set(want) | set(have), key=str):
            if want.get(key) == have.get(key):
                continue
            listed += 1
            if listed <= max_rows_listed:
                what = (
                    "missing" if key not in have else "unexpected" if key not in want else "differs"
                )
                report.problems.append(
                    f"projection {projection.name} v{projection.version}: {table} {key}: {what}"
                )
    if listed > max_rows_listed:
        report.problems.append(
            f"projection {projection.name}: {listed - max_rows_listed} more rows differ"
        )
