"""Load: 8 writer threads and 2 writer processes against one PostgreSQL, with the
projection runner and readers running. Nothing is lost, duplicated or misordered: checked
by counts, by the hash chains, and by the projections against a fold of the log.

`scripts/test` runs 300 commands per writer; `scripts/test --long` 10,000 (100,000 in all).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from uuid import UUID

import pytest

from ledger.application import open_ledger
from ledger.checkpoints import check_integrity
from ledger.domain.identity import order_id_for
from projections import all_projections
from projections.runner import LedgerLog, ProjectionRunner
from projections.store import store_for_ledger_url
from projections.verify import verify
from tests.integration.load_work import issue
from tests.scale import report, scaled

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.postgres
def test_eight_threads_and_two_processes_lose_double_and_misorder_nothing(
    postgres_url: str,
) -> None:
    url = postgres_url
    per_writer = scaled(300, 10_000)
    ledger = open_ledger(url)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.load_writer", url, f"p{i}", str(per_writer)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    stop = threading.Event()
    acknowledged: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    reads = [0]
    store = store_for_ledger_url(ledger.storage)
    runner = ProjectionRunner(LedgerLog(ledger), store, all_projections())

    def write(tag: str) -> None:
        try:
            acknowledged[tag] = issue(ledger, tag, per_writer)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def read() -> None:
        seen: dict[UUID, int] = {}
        try:
            while not stop.is_set():
                tag = f"t{random.randrange(8)}"
                known = acknowledged.get(tag) or []
                order_id = order_id_for("AB1234", f"{tag}-{random.randrange(5)}")
                try:
                    order = ledger.get_order(order_id)
                except Exception:
                    if known:
                        raise
                    continue
                assert order.version >= seen.get(order_id, 0)  # never goes back
                seen[order_id] = order.version
                reads[0] += 1
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def project() -> None:
        try:
            runner.run_forever(stop, poll_interval=0.05)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    writers = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(8)]
    helpers = [threading.Thread(target=read), threading.Thread(target=project)]
    started = time.monotonic()
    for thread in writers + helpers:
        thread.start()
    for thread in writers:
        thread.join()
    outputs = [p.communicate(timeout=600) for p in processes]
    elapsed = time.monotonic() - started
    stop.set()
    for thread in helpers:
        thread.join()
    try:
        assert errors == []
        for process, (out, err) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, err
            result = json.loads(out.strip().splitlines()[-1])
            acknowledged[result["tag"]] = result["orders"]
        assert len(acknowledged) == 10
        expected = {cid for orders in acknowledged.values() for cid in orders}
        assert len(expected) == 10 * (per_writer // 4)

        orders = ledger.all_orders()
        assert sorted(o.client_order_id for o in orders) == sorted(expected)  # none lost
        for order in orders:  # none doubled
            assert order.version == 4
            assert order.filled_quantity == 100
            assert order.trade_ids == {
                f"T-{order.client_order_id}-a",
                f"T-{order.client_order_id}-b",
            }
        integrity = check_integrity(ledger)  # chains: nothing missing, inserted or reordered
        assert integrity.ok, integrity.findings[:5]
        assert integrity.chains.chained == integrity.chains.events == 4 * len(expected)

        runner.catch_up()
        checked = verify(ledger, store, all_projections())  # projections == fold of the log
        assert checked.ok, checked.problems
        report(
            "load",
            backend="postgres",
            writer_threads=8,
            writer_processes=2,
            commands_per_writer=per_writer,
            commands=4 * len(expected),
            events_checked=integrity.chains.events,
            reads=reads[0],
            seconds=round(elapsed, 1),
        )
    finally:
        store.close()
        ledger.close()
