"""The main job, end to end: `kite-ledger demo` on a fresh SQLite file, as a user runs it."""

from __future__ import annotations

import json
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
    first = run("demo", "--scripted", cwd=tmp_path)
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

    second = run("demo", "--scripted", cwd=tmp_path)
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
    assert run("demo", "--scripted", cwd=tmp_path).returncode == 0
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
    if message == "no such order":
        assert run("demo", "--scripted", cwd=tmp_path).returncode == 0
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def submit_args(client_order_id: str, price: str) -> list[str]:
    return (
        f"submit --account ZD1 --client-order-id {client_order_id} --instrument NSE:SBIN"
        f" --side buy --quantity 10 --type limit --product cnc --price {price}"
    ).split()


def test_write_commands_and_their_errors(tmp_path: Path) -> None:
    submitted = run(*submit_args("x1", "812.35"), "--format", "json", cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    order_id = json.loads(submitted.stdout)[0]["order_id"]
    again = run(*submit_args("x1", "812.35"), "--format", "json", cwd=tmp_path)
    assert json.loads(again.stdout)[0]["version"] == 1  # a retry writes nothing
    bad_tick = run(*submit_args("x2", "812.33"), cwd=tmp_path)
    assert bad_tick.returncode == 2
    assert "not a multiple of the tick size 0.05" in bad_tick.stderr
    modify_early = run("modify", order_id, "--price", "813", cwd=tmp_path)
    assert modify_early.returncode == 2
    assert "has not accepted it yet" in modify_early.stderr
    cancelled = run("cancel", order_id, "--reason", "changed my mind", cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "PENDING_CANCEL" in cancelled.stdout
    shown = json.loads(run("order", order_id, "--format", "json", cwd=tmp_path).stdout)
    assert [e["type"] for e in shown["events"]] == ["Submitted", "CancelRequested"]
    listed = run(
        "orders",
        "--instrument",
        "NSE:SBIN",
        "--date",
        "2000-01-01",
        "--format",
        "csv",
        cwd=tmp_path,
    )
    assert listed.stdout.strip().splitlines() == [listed.stdout.strip().splitlines()[0]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["orders", "--instrument", "SBIN"], "is not EXCHANGE:SYMBOL"),
        (["orders", "--date", "24/11/2026"], "is not a date"),
        (["orders", "--format", "xml"], "--format: 'xml'"),
        (["verify"], "does not exist"),
        (["positions"], "does not exist"),
        (["cancel", "nope"], "is not an order id"),
    ],
)
def test_more_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    if args[0] == "orders":
        assert run("demo", "--scripted", cwd=tmp_path).returncode == 0
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr
