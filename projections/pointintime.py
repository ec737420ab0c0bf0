"""Projections as they stood at a past instant, folded from the log.

"As of T" means, for each order, its events up to its first event recorded after T (record
time later than T), in log order: exactly what `OrderLedger.get_order(as_of=T)` takes. The
same projection classes fold them, into memory: nothing is stored.

Per order, not event by event: writers on several hosts stamp events with their own
clocks, so a later event of an order can carry an earlier time than the one before it.
Taking each event by its own time let an order's fill in while its submission was out (the
folds then raised LookupError) and contradicted `get_order(as_of=T)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from ledger.domain.order import Order
from projections.base import Projection, Record, View, record_of
from projections.runner import EventSource, records_of


def records_until(
    source: EventSource, instant: datetime, batch_size: int = 5000
) -> Iterator[Record]:
    """Every record of each order up to that order's first event recorded after
    `instant`, in log order (module doc)."""
    _check(instant)
    ended: set[str] = set()  # the orders whose first event after `instant` has been seen
    after = 0
    while True:
        batch = records_of(source, after, batch_size)
        if not batch:
            return
        for record in batch:
            if record.order_id in ended:
                continue
            if datetime.fromisoformat(record.state["timestamp"]["_data_"]) > instant:
                ended.add(record.order_id)
                continue
            yield record
        after = batch[-1].position


def _check(instant: datetime) -> None:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError("as-of instant must be timezone-aware")


def as_of(
    source: EventSource, projections: Sequence[Projection], instant: datetime
) -> dict[str, View]:
    """Each projection's view as it stood at `instant`."""
    return fold_records_all(records_until(source, instant), projections)


def fold_all(
    events: Iterable[tuple[int, Order.Event]], projections: Sequence[Projection]
) -> dict[str, View]:
    """Fold one stream of events into several projections at once."""
    return fold_records_all((record_of(p, e) for p, e in events), projections)


def fold_records_all(
    records: Iterable[Record], projections: Sequence[Projection]
) -> dict[str, View]:
    """Fold one stream of records into several projections at once, in memory."""
    views = {p.name: View() for p in projections}
    workings = [(p.kinds, p.apply_record, p._working_of(views[p.name])) for p in projections]
    for record in records:
        for kinds, apply, working in workings:
            if record.kind in kinds:
                apply(working, record)
    for projection in projections:
        view = views[projection.name]
        assert view.working is not None
        projection._publish(view, view.working)
    return views
