"""How cost grows from N to 10N events, in one run: `python -m benchmarks.growth [N]`.

* commands: durable commands per second (the append_one_writer mix) on an empty log, and on
  a log already holding 10N events (commands read only the order they change, so their
  cost should not depend on the log's length);
* projection_catchup: events per second over logs of N and of 10N events;
* offline_rebuild: events per second rebuilding from exports of N and of 10N events.

Each line is one JSON object: {"case", "backend", "n", "rate_at_n", "rate_at_10n",
"ratio"} (ratio = rate at 10N / rate at N: 1.0 means the cost per event did not grow).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from collections.abc import Iterator

from eventsourcing.persistence import StoredEvent

from benchmarks.common import ledger_commands, places
from benchmarks.projection_cases import offline_rebuild, projection_catchup
from ledger.application import OrderLedger, open_ledger


def _filler(count: int) -> Iterator[list[StoredEvent]]:
    """`count` stored events of other orders, 5,000 at a time, to make the log long."""
    state = b'{"quantity":100,"price":{"_type_":"decimal_str","_data_":"812.35"}}' * 8
    made = 0
    while made < count:
        size = min(5000, count - made)
        yield [StoredEvent(uuid.uuid4(), 1, "bench.filler", state) for _ in range(size)]
        made += size


def _command_rate(ledger: OrderLedger, tag: str, rounds: int = 3) -> float:
    rates = []
    for r in range(rounds):
        latencies = ledger_commands(ledger, 100, f"{tag}{r}")
        rates.append(len(latencies) / sum(latencies))
    return statistics.median(rates)


def command_growth(backend: str, n: int) -> dict[str, object]:
    with places(backend) as (url, _, _raw):
        ledger = open_ledger(url)
        at_empty = _command_rate(ledger, "empty")
        for chunk in _filler(10 * n):
            ledger.recorder.insert_events(chunk)
        at_10n = _command_rate(ledger, "long")
        ledger.close()
    return _line("commands", backend, n, at_empty, at_10n)


def _line(case: str, backend: str, n: int, at_n: float, at_10n: float) -> dict[str, object]:
    return {
        "case": case,
        "backend": backend,
        "n": n,
        "rate_at_n": round(at_n, 1),
        "rate_at_10n": round(at_10n, 1),
        "ratio": round(at_10n / at_n, 3),
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    # Smaller logs first: a case reuses the smallest log made so far that is big enough.
    small = {
        "sqlite": projection_catchup("sqlite", n).ledger,
        "postgres": projection_catchup("postgres", n).ledger,
        "offline": offline_rebuild(n).ledger,
    }
    large = {
        "sqlite": projection_catchup("sqlite", 10 * n).ledger,
        "postgres": projection_catchup("postgres", 10 * n).ledger,
        "offline": offline_rebuild(10 * n).ledger,
    }
    for backend in ("sqlite", "postgres"):
        print(json.dumps(command_growth(backend, n)), flush=True)
    for key, case in (
        ("sqlite", "projection_catchup"),
        ("postgres", "projection_catchup"),
        ("offline", "offline_rebuild"),
    ):
        print(json.dumps(_line(case, key, n, small[key], large[key])), flush=True)


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))
