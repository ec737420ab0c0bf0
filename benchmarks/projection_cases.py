"""Projection cases: catch-up from the log, the offline rebuild from an export, and the
memory the offline rebuild needs.

Every case folds the same log: real ledger events, made by the order aggregate itself
(every rule checked, every hash chained) and saved many orders per `save` call, once per
process, then exported; each database a case measures in gets those stored events inserted
by the library's own recorder (the bytes the ledger wrote, in the same order). The order
mix: most orders fill in two parts, some are rejected, some cancelled before any fill, and
some cancelled after a part fill with the rest filled late, thousands of events later (a
per-order row the rebuild has let go must be loaded back).

* projection_catchup: events/s bringing every projection up to date. On PostgreSQL the
  baseline is the library's own `ProjectionRunner` with a `PostgresTrackingRecorder` view
  doing comparable per-event work (an order row per event, a position row per fill, the
  tracking record, one transaction per event, as the library does), measured in steady
  state over a prefix of the same log (at its rate the whole log would take minutes). On
  SQLite, which `ProjectionRunner` cannot follow, the baseline is the read ceiling. Both
  report the read ceiling: the same rows read in keyset pages, not decoded.
* offline_rebuild: events/s rebuilding every projection from the Parquet export into a
  SQLite file, no server. Baseline: the plain `eventsourcing` way of reading and decoding
  the same events: `select_notifications` pages and `mapper.to_domain_event` of a plain
  `Application` (with the ledger's transcodings) over the SQLite file holding the log.
* rebuild_memory: peak RSS (MB) of the offline rebuild, in a child process, of the first
  N and the first 2N events of the export; the rebuild and its writer process together
  (the sum of their peaks). ledger = peak at 2N, baseline = peak at N,
  ratio = N / 2N (1.0 means flat; >= 0.91 is the target, "2N uses <= 1.1 x N").
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder, StoredEvent, Tracking
from eventsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresTrackingRecorder,
)
from eventsourcing.projection import Projection as LibraryProjection
from eventsourcing.projection import ProjectionRunner as LibraryRunner
from eventsourcing.sqlite import SQLiteApplicationRecorder
from psycopg.sql import SQL, Identifier

from benchmarks.common import Figure, places
from ledger.application import OrderLedger, open_ledger
from ledger.domain.order import Order
from ledger.domain.values import Exchange, InstrumentRef, OrderType, Product, Side, Source
from ledger.persistence import register_ledger_transcodings
from projections import all_projections
from projections.offline import export_log
from projections.offline import offline_rebuild as rebuild_export
from projections.runner import LedgerLog, ProjectionRunner
from projections.store import store_for_ledger_url

_SYMBOLS = (("SBIN", "812.30"), ("RELIANCE", "2950.10"), ("INFY", "1520.40"), ("TCS", "4100.20"))
_PER_SAVE = 250
_LATE_AFTER = 8  # save rounds between a cancel and the late fill of the rest

# ---------------------------------------------------------------- the log every case folds


def build_log(ledger: OrderLedger, events: int, tag: str = "b") -> int:
    """At least `events` real ledger events in `ledger`; returns how many."""
    instruments = [ledger.instruments.get(InstrumentRef(Exchange.NSE, s)) for s, _ in _SYMBOLS]
    start = datetime(2026, 11, 23, 3, 45, tzinfo=UTC)
    written, i, rounds = 0, 0, 0
    late: list[tuple[int, Order, int]] = []  # (round, order, quantity left)
    while written < events:
        batch: list[Order] = []
        for _ in range(_PER_SAVE):
            batch.append(_one_order(ledger, instruments, i, start, rounds, late, tag))
            i += 1
        due = [item for item in late if item[0] <= rounds - _LATE_AFTER]
        late = [item for item in late if item[0] > rounds - _LATE_AFTER]
        for _, order, left in due:
            at = start + timedelta(milliseconds=i)
            order.fill(
                f"{order.client_order_id}-late",
                instrument=order.instrument,
                quantity=left,
                price=order.price or Decimal(1),
                exchange_timestamp=at - timedelta(seconds=30),
                source=Source.EXCHANGE,
                at=at,
            )
            batch.append(order)
        written += sum(len(o.pending_events) for o in batch)
        ledger.save(*batch)
        rounds += 1
    return written


def _one_order(
    ledger: OrderLedger,
    instruments: list[Any],
    i: int,
    start: datetime,
    rounds: int,
    late: list[tuple[int, Order, int]],
    tag: str,
) -> Order:
    instrument = instruments[i % len(instruments)]
    price = Decimal(_SYMBOLS[i % len(_SYMBOLS)][1]) + Decimal("0.1") * (i % 7)
    at = start + timedelta(milliseconds=i)
    order = Order.submit(
        account=f"B{i % 2}",
        client_order_id=f"{tag}-{i}",
        instrument=instrument,
        side=Side.SELL if i % 3 == 0 else Side.BUY,
        quantity=100,
        order_type=OrderType.LIMIT,
        product=Product.MIS if i % 2 else Product.CNC,
        price=price,
        tag=f"{tag}{i}"[:20],
        strategy=f"s{i % 5}",
        reference_price=price - Decimal("0.1"),
        actor="bench",
        at=at,
    )
    kind = i % 10
    if kind == 7:
        order.reject("RMS: margin", source=Source.BROKER, broker_timestamp=at, at=at)
        return order
    order.accept(
        f"X{tag}{i}", exchange_order_id=None, broker_timestamp=at, source=Source.BROKER, at=at
    )
    ref = instrument.ref

    def fill(n: int, quantity: int) -> None:
        order.fill(
            f"{tag}-{i}-{n}",
            instrument=ref,
            quantity=quantity,
            price=price,
            exchange_timestamp=at if n % 2 else None,
            source=Source.POSTBACK,
            charges=Decimal("12.34") if n == 1 else None,
            at=at,
        )

    if kind == 9:
        fill(1, 100)
    elif kind == 8:
        order.request_cancel("bench", actor="bench", at=at)
        order.record_cancelled("cancelled", source=Source.BROKER, broker_timestamp=at, at=at)
    elif kind == 6:
        fill(1, 40)
        order.request_cancel("bench", actor="bench", at=at)
        order.record_cancelled("cancelled", source=Source.BROKER, broker_timestamp=at, at=at)
        late.append((rounds, order, 60))
    else:
        fill(1, 40)
        fill(2, 60)
    return order


_LOGS: dict[int, tuple[Path, Path]] = {}


def _the_log(events: int) -> tuple[Path, Path]:
    """(SQLite ledger file, Parquet export) holding a log of about `events` events, made
    once per process (a larger one made already serves a smaller case: its first rows)."""
    fitting = [size for size in _LOGS if size >= events]
    if fitting:
        return _LOGS[min(fitting)]
    _LOGS[events] = _make_log(events)
    return _LOGS[events]


def _make_log(events: int) -> tuple[Path, Path]:
    folder = Path(tempfile.mkdtemp(prefix="bench-log-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    ledger = open_ledger(folder / "ledger.db")
    build_log(ledger, events)
    export = folder / "log.parquet"
    export_log(ledger, export)
    ledger.close()
    return folder / "ledger.db", export


def _stored_events(export: Path, limit: int | None = None) -> Iterator[list[StoredEvent]]:
    import pyarrow.parquet as pq

    taken = 0
    for batch in pq.ParquetFile(str(export)).iter_batches(
        batch_size=5000, columns=["order_id", "version", "topic", "state"]
    ):
        rows = zip(*(batch.column(i).to_pylist() for i in range(4)), strict=True)
        chunk = [StoredEvent(uuid.UUID(o), v, t, s.encode("utf-8")) for o, v, t, s in rows]
        if limit is not None:
            chunk = chunk[: limit - taken]
        taken += len(chunk)
        if chunk:
            yield chunk
        if limit is not None and taken >= limit:
            return


def _copy_log(ledger: OrderLedger, export: Path) -> int:
    """The exported stored events into `ledger`'s log, in log order: by the recorder on
    SQLite, by COPY into the recorder's own table on PostgreSQL (the same rows, faster)."""
    from eventsourcing.postgres import PostgresApplicationRecorder

    recorder = ledger.recorder
    count = 0
    if not isinstance(recorder, PostgresApplicationRecorder):
        for chunk in _stored_events(export):
            recorder.insert_events(chunk)
            count += len(chunk)
        return count
    table = SQL("{}.{}").format(
        Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)
    )
    with recorder.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as cur:
        copy_sql = SQL(
            "COPY {} (originator_id, originator_version, topic, state) FROM STDIN"
        ).format(table)
        with cur.copy(copy_sql) as copy:
            for chunk in _stored_events(export):
                for event in chunk:
                    copy.write_row(
                        (event.originator_id, event.originator_version, event.topic, event.state)
                    )
                count += len(chunk)
    return count


def _read_ceiling(ledger: OrderLedger, url: str, connect: Callable[[], Any]) -> float:
    """Rows/s of a plain keyset read of the log: the driver's own cursor, pages of 5,000
    (position, order id, version, topic, state) rows, nothing made of them.

    Not the library's `select_notifications`, which makes a `Notification` (and a UUID)
    of every row: that read runs at a quarter to a third of this one on SQLite, and
    measuring against it made the ceiling, and so the SQLite target, look lower."""
    recorder = ledger.recorder
    if isinstance(recorder, SQLiteApplicationRecorder):
        conn = sqlite3.connect(url)  # the ledger's file
        query = (
            "SELECT rowid, originator_id, originator_version, topic, state"
            f" FROM {recorder.events_table_name} WHERE rowid > ? ORDER BY rowid LIMIT 5000"
        )
    else:
        assert isinstance(recorder, PostgresApplicationRecorder)
        conn = connect()
        query = (
            "SELECT notification_id, originator_id, originator_version, topic, state"
            f" FROM {recorder.datastore.schema}.{recorder.events_table_name}"
            " WHERE notification_id > %s ORDER BY notification_id LIMIT 5000"
        )
    try:
        start = time.perf_counter()
        after, rows = 0, 0
        while page := conn.execute(query, (after,)).fetchall():
            rows += len(page)
            after = page[-1][0]
        return rows / (time.perf_counter() - start)
    finally:
        conn.close()


# ---------------------------------------------------------------- the library's way


class PlainPositionsView(PostgresTrackingRecorder):
    """A materialised view the library's way: a tracking recorder with tables of its own,
    every update and its tracking record in one transaction."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        schema = Identifier(self.datastore.schema)
        self.orders_table = Identifier(f"{self.tracking_table_name}_orders")
        self.positions_table = Identifier(f"{self.tracking_table_name}_positions")
        self.sql_create_statements += [
            SQL(
                "CREATE TABLE IF NOT EXISTS {0}.{1} (order_id uuid PRIMARY KEY,"
                " last_event text NOT NULL, version bigint NOT NULL, filled bigint NOT NULL)"
            ).format(schema, self.orders_table),
            SQL(
                "CREATE TABLE IF NOT EXISTS {0}.{1} (account text, exchange text,"
                " tradingsymbol text, product text, net_quantity bigint NOT NULL,"
                " buy_value numeric NOT NULL, sell_value numeric NOT NULL,"
                " fills bigint NOT NULL, PRIMARY KEY (account, exchange, tradingsymbol, product))"
            ).format(schema, self.positions_table),
        ]
        self.upsert_order = SQL(
            "INSERT INTO {0}.{1} VALUES (%s, %s, %s, %s) ON CONFLICT (order_id) DO UPDATE SET"
            " last_event = EXCLUDED.last_event, version = EXCLUDED.version,"
            " filled = {1}.filled + EXCLUDED.filled"
        ).format(schema, self.orders_table)
        self.upsert_position = SQL(
            "INSERT INTO {0}.{1} VALUES (%s, %s, %s, %s, %s, %s, %s, 1)"
            " ON CONFLICT (account, exchange, tradingsymbol, product) DO UPDATE SET"
            " net_quantity = {1}.net_quantity + EXCLUDED.net_quantity,"
            " buy_value = {1}.buy_value + EXCLUDED.buy_value,"
            " sell_value = {1}.sell_value + EXCLUDED.sell_value, fills = {1}.fills + 1"
        ).format(schema, self.positions_table)

    def record(self, event: Order.Event, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as curs:
            filled = event.quantity if isinstance(event, Order.Filled) else 0
            curs.execute(
                self.upsert_order,
                (event.originator_id, type(event).__name__, event.originator_version, filled),
                prepare=True,
            )
            if isinstance(event, Order.Filled):
                value = event.price * event.quantity
                buy = event.side is Side.BUY
                curs.execute(
                    self.upsert_position,
                    (
                        event.account,
                        event.instrument.exchange.value,
                        event.instrument.tradingsymbol,
                        event.product.value,
                        event.quantity * event.side.sign,
                        value if buy else 0,
                        0 if buy else value,
                    ),
                    prepare=True,
                )
            self._insert_tracking(curs, tracking)


class PlainPositions(LibraryProjection[PlainPositionsView]):
    name = "plainpositions"

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        if isinstance(domain_event, Order.Event):
            self.view.record(domain_event, tracking)
        else:
            self.view.insert_tracking(tracking)


def _library_runner_rate(ledger: OrderLedger, sample: int, warmup: int = 200) -> float:
    """Events/s of the library's ProjectionRunner, in steady state over `sample` events."""
    assert ledger.storage is not None
    env = dict(ledger.storage.env)
    runner = LibraryRunner(
        application_class=OrderLedger,
        projection_class=PlainPositions,
        view_class=PlainPositionsView,
        env=env,
    )
    with runner:
        _reached(runner, warmup, timeout=60)
        start = time.perf_counter()
        _reached(runner, warmup + sample, timeout=600)
        elapsed = time.perf_counter() - start
    return sample / elapsed


def _reached(runner: LibraryRunner[Any, Any], position: int, timeout: float) -> None:
    """Wait until the runner's view has tracked `position`, looking every 5 ms.

    Not `runner.wait`: it polls with a backoff of 100, 200, 400, then 800 ms, so a timed
    wait ended at one of those steps (2,000 events measured as 1.5 s or 2.3 s, whatever
    the runner really took), which made the baseline look up to a third slower."""
    deadline = time.monotonic() + timeout
    while (runner.view.max_tracking_id(runner.app_name) or 0) < position:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the library's runner did not reach {position} in {timeout} s")
        time.sleep(0.005)


# ---------------------------------------------------------------- cases


def projection_catchup(backend: str, events: int) -> Figure:
    """Every projection brought up to date from a log of `events` events."""
    _, export = _the_log(events)
    with places(backend) as (url, _, raw):
        ledger = open_ledger(url)
        _copy_log(ledger, export)
        store = store_for_ledger_url(ledger.storage)
        start = time.perf_counter()
        folded = ProjectionRunner(LedgerLog(ledger), store, all_projections()).catch_up()
        rate = folded / (time.perf_counter() - start)
        store.close()
        ceiling = _read_ceiling(ledger, url, raw)
        baseline = ceiling
        if backend == "postgres":
            baseline = _library_runner_rate(ledger, sample=min(2000, events // 2))
        ledger.close()
    return Figure(
        "projection_catchup", backend, "events/s", rate, baseline, rate / baseline, ceiling
    )


class PlainReader(Application[uuid.UUID]):
    """A plain `eventsourcing` application over the ledger's file, to read and decode."""

    name = "orders"

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        register_ledger_transcodings(transcoder)


def _plain_read_and_decode(database: Path) -> tuple[int, float]:
    reader = PlainReader(
        {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(database)}
    )
    start = time.perf_counter()
    after, count = 0, 0
    while page := reader.recorder.select_notifications(
        start=after, limit=5000, inclusive_of_start=False
    ):
        for notification in page:
            reader.mapper.to_domain_event(notification)
        count += len(page)
        after = page[-1].id
    elapsed = time.perf_counter() - start
    reader.close()
    return count, elapsed


def offline_rebuild(events: int) -> Figure:
    database, export = _the_log(events)
    decoded, decode_time = _plain_read_and_decode(database)
    into = Path(tempfile.mkdtemp(prefix="bench-rebuild-")) / "rebuilt.sqlite"
    start = time.perf_counter()
    folded = rebuild_export(export, into, all_projections())
    fold_time = time.perf_counter() - start
    shutil.rmtree(into.parent, ignore_errors=True)
    assert folded == decoded, (folded, decoded)
    rate, baseline = folded / fold_time, decoded / decode_time
    return Figure("offline_rebuild", "offline", "events/s", rate, baseline, rate / baseline)


# Peak RSS from /proc (VmHWM, this process image only): ru_maxrss would also count the
# parent's pages the child had between fork and exec. The rebuild runs in two processes
# (it folds, a writer process commits): the figure is the sum of both peaks.
_CHILD = """
import sys, time
from projections import all_projections
from projections.offline import offline_rebuild
start = time.perf_counter()
stats = {}
n = offline_rebuild(sys.argv[1], sys.argv[2], all_projections(), stats=stats)
seconds = time.perf_counter() - start
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(n, peak + stats["writer_peak_kb"], seconds)
"""


def _slice_export(export: Path, events: int, into: Path) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(str(export))
    # Row groups as `export_log` writes them (10,000 records): a reader holds one at a time.
    pq.write_table(table.slice(0, events), str(into), row_group_size=10_000)


def _peak_rss_mb(export: Path) -> tuple[int, float]:
    """(events folded, peak RSS in MB) of an offline rebuild in a fresh process."""
    into = export.with_suffix(".rebuilt.sqlite")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(export), str(into)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    folded, max_rss_kb, _seconds = out.stdout.split()
    into.unlink(missing_ok=True)
    return int(folded), int(max_rss_kb) / 1024


def rebuild_memory(events: int) -> Figure:
    """Peak RSS of the offline rebuild of the first N and the first 2N events of the log
    (N = `events`)."""
    _, export = _the_log(2 * events)
    folder = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    _slice_export(export, events, folder / "n.parquet")
    _slice_export(export, 2 * events, folder / "2n.parquet")
    _, at_n = _peak_rss_mb(folder / "n.parquet")
    _, at_2n = _peak_rss_mb(folder / "2n.parquet")
    shutil.rmtree(folder, ignore_errors=True)
    return Figure("rebuild_memory", "offline", "MB", at_2n, at_n, at_n / at_2n)


def main() -> None:
    """`python -m benchmarks.projection_cases [events [memory_n]]`: these cases alone."""
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    memory = int(sys.argv[2]) if len(sys.argv) > 2 else events // 4
    cases: list[Callable[[], Figure]] = [
        lambda: projection_catchup("sqlite", events),
        lambda: projection_catchup("postgres", events),
        lambda: offline_rebuild(events),
        lambda: rebuild_memory(memory),
    ]
    for case in cases:
        start = time.perf_counter()
        figure = case()
        print(json.dumps({**vars(figure), "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
