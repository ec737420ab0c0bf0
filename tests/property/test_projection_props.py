"""Properties of the projections, on SQLite and on PostgreSQL:

* maintained live (batches of any size, interleaved with writes to many orders) they equal
  a rebuild from scratch and a plain in-memory fold;
* an offline rebuild from an export equals them;
* positions as of T equal the fold of the events recorded up to T;
* realised + unrealised P&L equals the mark-to-market change of all fills, to the paisa.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from ledger.application import open_ledger
from ledger.domain.order import Order
from ledger.domain.values import Exchange, InstrumentRef
from projections import all_projections
from projections.offline import export_log, offline_rebuild
from projections.pnl import pnl_report
from projections.pointintime import as_of
from projections.positions import PositionsProjection
from projections.rebuild import rebuild
from projections.runner import LedgerLog, ProjectionRunner
from projections.store import (
    PostgresProjectionStore,
    ProjectionStore,
    store_for_file,
    store_for_ledger_url,
)
from tests.flows import INSTRUMENTS, Intent, drive, intents
from tests.support import FakeClock, log_events

PROPERTY_SETTINGS = settings(max_examples=15, deadline=None)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":

        @contextmanager
        def sqlite_place() -> Iterator[tuple[str, Any]]:
            folder = tmp_path / uuid.uuid4().hex
            folder.mkdir()
            url = str(folder / "ledger.db")
            yield url, lambda: store_for_file(folder / "rebuilt.sqlite")

        return sqlite_place
    database: str = request.getfixturevalue("postgres_database")

    @contextmanager
    def postgres_place() -> Iterator[tuple[str, Any]]:
        schema = f"p_{uuid.uuid4().hex[:12]}"
        other = f"r_{uuid.uuid4().hex[:12]}"
        conninfo = database
        try:
            yield (
                f"{database}?schema={schema}",
                lambda: PostgresProjectionStore(conninfo, other),
            )
        finally:
            with psycopg.connect(database, autocommit=True) as conn:
                for name in (schema, other):
                    conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                    )

    return postgres_place


def tables(store: ProjectionStore) -> dict[str, Any]:
    return {p.name: store.load_view(p).contents() for p in all_projections()}


@PROPERTY_SETTINGS
@given(
    plan=intents(),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=6),
    batch_size=st.integers(min_value=1, max_value=12),
    cached_orders=st.integers(min_value=0, max_value=4),
)
def test_live_equals_rebuilt_equals_offline(
    backend: Any,
    tmp_path: Path,
    plan: list[Intent],
    cuts: list[int],
    batch_size: int,
    cached_orders: int,
) -> None:
    with backend() as (url, other_store):
        clock = FakeClock()
        with open_ledger(url, clock=clock) as ledger:
            live_store = store_for_ledger_url(url)
            # Per-order rows are let go after a few orders and loaded again when needed.
            runner = ProjectionRunner(
                LedgerLog(ledger),
                live_store,
                all_projections(),
                batch_size=batch_size,
                cached_orders=cached_orders,
            )
            # Writes and projection batches interleave at the cut points.
            start = 0
            for cut in [*sorted(set(cuts)), len(plan)]:
                drive(ledger, plan[start:cut])
                start = max(start, cut)
                runner.run_once()
            runner.catch_up()
            live = tables(live_store)
            events = log_events(ledger)

            assert live == {p.name: p.fold(events).contents() for p in all_projections()}
            assert_pnl_is_mark_to_market(live_store, events)

            rebuilt_store = other_store()
            rebuild(LedgerLog(ledger), rebuilt_store, all_projections(), batch_size=batch_size + 3)
            assert tables(rebuilt_store) == live
            rebuilt_store.close()

            export = tmp_path / f"{uuid.uuid4().hex}.parquet"
            export_log(ledger, export)
            duck = tmp_path / f"{uuid.uuid4().hex}.duckdb"
            offline_rebuild(export, duck, all_projections())
            offline_store = store_for_file(duck)
            assert tables(offline_store) == live
            offline_store.close()
            live_store.close()

            if events:
                middle = events[len(events) // 2][1].timestamp
                then = as_of(LedgerLog(ledger), [PositionsProjection()], middle)
                expected = PositionsProjection().fold(
                    [(n, e) for n, e in events if e.timestamp <= middle]
                )
                assert then["positions"].contents() == expected.contents()
                assert middle < clock.now + timedelta(seconds=1)


def assert_pnl_is_mark_to_market(store: ProjectionStore, events: list[Any]) -> None:
    """Against marks one tick above each instrument's base price, the stored P&L's
    realised + unrealised equals the fills' mark-to-market change."""
    marks = {
        InstrumentRef(Exchange.NSE, symbol): Decimal(base) + tick
        for symbol, tick, base in INSTRUMENTS
    }
    pnl = next(p for p in all_projections() if p.name == "pnl")
    report = pnl_report(store.load_view(pnl), "strategy", marks)
    fills = [e for _, e in events if isinstance(e, Order.Filled)]
    mtm = sum(
        ((marks[f.instrument] - f.price) * f.quantity * f.side.sign for f in fills), Decimal(0)
    )
    total = sum((line.realised_pnl + line.unrealised_pnl for line in report), Decimal(0))
    assert abs(total - mtm) < Decimal("0.01")


@settings(max_examples=40, deadline=None)
@given(plan=intents(max_orders=8), marks=st.lists(st.integers(-50, 50), min_size=3, max_size=3))
def test_realised_plus_unrealised_equals_mark_to_market(
    tmp_path_factory: pytest.TempPathFactory, plan: list[Intent], marks: list[int]
) -> None:
    folder = tmp_path_factory.mktemp("pnl")
    with open_ledger(folder / "ledger.db", clock=FakeClock()) as ledger:
        drive(ledger, plan)
        events = log_events(ledger)
    mark_prices = {
        InstrumentRef(Exchange.NSE, symbol): Decimal(base) + ticks * tick
        for (symbol, tick, base), ticks in zip(INSTRUMENTS, marks, strict=True)
    }
    pnl = next(p for p in all_projections() if p.name == "pnl").fold(events)
    report = pnl_report(pnl, "instrument", mark_prices)
    fills = [e for _, e in events if isinstance(e, Order.Filled)]
    mtm = sum(
        ((mark_prices[f.instrument] - f.price) * f.quantity * f.side.sign for f in fills),
        Decimal(0),
    )
    total = sum((line.realised_pnl + line.unrealised_pnl for line in report), Decimal(0))
    assert abs(total - mtm) < Decimal("0.01")
    charges = sum((f.charges or Decimal(0) for f in fills), Decimal(0))
    assert sum((line.charges for line in report), Decimal(0)) == charges
