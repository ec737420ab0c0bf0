"""`kite-ledger demo` (what scripts/demo runs) and the commands a user runs after it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger.application import open_ledger
from ledger.domain.status import OrderStatus
from projections.positions import PositionsProjection
from projections.runner import LedgerLog
from projections.store import store_for_file

CLI = [sys.executable, "-m", "ledger"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LEDGER_DATABASE_URL"}
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    folder = tmp_path_factory.mktemp("kite-demo")
    started = time.monotonic()
    result = run("demo", cwd=folder)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    return folder, result.stdout, elapsed


def test_the_demo_shows_the_whole_product(demo: tuple[Path, str, float]) -> None:
    folder, out, elapsed = demo
    assert elapsed < 120
    with open_ledger(folder / "ledger.db") as ledger:
        orders = ledger.all_orders()
    statuses = {o.status for o in orders}
    assert len(statuses) >= 4, statuses
    assert any(0 < o.filled_quantity < o.quantity for o in orders), "no partial fill"
    assert all(f.charges is not None and f.charges > 0 for o in orders for f in o.fills)
    for status in statuses:
        assert status.value in out
    assert "Positions" in out
    assert "P&L by instrument" in out
    assert "Execution summary" in out
    assert "total_commission" in out
    assert "kite-ledger verify" in out  # says what to try next
    assert "late fills after a cancel: " in out
    assert [line for line in out.splitlines() if line.startswith("│ ZD1234")]  # positions rows


def test_verify_after_the_demo(demo: tuple[Path, str, float]) -> None:
    folder, _, _ = demo
    result = run("verify", cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "projections equal the log" in result.stdout


def test_offline_rebuild_positions_equal_the_positions_command(
    demo: tuple[Path, str, float],
) -> None:
    folder, _, _ = demo
    shown = run("positions", "--format", "json", cwd=folder)
    assert shown.returncode == 0, shown.stderr
    live = json.loads(shown.stdout)
    assert any(Decimal(p["realised_pnl"]) != 0 for p in live), "no realised P&L"
    assert run("export", "--format", "parquet", "--out", "log.parquet", cwd=folder).returncode == 0
    rebuilt = run(
        "offline-rebuild", "--from", "log.parquet", "--into", "offline.duckdb", cwd=folder
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    store = store_for_file(folder / "offline.duckdb")
    try:
        offline = store.load_view(PositionsProjection()).rows("positions")
        as_json: list[dict[str, Any]] = []
        for p in sorted(offline, key=lambda p: (p.account, p.exchange, p.tradingsymbol, p.product)):
            row = {name: getattr(p, name) for name in p.__dataclass_fields__}
            as_json.append(row)
    finally:
        store.close()
    assert len(as_json) == len(live)
    for mine, theirs in zip(as_json, live, strict=True):
        for name, value in mine.items():
            shown_value = theirs[name]
            if isinstance(value, Decimal):
                assert Decimal(shown_value) == value, (name, shown_value, value)
            else:
                assert shown_value == value, (name, shown_value, value)


def test_positions_as_of_mid_session(demo: tuple[Path, str, float]) -> None:
    folder, _, _ = demo
    with open_ledger(folder / "ledger.db") as ledger:
        events = []
        log, after = LedgerLog(ledger), 0
        while batch := log.read(after, 1000):
            events += batch
            after = batch[-1][0]
    middle = events[len(events) // 2][1].timestamp
    then = json.loads(
        run("positions", "--as-of", middle.isoformat(), "--format", "json", cwd=folder).stdout
    )
    now = json.loads(run("positions", "--format", "json", cwd=folder).stdout)
    assert then != now
    expected = PositionsProjection().fold([(n, e) for n, e in events if e.timestamp <= middle])
    assert [(p["tradingsymbol"], p["net_quantity"]) for p in then] == [
        (p.tradingsymbol, p.net_quantity)
        for p in sorted(
            expected.rows("positions"),
            key=lambda p: (p.account, p.exchange, p.tradingsymbol, p.product),
        )
    ]


def test_orders_still_working_at_the_end(demo: tuple[Path, str, float]) -> None:
    folder, _, _ = demo
    working = json.loads(
        run("orders", "--status", "ACCEPTED", "--format", "json", cwd=folder).stdout
    )
    partial = json.loads(
        run("orders", "--status", "PARTIALLY_FILLED", "--format", "json", cwd=folder).stdout
    )
    assert working or partial
    assert {o["status"] for o in working} <= {OrderStatus.ACCEPTED.value}
    assert {o["status"] for o in partial} <= {OrderStatus.PARTIALLY_FILLED.value}
