"""Kill the projection runner (SIGKILL) at random points, restart it, and find every
projection equal to a clean rebuild. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

from ledger.application import OrderLedger
from ledger.demo import run_session
from projections import all_projections
from projections.store import store_for_ledger_url
from tests.support import log_events

ROOT = Path(__file__).resolve().parents[2]
KILLS = 6


def _start(url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.runner_child", url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_mid_batch_then_resume_equals_clean_rebuild(
    ledger: OrderLedger, database_url: str
) -> None:
    for _ in range(8):
        run_session(ledger)
    events = ledger.count_events()
    rng = random.Random(20261124)
    killed_mid_run = 0
    for _ in range(KILLS):
        child = _start(database_url)
        assert child.stdout is not None
        child.stdout.readline()  # "started": the runner has loaded its views
        time.sleep(rng.uniform(0.0, 0.25))
        if child.poll() is None:
            child.kill()  # SIGKILL: no cleanup, no rollback by the process itself
            killed_mid_run += 1
        child.wait(timeout=30)
    final = _start(database_url)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    assert "done" in out

    store = store_for_ledger_url(database_url)
    try:
        everything = log_events(ledger)
        assert len(everything) == events
        for projection in all_projections():
            assert store.position(projection) == everything[-1][0]
            assert store.load_view(projection).contents() == projection.fold(everything).contents()
    finally:
        store.close()
    assert killed_mid_run >= 1, "no kill landed while the runner was working"
