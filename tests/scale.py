"""How big the long-running tests run.

`scripts/test` runs the crash, fault, load and fuzz suites at a size that keeps the whole
suite within a few minutes; `scripts/test --long` sets `LEDGER_LONG=1` and they run at the
size the reliability figures in docs/reliability.md come from.
"""

from __future__ import annotations

import os

LONG = os.environ.get("LEDGER_LONG", "") == "1"


def scaled(short: int, long: int) -> int:
    """`long` under `scripts/test --long`, else `short`."""
    return long if LONG else short
