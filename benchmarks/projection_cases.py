"""Projection cases: catch-up from the log and the offline rebuild from an export."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import Figure, ledger_commands, places
from ledger.application import open_ledger
from projections import all_projections
from projections.offline import export_log, read_export
from projections.pointintime import fold_all


def projection_catchup(backend: str, events: int) -> Figure:
    """Every projection brought up to date from a log of `events` events, against reading
    the same rows in keyset pages without decoding them (the read ceiling). The
    ProjectionRunner baseline is still to come (it needs a PostgreSQL subscription and its
    own view classes)."""
    from projections.runner import LedgerLog, ProjectionRunner
    from projections.store import store_for_ledger_url

    with places(backend) as (url, _, _raw):
        ledger = open_ledger(url)
        ledger_commands(ledger, events // 4, "c")
        store = store_for_ledger_url(ledger.storage)
        start = time.perf_counter()
        folded = ProjectionRunner(LedgerLog(ledger), store, all_projections()).catch_up()
        runner_time = time.perf_counter() - start
        store.close()
        start = time.perf_counter()
        after, rows = 0, 0
        while batch := ledger.recorder.select_notifications(
            start=after, limit=5000, inclusive_of_start=False
        ):
            rows += len(batch)
            after = batch[-1].id
        read_time = time.perf_counter() - start
        ledger.close()
    rate, ceiling = folded / runner_time, rows / read_time
    return Figure("projection_catchup", backend, "events/s", rate, ceiling, rate / ceiling, ceiling)


def offline_rebuild(events: int) -> Figure:
    with places("sqlite") as (url, _, _raw):
        ledger = open_ledger(url)
        ledger_commands(ledger, events // 4, "o")
        export = Path(url).with_name("log.parquet")
        export_log(ledger, export)
        ledger.close()
    start = time.perf_counter()
    decoded = sum(len(chunk) for chunk in read_export(export))
    decode_time = time.perf_counter() - start
    start = time.perf_counter()
    fold_all((item for chunk in read_export(export) for item in chunk), all_projections())
    fold_time = time.perf_counter() - start
    return Figure(
        "offline_rebuild",
        "offline",
        "events/s",
        decoded / fold_time,
        decoded / decode_time,
        decode_time / fold_time,
    )
