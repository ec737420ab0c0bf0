"""Group commit: concurrent commands share one transaction, and each still waits for it.

With one writer this is a plain call. With several threads, the first to arrive writes
(the leader); whoever arrives while it writes queues up, and the next leader writes all of
them in one transaction (one table lock, one insert of every event, one commit, one fsync).
Every caller returns only after the transaction holding its events has committed, so a
command is still durable when it returns; log order is still commit order, because the
batch goes through the same insert and table lock as a single command.

If the batch is refused because one command's events conflict with the log (another writer
saved that order's version first), each command of the batch is written again on its own,
so only the conflicting one sees the conflict. Any other failure (a lost connection) fails
every command of the batch: none of them was acknowledged, and each caller gets the error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from eventsourcing.persistence import IntegrityError

E = TypeVar("E")
R = TypeVar("R")


@dataclass
class _Slot(Generic[E, R]):
    events: Sequence[E]
    done: bool = False
    result: list[R] = field(default_factory=list)
    error: BaseException | None = None


class GroupCommitter(Generic[E, R]):
    """Writes batches of events through `write` (one transaction per call), one batch at
    a time; `write` returns one result per event, in order."""

    def __init__(self, write: Callable[[Sequence[E]], Sequence[R]]) -> None:
        self._write = write
        self._condition = threading.Condition()
        self._queue: list[_Slot[E, R]] = []
        self._writing = False
        #: How many transactions carried how many commands (for tests and the bench).
        self.transactions = 0
        self.commands = 0

    def put(self, events: Sequence[E]) -> list[R]:
        slot: _Slot[E, R] = _Slot(events)
        with self._condition:
            self._queue.append(slot)
            while not slot.done and self._writing:
                self._condition.wait()
            if slot.done:
                return self._outcome(slot)
            self._writing = True
            batch, self._queue = self._queue, []
        try:
            self._write_batch(batch)
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()
        return self._outcome(slot)

    @staticmethod
    def _outcome(slot: _Slot[E, R]) -> list[R]:
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _write_batch(self, batch: list[_Slot[E, R]]) -> None:
        try:
            if len(batch) == 1:
                self._write_alone(batch[0])
                return
            everything = [event for slot in batch for event in slot.events]
            try:
                results = list(self._write(everything))
            except IntegrityError:
                for slot in batch:  # find the one that conflicts; write the others
                    self._write_alone(slot)
                return
            self.transactions += 1
            self.commands += len(batch)
            start = 0
            for slot in batch:
                slot.result = results[start : start + len(slot.events)]
                start += len(slot.events)
        except BaseException as error:  # handed to every caller of the batch
            for slot in batch:
                if slot.error is None and not slot.result:
                    slot.error = error
        finally:
            for slot in batch:
                slot.done = True

    def _write_alone(self, slot: _Slot[E, R]) -> None:
        try:
            slot.result = list(self._write(slot.events))
            self.transactions += 1
            self.commands += 1
        except BaseException as error:  # the caller re-raises it
            slot.error = error
