"""Projections as they stood at a past instant, folded from the log.

"As of T" means: every event the ledger had recorded by T (record time at or before T),
in log order. The same projection classes fold them, into memory: nothing is stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from ledger.domain.order import Order
from projections.base import Projection, View
from projections.runner import EventSource


def events_until(
    source: EventSource, instant: datetime, batch_size: int = 5000
) -> Iterator[tuple[int, Order.Event]]:
    """Every event recorded at or before `instant`, in log order."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError("as-of instant must be timezone-aware")
    after = 0
    while True:
        batch = source.read(after, batch_size)
        if not batch:
            return
        for position, event in batch:
            if event.timestamp <= instant:
                yield position, event
        after = batch[-1][0]


def as_of(
    source: EventSource, projections: Sequence[Projection], instant: datetime
) -> dict[str, View]:
    """Each projection's view as it stood at `instant`."""
    return fold_all(events_until(source, instant), projections)


def fold_all(
    events: Iterable[tuple[int, Order.Event]], projections: Sequence[Projection]
) -> dict[str, View]:
    """Fold one stream of events into several projections at once."""
    views = {p.name: View() for p in projections}
    for position, event in events:
        for projection in projections:
            if isinstance(event, projection.handles):
                projection.apply(views[projection.name], event, position)
    return views
