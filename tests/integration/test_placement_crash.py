"""Kill the dispatcher between `Submitted` and the broker's reply: on restart exactly one
order exists at the broker and the ledger shows it. SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger.application import OrderLedger
from ledger.domain.status import OrderStatus
from ledger.kite.sandbox import KiteSandbox
from tests.kite_support import gateway_for, submit

ROOT = Path(__file__).resolve().parents[2]


def _child(url: str, sandbox: KiteSandbox, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.placement_child", url, sandbox.root, mode],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("mode", ["before-send", "wait"])
def test_killed_dispatcher_places_exactly_once(
    ledger: OrderLedger, database_url: str, mode: str
) -> None:
    with KiteSandbox(seed=3) as sandbox:
        order = submit(ledger, f"crash-{mode}", quantity=10, price="800.00")
        if mode == "wait":
            sandbox.faults.delay_placement_response = 3.0
        child = _child(database_url, sandbox, mode)
        if mode == "wait":
            deadline = time.monotonic() + 20
            while not sandbox.orders and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(sandbox.orders) == 1, "the placement never reached the sandbox"
            child.send_signal(signal.SIGKILL)  # the broker has it; Accepted is not recorded
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        assert ledger.get_order(order.id).status is OrderStatus.SUBMITTED
        sandbox.faults.delay_placement_response = 0.0

        gateway = gateway_for(ledger, sandbox, unknown_outcome_grace=0.3)
        deadline = time.monotonic() + 5  # the dead one's lease (0.5 s) and the grace
        while time.monotonic() < deadline:  # the restarted dispatcher, pass after pass
            gateway.dispatch()
            if ledger.get_order(order.id).status is not OrderStatus.SUBMITTED:
                break
            time.sleep(0.1)
        for _ in range(5):  # and a few passes more: nothing is sent again
            gateway.dispatch()
            time.sleep(0.1)
        assert len(sandbox.orders) == 1, "placed twice"
        recorded = ledger.get_order(order.id)
        assert recorded.broker_order_id == next(iter(sandbox.orders))
        assert recorded.status is OrderStatus.ACCEPTED
