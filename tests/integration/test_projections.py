"""Projections kept in real databases: the runner, rebuilds, versions, point in time,
offline rebuilds. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from ledger.application import OrderLedger, open_ledger
from ledger.demo import run_session
from projections import all_projections
from projections.base import Projection
from projections.offline import ExportError, export_log, offline_rebuild, read_export
from projections.pointintime import as_of
from projections.positions import PositionsProjection, positions_of
from projections.rebuild import build_beside, read_active, rebuild, retire
from projections.runner import LedgerLog, ProjectionRunner
from projections.store import (
    ProjectionSourceMismatch,
    ProjectionStore,
    projections_path_for,
    store_at,
    store_for_file,
    store_for_ledger_url,
)
from tests.conftest import LedgerFactory
from tests.support import START, FakeClock, accepted, fill, log_events, submit_command


def tables(store: ProjectionStore, projections: list[Projection]) -> dict[str, Any]:
    return {p.name: store.load_view(p).contents() for p in projections}


def folded(ledger: OrderLedger, projections: list[Projection]) -> dict[str, Any]:
    """What a clean fold of the whole log gives, in memory."""
    events = log_events(ledger)
    return {p.name: p.fold(events).contents() for p in projections}


@pytest.fixture
def store(database_url: str) -> Any:
    store = store_for_ledger_url(database_url)
    yield store
    store.close()


@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_runner_equals_a_clean_fold_whatever_the_batch_size(
    ledger: OrderLedger, store: ProjectionStore, batch_size: int
) -> None:
    run_session(ledger)
    projections = all_projections()
    runner = ProjectionRunner(LedgerLog(ledger), store, projections, batch_size=batch_size)
    covered = runner.catch_up()
    assert covered == ledger.count_events()
    assert tables(store, projections) == folded(ledger, projections)
    assert runner.catch_up() == 0


def test_one_transaction_per_batch_not_per_event(
    ledger: OrderLedger, store: ProjectionStore
) -> None:
    """A guard against falling back to a commit per event."""
    run_session(ledger)
    events = ledger.count_events()
    runner = ProjectionRunner(LedgerLog(ledger), store, all_projections(), batch_size=10)
    before = store.transactions_committed
    runner.catch_up()
    assert store.transactions_committed - before == -(-events // 10)


def test_live_runner_follows_new_events(ledger: OrderLedger, store: ProjectionStore) -> None:
    projections = all_projections()
    runner = ProjectionRunner(LedgerLog(ledger), store, projections, batch_size=4)
    run_session(ledger)
    runner.catch_up()
    run_session(ledger)
    runner.catch_up()
    assert tables(store, projections) == folded(ledger, projections)


def test_a_new_runner_resumes_where_the_last_one_stopped(
    ledger: OrderLedger, database_url: str
) -> None:
    run_session(ledger)
    projections = all_projections()
    first_store = store_for_ledger_url(database_url)
    first = ProjectionRunner(LedgerLog(ledger), first_store, projections, batch_size=5)
    first.run_once()
    first.run_once()
    stopped_at = first.position
    first_store.close()
    second_store = store_for_ledger_url(database_url)
    second = ProjectionRunner(LedgerLog(ledger), second_store, projections, batch_size=5)
    assert second.position == stopped_at
    second.catch_up()
    assert tables(second_store, projections) == folded(ledger, projections)
    second_store.close()


def test_a_failed_batch_commits_nothing_and_is_folded_again(
    ledger: OrderLedger, store: ProjectionStore
) -> None:
    run_session(ledger)
    projections = all_projections()
    runner = ProjectionRunner(LedgerLog(ledger), store, projections, batch_size=8)
    runner.run_once()
    real_commit = store.commit

    def failing_commit(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("database went away")

    store.commit = failing_commit  # type: ignore[method-assign]
    position = runner.position
    with pytest.raises(ConnectionError):
        runner.run_once()
    assert runner.position == position
    store.commit = real_commit  # type: ignore[method-assign]
    runner.catch_up()
    assert tables(store, projections) == folded(ledger, projections)


@pytest.mark.parametrize("path", ["run_once", "catch_up"])
def test_a_batch_whose_commit_and_reload_both_fail_is_not_folded_twice(
    ledger: OrderLedger, store: ProjectionStore, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit fails, and so does the load from the store that should follow it (the
    SQLite file still locked, the server still away): the working sets still hold the
    batch's fold. The next batch must start from the store, not fold the same records
    again on top of it (a fill counted twice, for good, once a commit goes through)."""
    projections = all_projections()
    runner = ProjectionRunner(LedgerLog(ledger), store, projections)
    order = ledger.submit(submit_command(quantity=100))
    ledger.record(accepted(order))
    runner.run_once()
    ledger.record(fill(order, "T1", 10))
    failures = {"write": 1, "position": 1}
    write = store.commit if path == "run_once" else store.write
    position_in = store.position_in

    def failing_write(*args: Any, **kwargs: Any) -> Any:
        if failures["write"]:
            failures["write"] -= 1
            raise ConnectionError("the store went away")
        return write(*args, **kwargs)

    def failing_position(cur: Any, projection: Projection) -> int:
        if failures["position"]:
            failures["position"] -= 1
            raise ConnectionError("the store is still away")
        return position_in(cur, projection)

    monkeypatch.setattr(store, "commit" if path == "run_once" else "write", failing_write)
    monkeypatch.setattr(store, "position_in", failing_position)
    with pytest.raises(ConnectionError, match="still away"):
        getattr(runner, path)()
    assert getattr(runner, path)() == 1
    assert tables(store, projections) == folded(ledger, projections)


def test_gaps_in_positions_are_not_waited_for(store: ProjectionStore, ledger: OrderLedger) -> None:
    run_session(ledger)
    events = log_events(ledger)
    gappy = [(position * 10 + 7, event) for position, event in events]  # ids 17, 27, ...

    class GappyLog:
        def read(self, after: int, limit: int) -> list[Any]:
            return [item for item in gappy if item[0] > after][:limit]

    projections = all_projections()
    runner = ProjectionRunner(GappyLog(), store, projections, batch_size=3)
    runner.catch_up()
    assert runner.position == gappy[-1][0]
    expected = {p.name: p.fold(gappy).contents() for p in projections}
    assert tables(store, projections) == expected


def test_rebuild_one_projection_from_scratch(ledger: OrderLedger, store: ProjectionStore) -> None:
    run_session(ledger)
    projections = all_projections()
    ProjectionRunner(LedgerLog(ledger), store, projections).catch_up()
    positions = PositionsProjection()
    with store.transaction() as cur:  # damage it
        cur.execute("DELETE FROM proj_positions_v1_positions")
    assert tables(store, [positions]) != folded(ledger, [positions])
    rebuild(LedgerLog(ledger), store, [positions], batch_size=4)
    assert tables(store, projections) == folded(ledger, projections)


class PositionsV2(PositionsProjection):
    """A new version of a projection (here: the same fold, new tables)."""

    version: ClassVar[int] = 2


def test_build_a_new_version_beside_and_switch_readers(
    ledger: OrderLedger, store: ProjectionStore
) -> None:
    run_session(ledger)
    v1, v2 = PositionsProjection(), PositionsV2()
    ProjectionRunner(LedgerLog(ledger), store, [v1]).catch_up()
    assert store.active_version("positions") == 1
    assert set(read_active(store, [v1, v2])) == {"positions"}
    before_switch = read_active(store, [v1, v2])["positions"]
    build_beside(LedgerLog(ledger), store, v2, batch_size=5)
    assert store.active_version("positions") == 2
    after_switch = read_active(store, [v1, v2])["positions"]
    assert after_switch.contents() == before_switch.contents()
    retire(store, v1)
    with pytest.raises(ValueError, match="still the active version"):
        retire(store, v2)
    with pytest.raises(ValueError, match="already the active version"):
        build_beside(LedgerLog(ledger), store, v2)


def test_positions_as_of_a_past_instant(make_ledger: LedgerFactory) -> None:
    clock = FakeClock()
    ledger = make_ledger(clock=clock)
    run_session(ledger)
    midway = clock.now
    clock.advance(timedelta(minutes=5))
    run_session(ledger)
    projections = all_projections()
    then = as_of(LedgerLog(ledger), projections, midway)
    now = as_of(LedgerLog(ledger), projections, clock.now)
    events = log_events(ledger)
    expected_then = PositionsProjection().fold([(n, e) for n, e in events if e.timestamp <= midway])
    assert then["positions"].contents() == expected_then.contents()
    assert then["positions"].contents() != now["positions"].contents()
    assert now["positions"].contents() == folded(ledger, projections)["positions"]
    nets = {p.tradingsymbol: p.net_quantity for p in positions_of(then["positions"])}
    assert nets["SBIN"] == 50


def test_as_of_takes_each_order_up_to_its_first_event_after_the_instant(
    make_ledger: LedgerFactory,
) -> None:
    """Two writers whose clocks differ by 2 s: an event of an order can be recorded after
    a later-stamped one. As of T, each event was taken or left by its own time, so an
    order's acceptance and fill could be in while its submission was out (as_of raised
    LookupError), and it disagreed with `OrderLedger.get_order(as_of=T)`, which takes an
    order's events up to its first event after T. Point-in-time projections now do too."""
    from ledger.domain.errors import OrderNotFound

    strategy = make_ledger(clock=FakeClock(START))
    gateway = make_ledger(clock=FakeClock(START - timedelta(seconds=2)))
    instant = START - timedelta(seconds=1)
    # Submitted after T by the strategy's clock, accepted and filled "before" by the gateway's.
    late = strategy.submit(submit_command(client_order_id="late"))
    gateway.record(accepted(late))
    gateway.record(fill(late, "T1", 100))
    # Submitted before T, accepted after it, then a fill stamped before it again.
    early = gateway.submit(submit_command(client_order_id="early", quantity=50))
    strategy.record(accepted(early, "B-2"))
    gateway.record(fill(early, "T2", 50))

    views = as_of(LedgerLog(strategy), all_projections(), instant)
    with pytest.raises(OrderNotFound, match="submitted later"):
        strategy.get_order(late.id, as_of=instant)
    then = strategy.get_order(early.id, as_of=instant)
    reports = views["reports"].contents()["execution_reports"]
    assert list(reports) == [(str(early.id),)]
    report = reports[(str(early.id),)]
    assert (report.status, report.filled_quantity) == (then.status.value, then.filled_quantity)
    assert (then.status.value, then.filled_quantity) == ("SUBMITTED", 0)
    assert positions_of(views["positions"]) == []
    assert [e.event_type for e in views["audit"].rows("audit_trail")] == ["Submitted"]


@pytest.mark.parametrize(
    ("fmt", "target"), [("jsonl", "a.duckdb"), ("parquet", "a.sqlite"), ("parquet", "b.duckdb")]
)
def test_offline_rebuild_from_an_export_equals_live(
    ledger: OrderLedger, store: ProjectionStore, tmp_path: Path, fmt: str, target: str
) -> None:
    run_session(ledger)
    run_session(ledger)
    projections = all_projections()
    ProjectionRunner(LedgerLog(ledger), store, projections).catch_up()
    export = tmp_path / f"log.{fmt}"
    assert export_log(ledger, export) == ledger.count_events()
    into = tmp_path / target
    assert offline_rebuild(export, into, projections, batch_size=7) == ledger.count_events()
    offline_store = store_for_file(into)
    try:
        assert tables(offline_store, projections) == tables(store, projections)
    finally:
        offline_store.close()


def test_duckdb_holds_amounts_to_ten_places_and_sqlite_exactly(
    ledger: OrderLedger, store: ProjectionStore, tmp_path: Path
) -> None:
    """DuckDB's columns are DECIMAL(38,10): an amount with more places (a computed
    reference price, a charge share to 12 places) is rounded to 10 there, far below the
    paisa; a SQLite rebuild equals the live projections exactly. (Documented: the README
    said every offline file equals the live tables exactly.)"""
    from decimal import Decimal

    reference = Decimal("2436195.35") / 2999  # an arrival VWAP the strategy computed
    order = ledger.submit(submit_command(reference_price=reference))
    ledger.record(accepted(order))
    for trade_id, quantity, charges in (("T1", 99, "0.0236018750"), ("T2", 1, "0.000236018751")):
        record = fill(order, trade_id, quantity)
        ledger.record(record.model_copy(update={"charges": Decimal(charges)}))
    projections = all_projections()
    ProjectionRunner(LedgerLog(ledger), store, projections).catch_up()
    export = tmp_path / "log.parquet"
    export_log(ledger, export)
    live = tables(store, projections)
    ten_places = Decimal("1e-10")
    rounded = 0
    for target in ("x.sqlite", "x.duckdb"):
        offline_rebuild(export, tmp_path / target, projections)
        offline_store = store_for_file(tmp_path / target)
        try:
            offline = tables(offline_store, projections)
        finally:
            offline_store.close()
        if target.endswith(".sqlite"):
            assert offline == live
            continue
        for name, views in live.items():
            for table, rows in views.items():
                assert offline[name][table].keys() == rows.keys()
                for key, row in rows.items():
                    for field, value in zip(row.__slots__, _values(row), strict=True):
                        kept = getattr(offline[name][table][key], field)
                        if isinstance(value, Decimal) and value != kept:
                            assert kept == value.quantize(ten_places), (name, field)
                            rounded += 1
                        else:
                            assert kept == value, (name, table, field)
    assert rounded  # the reference price, the charges and what follows from them


def _values(row: Any) -> list[Any]:
    return [getattr(row, field) for field in row.__slots__]


def test_export_time_window(ledger: OrderLedger, tmp_path: Path) -> None:
    clock = ledger.clock
    assert isinstance(clock, FakeClock)
    run_session(ledger)
    middle = clock.now
    clock.advance(timedelta(seconds=1))
    run_session(ledger)
    total = ledger.count_events()
    first = export_log(ledger, tmp_path / "first.jsonl", until=middle + timedelta(microseconds=1))
    second = export_log(ledger, tmp_path / "second.jsonl", since=middle + timedelta(microseconds=1))
    assert first + second == total
    assert 0 < first < total


def test_a_windowed_export_holds_whole_orders_and_rebuilds_offline(
    ledger: OrderLedger, store: ProjectionStore, tmp_path: Path
) -> None:
    """`export --from T --to T` then offline-rebuild (the README's workflow): the window
    took events one by one, so an order submitted before T and filled inside the window
    gave a Filled with no Submitted and the rebuild failed. A window now selects whole
    orders: every event of each order with an event recorded in it."""
    clock = ledger.clock
    assert isinstance(clock, FakeClock)
    before = ledger.submit(submit_command(client_order_id="before"))
    ledger.record(accepted(before))
    ledger.submit(submit_command(client_order_id="untouched"))
    clock.advance(timedelta(minutes=30))
    start = clock.now
    ledger.record(fill(before, "T1", 40))
    inside = ledger.submit(submit_command(client_order_id="inside", side="SELL", quantity=10))
    ledger.record(accepted(inside, "B-2"))
    end = clock.now + timedelta(microseconds=1)
    clock.advance(timedelta(minutes=30))
    ledger.record(fill(before, "T2", 60))  # after the window: the order is exported whole
    later = ledger.submit(submit_command(client_order_id="later"))
    projections = all_projections()
    ProjectionRunner(LedgerLog(ledger), store, projections).catch_up()

    export = tmp_path / "window.jsonl"
    assert export_log(ledger, export, since=start, until=end) == 4 + 2
    exported = [json.loads(line) for line in export.read_text().splitlines()]
    assert {r["order_id"] for r in exported} == {str(before.id), str(inside.id)}
    assert str(later.id) not in {r["order_id"] for r in exported}
    into = tmp_path / "window.sqlite"
    assert offline_rebuild(export, into, projections) == 6
    offline = store_for_file(into)
    try:
        reports = offline.load_view(_named_projection(projections, "reports")).contents()
        live = store.load_view(_named_projection(projections, "reports")).contents()
        for table, rows in reports.items():
            assert rows == {k: v for k, v in live[table].items() if k in rows}
        assert {k[0] for k in reports["execution_reports"]} == {str(before.id), str(inside.id)}
    finally:
        offline.close()


def _named_projection(projections: list[Projection], name: str) -> Projection:
    return next(p for p in projections if p.name == name)


def test_an_interrupted_export_leaves_the_file_it_was_replacing(
    ledger: OrderLedger, tmp_path: Path
) -> None:
    """An export is written beside its target and moved over it only when complete: one
    interrupted half way left a shorter file, which offline-rebuild then took silently
    for the whole log."""
    run_session(ledger)
    total = ledger.count_events()
    exports = tmp_path / "exports"
    exports.mkdir()
    for fmt in ("jsonl", "parquet"):
        good = exports / f"log.{fmt}"
        assert export_log(ledger, good) == total
        before = good.read_bytes()

        def interrupt(count: int) -> None:
            if count == total // 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            export_log(ledger, good, on_record=interrupt)
        assert good.read_bytes() == before
        assert (
            sorted(p.name for p in exports.iterdir())
            == ["log.jsonl", "log.parquet"][: 1 + (fmt == "parquet")]
        )
    rebuilt = offline_rebuild(exports / "log.jsonl", tmp_path / "x.sqlite", all_projections())
    assert rebuilt == total


def test_an_export_into_a_pipe_or_over_a_file_it_cannot_replace(
    ledger: OrderLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing beside the target and moving over it broke exports into a pipe (`--out
    /dev/stdout | ...`, JSON lines and Parquet alike) and over a file bind-mounted into a
    container (which cannot be replaced: EBUSY). A pipe is written as the export goes;
    such a file has the complete export copied over it, and if that fails the error names
    the file that holds it. A directory with no room beside the target is refused: written
    in place, an interrupted export would leave a short file that looks whole."""
    run_session(ledger)
    total = ledger.count_events()
    out = tmp_path / "out"
    out.mkdir()
    for fmt in ("jsonl", "parquet"):
        fifo = out / f"pipe-{fmt}"
        os.mkfifo(fifo)
        received: list[bytes] = []

        def read(pipe: Path = fifo, into: list[bytes] = received) -> None:
            into.append(pipe.read_bytes())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert export_log(ledger, fifo, fmt=fmt) == total
        reader.join(timeout=30)
        copy = out / f"copy.{fmt}"
        copy.write_bytes(received[0])
        assert sum(len(chunk) for chunk in read_export(copy)) == total
        copy.unlink()

    target = out / "log.jsonl"
    target.write_text("old\n")

    def busy(source: object, destination: object) -> None:
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))

    with monkeypatch.context() as patch:
        patch.setattr("projections.offline.os.replace", busy)
        assert export_log(ledger, target) == total
        assert len(target.read_text().splitlines()) == total

        def full(source: Path, destination: Path) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        patch.setattr("projections.offline._copy_over", full)
        with pytest.raises(ExportError, match=r"the complete export is in .*partial"):
            export_log(ledger, target)

        def interrupted(source: Path, destination: Path) -> None:
            destination.write_text("half\n")
            raise KeyboardInterrupt

        patch.setattr("projections.offline._copy_over", interrupted)
        with pytest.raises(KeyboardInterrupt) as caught:
            export_log(ledger, target)
        assert any("the complete export is in" in note for note in caught.value.__notes__)
    partials = sorted(out.glob("log.partial-*.jsonl"))
    assert partials
    assert all(len(p.read_text().splitlines()) == total for p in partials)

    real_open = Path.open

    def no_room_beside(self: Path, *args: Any, **kwargs: Any) -> Any:
        if ".partial-" in self.name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_open(self, *args, **kwargs)

    target.write_text("old\n")
    with monkeypatch.context() as patch:
        patch.setattr(Path, "open", no_room_beside)
        with pytest.raises(ExportError, match="written beside it first"):
            export_log(ledger, target)
    assert target.read_text() == "old\n"


def test_an_export_to_stdout_goes_to_the_process_stdout_whatever_sys_stdout_is(
    ledger: OrderLedger, capfd: pytest.CaptureFixture[str]
) -> None:
    """A caller that replaced sys.stdout (a notebook, a test) could not export to
    /dev/stdout: the export asked sys.stdout for its descriptor."""
    run_session(ledger)
    with contextlib.redirect_stdout(io.StringIO()):
        assert export_log(ledger, "/dev/stdout", fmt="jsonl") == ledger.count_events()
    assert len(capfd.readouterr().out.splitlines()) == ledger.count_events()


def test_export_refuses_the_ledgers_own_files(tmp_path: Path) -> None:
    """`--out` naming the ledger's database (a slip of the tab key) emptied it: the export
    truncated its target before reading the log from it. The ledger's files and the
    projections file beside it are refused, however they are spelled, and nothing is
    written."""
    (tmp_path / "sub").mkdir()
    with open_ledger(tmp_path / "ledger.db", clock=FakeClock()) as ledger:
        run_session(ledger)
        projections = store_for_ledger_url(ledger.storage)
        ProjectionRunner(LedgerLog(ledger), projections, all_projections()).catch_up()
        projections.close()
        events = ledger.count_events()
        (tmp_path / "alias.db").symlink_to(tmp_path / "ledger.db")
        own = {
            "ledger.db": "database",
            "sub/../ledger.db": "database",
            "alias.db": "database",
            "ledger.db-wal": "database",
            "ledger.db-shm": "database",
            "ledger.db-journal": "database",
            "ledger.projections.db": "projections",
            "ledger.projections.db-wal": "projections",
        }

        def files() -> dict[str, bytes]:  # the -shm file changes as readers come and go
            return {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

        before = files()
        for name, what in own.items():
            with pytest.raises(ExportError, match=rf"is the ledger's own {what} file"):
                export_log(ledger, tmp_path / name, fmt="jsonl")
        after = files()
        assert {n: b for n, b in after.items() if not n.endswith("-shm")} == {
            n: b for n, b in before.items() if not n.endswith("-shm")
        }
        assert after.keys() == before.keys()
        assert ledger.count_events() == events


def test_bad_export_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"position": 1}\nnot json\n')
    with pytest.raises(ExportError, match=r"bad.jsonl:1: missing order_id"):
        offline_rebuild(bad, tmp_path / "x.sqlite", all_projections())
    with pytest.raises(ExportError, match="unknown export format"):
        offline_rebuild(tmp_path / "log.csv", tmp_path / "x.sqlite", all_projections())
    with pytest.raises(ExportError, match="cannot read export"):
        offline_rebuild(tmp_path / "none.jsonl", tmp_path / "x.sqlite", all_projections())


def test_a_record_the_folds_cannot_read_is_placed_in_the_log(
    ledger: OrderLedger, tmp_path: Path
) -> None:
    """A fill whose state lacks what the folds read: the error names its log position,
    order and version (it said only "after the first 0")."""
    run_session(ledger)
    export = tmp_path / "log.jsonl"
    export_log(ledger, export)
    lines = export.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if '"event_type":"Filled"' in line)
    record = json.loads(lines[index])
    state = json.loads(record["state"])
    del state["instrument"]
    record["state"] = json.dumps(state)
    lines[index] = json.dumps(record)
    export.write_text("\n".join(lines) + "\n")
    position = record["position"]
    with pytest.raises(
        ExportError, match=rf"folding log position {position} \(order .*, Filled\) into \w+"
    ):
        offline_rebuild(export, tmp_path / "x.sqlite", all_projections())


def test_views_can_be_read_while_empty(store: ProjectionStore) -> None:
    projections = all_projections()
    store.ensure(projections)
    assert tables(store, projections) == {p.name: {} for p in projections}
    assert all(set(store.load_view(p).tables) == {t.name for t in p.tables} for p in projections)


def test_two_runners_on_one_store_never_double_count(
    ledger: OrderLedger, database_url: str
) -> None:
    """A second runner (say a CLI read while `serve` runs) must not commit a batch folded
    from a position another runner has moved past: that would move tracking backwards
    and the next runner would fold those events twice. The position check refuses it."""
    run_session(ledger)
    run_session(ledger)
    projections = all_projections()
    stores = [store_for_ledger_url(database_url) for _ in range(3)]
    try:
        behind = ProjectionRunner(LedgerLog(ledger), stores[0], projections, batch_size=7)
        ahead = ProjectionRunner(LedgerLog(ledger), stores[1], projections, batch_size=5)
        for _ in range(3):
            ahead.run_once()
        assert ahead.position == 15
        behind.run_once()  # folded from 0; must not drag tracking back to 7
        assert stores[2].position(projections[0]) == 15
        assert behind.position == 15  # it reloaded instead
        fresh = ProjectionRunner(LedgerLog(ledger), stores[2], projections)
        fresh.catch_up()
        assert tables(stores[2], projections) == folded(ledger, projections)
    finally:
        for store in stores:
            store.close()


def test_a_command_goes_through_while_a_projection_batch_is_being_written(
    make_ledger: LedgerFactory, database_url: str
) -> None:
    """The ledger's projection store never holds the log's writers up: a command completes
    while a projection transaction holds its write locks. On SQLite, one writer at a time
    per file, so the projections live in a file of their own (in the ledger's file the
    command waited for the lock and, past `lock_timeout`, failed); on PostgreSQL a batch
    locks projection rows, not the events table."""
    ledger = make_ledger(lock_timeout=1)  # a regression fails in a second, not ten
    projections = all_projections()
    store = store_for_ledger_url(database_url)
    try:
        store.ensure(projections)
        with store.transaction() as cur:  # a batch in flight: its write locks held
            cur.execute(
                "UPDATE proj_tracking SET position = position WHERE projection = 'positions'"
            )
            order = ledger.submit(submit_command(client_order_id="while-a-batch-writes"))
            assert ledger.get_order(order.id).version == 1
        ProjectionRunner(LedgerLog(ledger), store, projections).catch_up()
        assert tables(store, projections) == folded(ledger, projections)
    finally:
        store.close()


def test_sqlite_projections_live_in_a_file_beside_the_ledger(tmp_path: Path) -> None:
    ledger_file = tmp_path / "books.db"
    assert projections_path_for(ledger_file) == tmp_path / "books.projections.db"
    assert projections_path_for(tmp_path / "books") == tmp_path / "books.projections"
    store = store_for_ledger_url(ledger_file)
    try:
        store.ensure(all_projections())
    finally:
        store.close()
    assert (tmp_path / "books.projections.db").exists()
    assert not ledger_file.exists()  # nothing of the projections went into the ledger's file


def _remove_sqlite(path: Path) -> None:
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)


def test_projections_of_a_ledger_started_again_are_refused_not_folded_on(tmp_path: Path) -> None:
    """A ledger file deleted and started again finds the old projections file beside it:
    folding the new log on top of them would skip its first events (positions from the
    old log), so the runner refuses, naming the file; deleting the file rebuilds them."""
    path = tmp_path / "ledger.db"
    projections = all_projections()
    first = open_ledger(path, clock=FakeClock())
    run_session(first)
    store = store_for_ledger_url(path)
    ProjectionRunner(LedgerLog(first), store, projections).catch_up()
    store.close()
    first.close()
    _remove_sqlite(path)

    again = open_ledger(path, clock=FakeClock(START + timedelta(days=1)))  # the next day
    try:
        store = store_for_ledger_url(path)
        with pytest.raises(ProjectionSourceMismatch, match=r"ledger\.projections\.db"):
            ProjectionRunner(LedgerLog(again), store, projections)  # the log is empty
        run_session(again)
        run_session(again)  # longer than the first log: its positions would all exist
        with pytest.raises(ProjectionSourceMismatch, match="folded from another log"):
            ProjectionRunner(LedgerLog(again), store, projections)
        store.close()
        _remove_sqlite(tmp_path / "ledger.projections.db")
        store = store_for_ledger_url(path)
        ProjectionRunner(LedgerLog(again), store, projections).catch_up()
        assert tables(store, projections) == folded(again, projections)
        store.close()
    finally:
        again.close()


def test_a_store_takes_another_log_once_every_projection_is_dropped(
    ledger: OrderLedger, tmp_path: Path
) -> None:
    """One projections database (`--projections-db`), two ledgers: the second is refused
    while the first one's rows are there, and folded once they are all dropped."""
    projections = all_projections()
    run_session(ledger)
    other = open_ledger(tmp_path / "other.db", clock=FakeClock(START + timedelta(hours=1)))
    store = store_at(tmp_path / "shared-projections.db")
    try:
        run_session(other)
        ProjectionRunner(LedgerLog(ledger), store, projections).catch_up()
        with pytest.raises(ProjectionSourceMismatch):
            ProjectionRunner(LedgerLog(other), store, projections)
        assert tables(store, projections) == folded(ledger, projections)  # untouched
        for projection in projections:
            store.drop(projection)
        ProjectionRunner(LedgerLog(other), store, projections).catch_up()
        assert tables(store, projections) == folded(other, projections)
        ProjectionRunner(LedgerLog(other), store, projections).catch_up()  # and again
    finally:
        store.close()
        other.close()


def test_a_view_read_with_where_is_the_full_view_filtered(
    ledger: OrderLedger, store: ProjectionStore, tmp_path: Path
) -> None:
    """`load_view(projection, where)` (what `kite-ledger audit --order ...` and `report`
    read) holds exactly the rows of the whole view whose columns match, in every store:
    the ledger's own, and a DuckDB file rebuilt offline."""
    run_session(ledger)
    projections = all_projections()
    ProjectionRunner(LedgerLog(ledger), store, projections).catch_up()
    export = tmp_path / "log.parquet"
    export_log(ledger, export)
    offline_rebuild(export, tmp_path / "views.duckdb", projections)
    duck = store_for_file(tmp_path / "views.duckdb")
    audit = next(p for p in projections if p.name == "audit")
    reports = next(p for p in projections if p.name == "reports")
    entries = list(store.load_view(audit).rows("audit_trail"))
    some_order = entries[len(entries) // 2].order_id
    cases: list[tuple[Projection, dict[str, list[str]]]] = [
        (audit, {"order_id": [some_order]}),
        (audit, {"event_type": ["Filled", "Cancelled"], "account": [entries[0].account]}),
        (audit, {"exchange": ["NSE"], "tradingsymbol": ["SBIN", "INFY"]}),
        (audit, {"order_id": []}),
        (reports, {"order_id": [some_order, "no-such-order"]}),
    ]
    try:
        for projection, where in cases:
            whole = store.load_view(projection).contents()
            expected = {
                name: {
                    key: row
                    for key, row in rows.items()
                    if all(
                        getattr(row, column) in values
                        for column, values in where.items()
                        if hasattr(row, column)
                    )
                }
                for name, rows in whole.items()
            }
            expected = {name: rows for name, rows in expected.items() if rows}
            assert store.load_view(projection, where).contents() == expected, where
            assert duck.load_view(projection, where).contents() == expected, where
        assert store.load_view(audit, {"order_id": [some_order]}).contents()  # not vacuous
        with pytest.raises(ValueError, match="only text columns"):
            store.load_view(audit, {"order_version": ["1"]})
    finally:
        duck.close()


def test_a_failed_duckdb_write_raises_its_own_error(ledger: OrderLedger, tmp_path: Path) -> None:
    """A statement that fails in a DuckDB file aborts its transaction; the error raised is
    that statement's (here a broken key: the same audit entry inserted twice), not the
    "Current transaction is aborted" of the clean-up after it, which an analyst's rebuild
    that ran out of memory showed instead of the cause."""
    import duckdb

    run_session(ledger)
    projections = all_projections()
    duck = store_for_file(tmp_path / "views.duckdb")
    try:
        ProjectionRunner(LedgerLog(ledger), duck, projections).catch_up()
        audit = next(p for p in projections if p.name == "audit")
        trail = audit.tables[0]
        entry = next(iter(duck.load_view(audit).rows("audit_trail")))
        columns = zip(trail.columns, trail.kinds, strict=True)
        row = tuple(duck.encode(getattr(entry, name), kind) for name, kind in columns)
        with pytest.raises(duckdb.ConstraintException), duck.transaction() as cur:
            duck._insert(cur, audit, trail, [row])
        assert len(list(duck.load_view(audit).rows("audit_trail"))) == ledger.count_events()
    finally:
        duck.close()


def test_sqlite_store_reads_do_not_wait_for_a_writer(ledger: OrderLedger, tmp_path: Path) -> None:
    """Reading a SQLite projection file (a CLI's view, a runner's positions) takes no write
    lock: another process holding it (a runner committing a long batch) neither stops the
    read nor is stopped by it. The reads once took the lock and waited up to 30 s."""
    import sqlite3
    import threading

    run_session(ledger)
    path = tmp_path / "views.sqlite"
    projections = all_projections()
    store = store_for_file(path)
    ProjectionRunner(LedgerLog(ledger), store, projections).catch_up()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the file's write lock, held as a batch holds it
    read: list[Any] = []
    reader = threading.Thread(
        target=lambda: read.extend(
            (
                store.position(projections[0]),
                tables(store, projections),
                store.active_version("pnl"),
            )
        )
    )
    try:
        reader.start()
        reader.join(timeout=5)
        assert not reader.is_alive(), "a read waited for the write lock"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        reader.join()
        store.close()
    assert read[0] == LedgerLog(ledger).last_position()
    assert read[1] == folded(ledger, projections)


class _Note(Aggregate):
    @event("Noted")
    def __init__(self, text: str) -> None:
        self.text = text


def test_a_batch_of_another_applications_events_is_not_the_end_of_the_log(
    tmp_path: Path,
) -> None:
    """SQLite applications on one file share its events table. A batch holding only
    another application's rows read as an empty batch, which every reader takes for the
    end of the log: the runner stopped there for good and later fills were never folded."""
    database = tmp_path / "ledger.db"
    ledger = open_ledger(database, clock=FakeClock())
    first = ledger.submit(submit_command(client_order_id="c-1", quantity=10))
    ledger.record(accepted(first, "B-1"))
    ledger.record(fill(first, "T1", 10))
    notes = Application[Any](
        env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(database)}
    )
    for i in range(30):
        notes.save(_Note(f"n{i}"))
    second = ledger.submit(submit_command(client_order_id="c-2", quantity=5))
    ledger.record(accepted(second, "B-2"))
    ledger.record(fill(second, "T2", 5))
    log = LedgerLog(ledger)
    assert [p for p, _ in log.read(3, 20)] == [34, 35, 36]
    assert [r.position for r in log.read_records(3, 20)] == [34, 35, 36]
    store = store_for_ledger_url(str(database))
    projections = all_projections()
    runner = ProjectionRunner(log, store, projections, batch_size=20)
    assert runner.catch_up() == 6
    assert [p.net_quantity for p in positions_of(runner.view("positions"))] == [15]
    assert tables(store, projections) == folded(ledger, projections)
    views = as_of(log, projections, START + timedelta(days=1))
    assert [p.net_quantity for p in positions_of(views["positions"])] == [15]
    store.close()
    notes.close()
    ledger.close()


def test_a_runner_starting_while_another_commits_loses_none_of_its_batch(
    ledger: OrderLedger, database_url: str
) -> None:
    """A runner loads the bounded tables (positions, books, totals), each in a read of its
    own, and the positions. When another runner committed after the rows were read and
    before the positions were, the new one held rows from before that commit and a
    position after it; its next commit passed the position check and wrote over the
    other's batch: a fill gone from positions, P&L and statistics, for good."""
    projections = all_projections()
    order = ledger.submit(submit_command(client_order_id="a0", quantity=7))
    ledger.record(accepted(order, "B-a0"))
    ledger.record(fill(order, "T-a0", 7))
    first_store = store_for_ledger_url(database_url)
    first = ProjectionRunner(LedgerLog(ledger), first_store, projections)
    first.catch_up()
    late = ledger.submit(submit_command(client_order_id="a1", quantity=10))
    ledger.record(accepted(late, "B-a1"))
    ledger.record(fill(late, "T-a1", 10))  # folded by the first runner during the race

    second_store = store_for_ledger_url(database_url)
    load_cells = second_store.load_cells
    last_bounded = [(p.name, t.name) for p in projections for t in p.tables if t.kind == "bounded"][
        -1
    ]
    committed: list[int] = []

    def another_runner_commits_after_the_rows_are_read(
        projection: Projection, table: Any, *args: Any, **kwargs: Any
    ) -> Any:
        cells = load_cells(projection, table, *args, **kwargs)
        if (projection.name, table.name) == last_bounded and not committed:
            committed.append(first.catch_up())  # every bounded table read: it lands now
        return cells

    second_store.load_cells = another_runner_commits_after_the_rows_are_read  # type: ignore[method-assign]
    second = ProjectionRunner(LedgerLog(ledger), second_store, projections)
    second_store.load_cells = load_cells  # type: ignore[method-assign]
    assert committed == [3]  # the first runner folded the late order's 3 events meanwhile

    third = ledger.submit(submit_command(client_order_id="b1", quantity=5))
    ledger.record(accepted(third, "B-b1"))
    ledger.record(fill(third, "T-b1", 5))
    second.catch_up()
    assert tables(second_store, projections) == folded(ledger, projections)
    first_store.close()
    second_store.close()


def test_catch_up_returns_at_the_log_it_was_called_on_while_writers_keep_pace(
    ledger: OrderLedger, store: ProjectionStore
) -> None:
    """`catch_up` ran until the log had nothing new: with writers adding as much as each
    batch folded, a one-off `kite-ledger project` never returned."""
    run_session(ledger)
    at_call = ledger.count_events()
    batches = 0

    def writers_keep_pace(count: int, last: int) -> None:
        nonlocal batches
        batches += 1
        if batches < 200:  # (a bound for the code before, which would never stop)
            order = ledger.submit(submit_command(client_order_id=f"meanwhile-{batches}"))
            ledger.record(accepted(order, f"B-meanwhile-{batches}"))
            ledger.record(fill(order, f"T-meanwhile-{batches}", 100))

    projections = all_projections()
    runner = ProjectionRunner(
        LedgerLog(ledger), store, projections, batch_size=3, on_batch=writers_keep_pace
    )
    covered = runner.catch_up()
    assert batches == -(-at_call // 3)
    assert at_call <= covered < at_call + 3  # the last batch takes what is there by then
    runner.on_batch = None
    runner.catch_up()
    assert tables(store, projections) == folded(ledger, projections)
