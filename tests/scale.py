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


def report(suite: str, **figures: int | float | str) -> None:
    """Note what a long-running test did (kill points, faults, inputs, events checked).

    Appends one JSON line to the file named by `LEDGER_RELIABILITY_REPORT`, when set
    (`scripts/test --long` sets it), so docs/reliability.md can quote the last long run.
    """
    target = os.environ.get("LEDGER_RELIABILITY_REPORT")
    if not target:
        return
    import json
    from datetime import UTC, datetime

    line = {"suite": suite, "long": LONG, "at": datetime.now(UTC).isoformat(), **figures}
    with open(target, "a", encoding="utf-8") as out:
        out.write(json.dumps(line, sort_keys=True) + "\n")
