"""The main job, end to end: `kite-ledger demo` on a fresh SQLite file, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.application import open_ledger
from ledger.domain.status import OrderStatus

CLI = [sys.executable, "-m", "ledger"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LEDGER_DATABASE_URL"}
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_demo_on_the_default_database_twice(tmp_path: Path) -> None:
    first = run("demo", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    for expected in (
        "Demo session 1",
        "s1-sbin-buy",
        "FILLED",
        "PARTIALLY_FILLED",
        "CANCELLED",
        "REJECTED",
        "812.32",  # 40 @ 812.35 and 60 @ 812.30
        "History of s1-infy-sell",
        "CancelRequested",
        "would overfill",
        "not a multiple of the tick size",
        "unknown instrument 'NSE:NOSUCHCO'",
    ):
        assert expected in out, f"{expected!r} missing from demo output"
    assert (tmp_path / "ledger.db").exists()

    second = run("demo", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "Demo session 2" in second.stdout

    with open_ledger(tmp_path / "ledger.db") as ledger:
        orders = ledger.list_orders()
        assert len(orders) == 14
        statuses = {o.status for o in orders}
        assert {
            OrderStatus.FILLED,
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.CANCELLED,
            OrderStatus.REJECTED,
        } <= statuses
        late = ledger.find_order("ZD1234", "s1-infy-sell")
        assert late.status is OrderStatus.CANCELLED
        assert late.filled_quantity == 10
        sbin = ledger.find_order("ZD1234", "s1-sbin-buy")
        assert len(sbin.fills) == 2  # the duplicate WebSocket report counted once


def test_orders_and_order_commands(tmp_path: Path) -> None:
    assert run("demo", cwd=tmp_path).returncode == 0
    listed = run("orders", "--status", "cancelled", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "s1-infy-sell" in listed.stdout
    assert "s1-sbin-buy" not in listed.stdout
    with open_ledger(tmp_path / "ledger.db") as ledger:
        order_id = ledger.find_order("ZD1234", "s1-rel-buy").id
    shown = run("order", str(order_id), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "ModifyRequested" in shown.stdout
    assert "Modified" in shown.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["order", "not-a-uuid"], "is not an order id"),
        (["order", "00000000-0000-0000-0000-000000000000"], "no such order"),
        (["orders", "--status", "DONE"], "unknown status 'DONE'"),
        (["orders", "--db", "mysql://x/y"], "unsupported scheme 'mysql'"),
        (["orders", "--db", "/no/such/dir/x.db"], "does not exist"),
    ],
)
def test_errors_are_one_line_without_traceback(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
