"""`scripts/bench`: this ledger side by side with the plain `eventsourcing` way and the raw
database ceiling, in one process, interleaved, with ratios to the baseline of the same run.

Cases measured so far (DESIGN.md "Performance: how it is measured"):

* append_one_writer: durable commands per second, one writer, submit + accept + two fills
  per order, one commit per command. Baseline: a plain `eventsourcing` application whose
  aggregate records the same four events (`repository.get` + `save` per command). Ceiling:
  plain parameterised inserts, one commit each.
* command_latency_p99: microseconds from command call to durable under that load.
  Baseline: the raw single-commit p50 (the target is <= 3x of it).
* load_long_order: time to load an order with 1,000 fills against one with 10.
* offline_rebuild: events per second folding every projection from an export, no server,
  against plain read-and-decode of the same export.

Ratios are "higher is better": ledger / baseline for rates, baseline / ledger for times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from benchmarks.common import Figure, ledger_commands, places, sbin_buy
from benchmarks.projection_cases import offline_rebuild, projection_catchup, rebuild_memory
from ledger.application import open_ledger
from ledger.commands import RecordAccepted, RecordFill
from ledger.domain.values import Exchange

# ---------------------------------------------------------------- the plain eventsourcing way


class PlainOrder(Aggregate):
    """What a team would write with the library and nothing else."""

    @event("Submitted")
    def __init__(
        self, account: str, client_order_id: str, symbol: str, quantity: int, price: Decimal
    ) -> None:
        self.account = account
        self.client_order_id = client_order_id
        self.symbol = symbol
        self.quantity = quantity
        self.price = price
        self.filled = 0
        self.broker_id = ""

    @event("Accepted")
    def accept(self, broker_id: str) -> None:
        self.broker_id = broker_id

    @event("Filled")
    def fill(self, trade_id: str, quantity: int, price: Decimal) -> None:
        self.filled += quantity


class PlainApp(Application[uuid.UUID]):
    name = "plain"


def _plain_commands(app: PlainApp, n: int, tag: str) -> list[float]:
    latencies = []
    for i in range(n):
        start = time.perf_counter()
        order = PlainOrder("B1", f"{tag}-{i}", "SBIN", 100, Decimal("812.35"))
        app.save(order)
        latencies.append(time.perf_counter() - start)
        for step in range(3):
            start = time.perf_counter()
            loaded: PlainOrder = app.repository.get(order.id)
            if step == 0:
                loaded.accept(f"B{tag}{i}")
            else:
                loaded.fill(f"{tag}-{i}-{step}", 50, Decimal("812.30"))
            app.save(loaded)
            latencies.append(time.perf_counter() - start)
    return latencies


def _raw_table(connect: Callable[[], Any], backend: str) -> None:
    conn = connect()
    blob = "BLOB" if backend == "sqlite" else "BYTEA"
    conn.execute(
        "CREATE TABLE IF NOT EXISTS raw_events (id TEXT, version INTEGER, topic TEXT,"
        f" state {blob}, PRIMARY KEY (id, version))"
    )
    conn.close()


def _raw_commands(conn: Any, n: int, backend: str) -> list[float]:
    """`n` orders' four rows, one INSERT and one commit each, on `conn`: a connection kept
    for the whole case, as the ledger and the plain application keep theirs. (Opened and
    closed every round, SQLite's WAL was deleted at each close and grew again from empty,
    and an fsync that extends the file costs about twice one that rewrites it: the raw
    rounds of a quick run committed at 180-210 us instead of about 100.)"""
    mark = "?" if backend == "sqlite" else "%s"
    latencies = []
    payload = b'{"quantity":100,"price":"812.35","trade_id":"T1"}' * 4
    for _ in range(n):
        order = uuid.uuid4().hex
        for version in range(1, 5):
            start = time.perf_counter()
            if backend == "sqlite":
                conn.execute("BEGIN")
                conn.execute(
                    f"INSERT INTO raw_events VALUES ({mark},{mark},{mark},{mark})",
                    (order, version, "t", payload),
                )
                conn.execute("COMMIT")
            else:
                with conn.transaction():
                    conn.execute(
                        f"INSERT INTO raw_events VALUES ({mark},{mark},{mark},{mark})",
                        (order, version, "t", payload),
                    )
            latencies.append(time.perf_counter() - start)
    return latencies


def append_one_writer(backend: str, orders: int, rounds: int) -> list[Figure]:
    with places(backend) as (url, plain_env, raw):
        _raw_table(raw, backend)
        ledger = open_ledger(url)
        plain = PlainApp(plain_env)
        raw_conn = raw()
        ledger_rates, plain_rates, raw_rates, ledger_lat, raw_lat = [], [], [], [], []
        for r in range(rounds):  # interleaved, so drift hits all three alike
            lat = ledger_commands(ledger, orders, f"l{r}")
            ledger_rates.append(len(lat) / sum(lat))
            ledger_lat += lat
            lat = _plain_commands(plain, orders, f"p{r}")
            plain_rates.append(len(lat) / sum(lat))
            lat = _raw_commands(raw_conn, orders, backend)
            raw_rates.append(len(lat) / sum(lat))
            raw_lat += lat
        raw_conn.close()
        ledger.close()
        plain.close()
    ledger_rate, plain_rate = statistics.median(ledger_rates), statistics.median(plain_rates)
    p99 = sorted(ledger_lat)[int(len(ledger_lat) * 0.99) - 1] * 1e6
    raw_p50 = statistics.median(raw_lat) * 1e6
    return [
        Figure(
            "append_one_writer",
            backend,
            "commands/s",
            ledger_rate,
            plain_rate,
            ledger_rate / plain_rate,
            statistics.median(raw_rates),
        ),
        Figure("command_latency_p99", backend, "us", p99, raw_p50, raw_p50 / p99),
    ]


def append_8_writers(backend: str, orders: int, rounds: int) -> Figure:
    """Eight writer threads sharing one application (as a multi-strategy process would),
    each with its own orders; commands per second over the wall time of all eight."""
    writers = 8

    def together(work: Callable[[int, str], object], tag: str) -> float:
        threads = [threading.Thread(target=work, args=(i, tag)) for i in range(writers)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - start

    with places(backend) as (url, plain_env, raw):
        _raw_table(raw, backend)
        ledger = open_ledger(url)
        plain = PlainApp(plain_env)
        raw_conns = [raw() for _ in range(writers)]  # one per writer, kept for the case
        ledger_rates, plain_rates, raw_rates = [], [], []
        per_thread = max(orders // writers, 1)
        commands = per_thread * 4 * writers
        for r in range(rounds):
            elapsed = together(
                lambda i, t: ledger_commands(ledger, per_thread, f"{t}-{i}"), f"w{r}"
            )
            ledger_rates.append(commands / elapsed)
            elapsed = together(lambda i, t: _plain_commands(plain, per_thread, f"{t}-{i}"), f"w{r}")
            plain_rates.append(commands / elapsed)
            elapsed = together(lambda i, t: _raw_commands(raw_conns[i], per_thread, backend), "")
            raw_rates.append(commands / elapsed)
        for conn in raw_conns:
            conn.close()
        ledger.close()
        plain.close()
    ledger_rate, plain_rate = statistics.median(ledger_rates), statistics.median(plain_rates)
    return Figure(
        "append_8_writers",
        backend,
        "commands/s",
        ledger_rate,
        plain_rate,
        ledger_rate / plain_rate,
        statistics.median(raw_rates),
    )


def load_long_order(backend: str) -> Figure:
    with places(backend) as (url, _, _raw):
        ledger = open_ledger(url)
        times = {}
        for fills in (10, 1000):
            order = ledger.submit(sbin_buy(f"long-{fills}", fills))
            ledger.record(RecordAccepted(order_id=order.id, broker_order_id=f"L{fills}"))
            for i in range(fills):
                ledger.record(
                    RecordFill(
                        order_id=order.id,
                        trade_id=f"T{i}",
                        exchange=Exchange.NSE,
                        tradingsymbol="SBIN",
                        quantity=1,
                        price=Decimal("812.35"),
                    )
                )
            samples = []
            for _ in range(20):
                start = time.perf_counter()
                ledger.get_order(order.id)
                samples.append(time.perf_counter() - start)
            times[fills] = statistics.median(samples) * 1e6
        ledger.close()
    return Figure("load_long_order", backend, "us", times[1000], times[10], times[10] / times[1000])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (under 3 minutes)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args(argv)
    orders, rounds = (100, 3) if args.quick else (500, 5)
    projected, memory_n = (200_000, 50_000) if args.quick else (1_000_000, 250_000)
    figures: list[Figure] = []
    for backend in args.backends.split(","):
        figures += append_one_writer(backend, orders, rounds)
        if backend == "postgres":
            figures.append(append_8_writers(backend, orders * 2, rounds))
        figures.append(load_long_order(backend))
        figures.append(projection_catchup(backend, projected))
    figures.append(offline_rebuild(projected))
    figures.append(rebuild_memory(memory_n))
    print(
        f"{'case':<22}{'backend':<10}{'unit':<12}{'ledger':>12}{'baseline':>12}{'ratio':>8}{'ceiling':>12}"
    )
    for f in figures:
        ceiling = f"{f.ceiling:12.1f}" if f.ceiling is not None else " " * 12
        print(
            f"{f.case:<22}{f.backend:<10}{f.unit:<12}{f.ledger:12.1f}{f.baseline:12.1f}{f.ratio:8.2f}{ceiling}"
        )
    if args.json:
        args.json.write_text(json.dumps({"figures": [asdict(f) for f in figures]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
