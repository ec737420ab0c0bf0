"""Keep projections up to date from the log: in batches, exactly once, resumable.

The runner reads the log after the lowest position its projections have reached, folds a
batch of events into each projection that has not seen them, and commits the changed rows
of every projection together with their new positions in one transaction. A crash at any
point loses at most the batch in flight, which the next run folds again from the committed
position: nothing is skipped and nothing is counted twice.

Positions are notification ids. They can have gaps (a failed insert burns a sequence
value); the runner never waits for a gap to fill, because on PostgreSQL the table lock the
writers take makes insert order equal commit order, and on SQLite there is one writer at a
time: an id below the last one read that is not there now will never appear.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent

from ledger.application import OrderLedger
from ledger.domain.order import Order
from projections.base import Projection, View
from projections.store import ProjectionConflict, ProjectionStore

DEFAULT_BATCH_SIZE = 2000


class EventSource(Protocol):
    """Where events come from: the live log, or an export file."""

    def read(self, after: int, limit: int) -> list[tuple[int, Order.Event]]:
        """Up to `limit` events with position above `after`, in log order."""
        ...


@dataclass
class LedgerLog:
    """The live log of an `OrderLedger` (SQLite or PostgreSQL)."""

    ledger: OrderLedger

    def read(self, after: int, limit: int) -> list[tuple[int, Order.Event]]:
        notifications = self.ledger.recorder.select_notifications(
            start=after, limit=limit, inclusive_of_start=False
        )
        return decode(self.ledger.mapper, ((n.id, n) for n in notifications))

    def last_position(self) -> int:
        return self.ledger.recorder.max_notification_id() or 0


def decode(
    mapper: Mapper[UUID], records: Iterable[tuple[int, StoredEvent]]
) -> list[tuple[int, Order.Event]]:
    """(position, event) pairs for stored records; anything that is not an order event
    (another application sharing the table) is skipped."""
    events: list[tuple[int, Order.Event]] = []
    for position, stored in records:
        event = mapper.to_domain_event(stored)
        if isinstance(event, Order.Event):
            events.append((position, event))
    return events


class ProjectionRunner:
    """Folds the log into projections held in `store`."""

    def __init__(
        self,
        source: EventSource,
        store: ProjectionStore,
        projections: Sequence[Projection],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.source = source
        self.store = store
        self.projections = list(projections)
        self.batch_size = batch_size
        self.on_batch = on_batch
        store.ensure(self.projections)
        self._load()

    def _load(self) -> None:
        self.views: dict[str, View] = {p.name: self.store.load_view(p) for p in self.projections}
        self.positions: dict[str, int] = {p.name: self.store.position(p) for p in self.projections}

    def view(self, name: str) -> View:
        return self.views[name]

    @property
    def position(self) -> int:
        """The lowest position any projection has reached."""
        return min(self.positions.values(), default=0)

    def run_once(self) -> int:
        """Fold and commit one batch. Returns how many log records it covered."""
        after = self.position
        batch = self.source.read(after, self.batch_size)
        if not batch:
            return 0
        last = batch[-1][0]
        behind = [p for p in self.projections if self.positions[p.name] < last]
        try:
            for projection in behind:
                view = self.views[projection.name]
                seen = self.positions[projection.name]
                handles = projection.handles
                for position, event in batch:
                    if position > seen and isinstance(event, handles):
                        projection.apply(view, event, position)
            self.store.commit(
                [(p, self.views[p.name].take_dirty()) for p in behind],
                last,
                expected={p.name: self.positions[p.name] for p in behind},
            )
        except ProjectionConflict:
            self._load()  # another runner got there first: carry on from where it is
            return len(batch)
        except BaseException:
            self._load()  # the in-memory views may hold half a batch: start again from the store
            raise
        for projection in behind:
            self.positions[projection.name] = last
        if self.on_batch is not None:
            self.on_batch(len(batch), last)
        return len(batch)

    def catch_up(self) -> int:
        """Run batches until the log has nothing new. Returns the records covered."""
        total = 0
        while True:
            count = self.run_once()
            if count == 0:
                return total
            total += count

    def run_forever(self, stop: threading.Event, poll_interval: float = 0.2) -> None:
        """Follow the log until `stop` is set."""
        while not stop.is_set():
            if self.run_once() == 0:
                stop.wait(poll_interval)


def iter_in_batches(
    events: Iterator[tuple[int, Order.Event]], size: int
) -> Iterator[list[tuple[int, Order.Event]]]:
    batch: list[tuple[int, Order.Event]] = []
    for item in events:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
