"""A projection runner process for the crash test: slow on purpose, so a SIGKILL from the
test lands at random points, including inside a batch's transaction."""

from __future__ import annotations

import sys
import time
from typing import Any

from ledger.application import open_ledger
from projections import all_projections
from projections.runner import LedgerLog, ProjectionRunner
from projections.store import store_for_ledger_url


def main(url: str) -> None:
    with open_ledger(url) as ledger:
        store = store_for_ledger_url(url)

        def slow_commit_point(*_: Any) -> None:
            time.sleep(0.004)  # inside the transaction, just before COMMIT

        store.count_transaction = slow_commit_point  # type: ignore[method-assign]
        runner = ProjectionRunner(LedgerLog(ledger), store, all_projections(), batch_size=3)
        print("started", runner.position, flush=True)
        runner.catch_up()
        print("done", runner.position, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
