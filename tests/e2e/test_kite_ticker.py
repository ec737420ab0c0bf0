"""The real KiteTicker receives the sandbox's order updates, and they alone converge the
ledger to the broker's books (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_websocket_updates_converge_the_ledger(database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.e2e.ticker_child", database_url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok 9 orders")
