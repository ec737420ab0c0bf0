"""The group committer: concurrent callers share one transaction; a conflict stays with the
caller that caused it; any other failure reaches every caller of the batch."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from eventsourcing.persistence import IntegrityError

from ledger.groupcommit import GroupCommitter


class FakeStore:
    """Writes batches; the first write blocks until the test lets it go, so that the other
    callers queue up behind it deterministically."""

    def __init__(self, refuse: set[str] | None = None, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.refuse = refuse or set()
        self.fail = fail

    def write(self, events: Sequence[str]) -> list[str]:
        if not self.batches:
            self.release.wait(5)
        if self.fail and len(events) > 2:  # more than one caller's two events
            raise ConnectionError("server closed the connection")
        if self.refuse & set(events):
            raise IntegrityError("duplicate version")
        self.batches.append(list(events))
        return [f"stored {e}" for e in events]


def run_callers(
    committer: GroupCommitter[str, str], store: FakeStore, names: list[str]
) -> dict[str, object]:
    outcomes: dict[str, object] = {}

    def call(name: str) -> None:
        try:
            outcomes[name] = committer.put([f"{name}.1", f"{name}.2"])
        except Exception as error:
            outcomes[name] = error

    first = threading.Thread(target=call, args=(names[0],))
    first.start()
    while not committer._writing:  # the first caller is now the leader, blocked
        pass
    others = [threading.Thread(target=call, args=(n,)) for n in names[1:]]
    for thread in others:
        thread.start()
    while len(committer._queue) < len(others):
        threading.Event().wait(0.001)
    store.release.set()
    for thread in [first, *others]:
        thread.join(5)
    return outcomes


def test_callers_that_arrive_during_a_write_share_the_next_transaction() -> None:
    store = FakeStore()
    committer: GroupCommitter[str, str] = GroupCommitter(store.write)
    names = [f"c{i}" for i in range(8)]
    outcomes = run_callers(committer, store, names)
    assert len(store.batches) == 2  # the leader alone, then the seven who queued
    assert sorted(store.batches[1]) == sorted(f"{n}.{k}" for n in names[1:] for k in (1, 2))
    for name in names:
        assert outcomes[name] == [f"stored {name}.1", f"stored {name}.2"]
    assert (committer.transactions, committer.commands) == (2, 8)


def test_a_conflict_in_a_batch_stays_with_its_caller() -> None:
    store = FakeStore(refuse={"c3.1"})
    committer: GroupCommitter[str, str] = GroupCommitter(store.write)
    names = [f"c{i}" for i in range(5)]
    outcomes = run_callers(committer, store, names)
    assert isinstance(outcomes["c3"], IntegrityError)
    for name in ("c0", "c1", "c2", "c4"):
        assert outcomes[name] == [f"stored {name}.1", f"stored {name}.2"]
    assert not any("c3.1" in batch for batch in store.batches)


def test_a_failed_batch_fails_every_caller_in_it() -> None:
    store = FakeStore(fail=True)
    committer: GroupCommitter[str, str] = GroupCommitter(store.write)
    outcomes = run_callers(committer, store, ["c0", "c1", "c2"])
    assert outcomes["c0"] == ["stored c0.1", "stored c0.2"]  # written alone, before
    for name in ("c1", "c2"):
        assert isinstance(outcomes[name], ConnectionError)
    # The committer is free again: the next caller writes.
    assert committer.put(["later"]) == ["stored later"]


def test_one_caller_is_one_plain_write() -> None:
    store = FakeStore()
    store.release.set()
    committer: GroupCommitter[str, str] = GroupCommitter(store.write)
    assert committer.put(["a"]) == ["stored a"]
    with pytest.raises(IntegrityError):
        GroupCommitter(FakeStore(refuse={"b"}).write).put(["b"])
