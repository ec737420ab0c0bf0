"""Projections as they stood at a past instant, folded from the log.

"As of T" means: every event the ledger had recorded by T (record time at or before T),
in log order. The same projection classes fold them, into memory: nothing is stored.
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
    """Every record of an event recorded at or before `instant`, in log order."""
    _check(instant)
    after = 0
    while True:
        batch = records_of(source, after, batch_size)
        if not batch:
            return
        for record in batch:
            if datetime.fromisoformat(record.state["timestamp"]["_data_"]) <= instant:
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
