"""What every benchmark case shares: the figure it reports, the places it measures in, and
the order mix the ledger is driven with."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ledger.application import OrderLedger
from ledger.commands import RecordAccepted, RecordFill, SubmitOrder
from ledger.domain.values import Exchange, OrderType, Product, Side

POSTGRES_URL = os.environ.get(
    "LEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@dataclass
class Figure:
    """One line of the report: ratio is always "higher is better"."""

    case: str
    backend: str
    unit: str
    ledger: float
    baseline: float
    ratio: float
    ceiling: float | None = None


# ---------------------------------------------------------------- places to measure in


@contextmanager
def places(backend: str) -> Iterator[tuple[str, dict[str, str], Callable[[], Any]]]:
    """(ledger URL, eventsourcing env for the plain app, raw connection factory)."""
    if backend == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="bench-"))
        plain_env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(folder / "plain.db"),
        }

        def raw() -> Any:
            conn = sqlite3.connect(folder / "raw.db", isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            return conn

        try:
            yield str(folder / "ledger.db"), plain_env, raw
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = POSTGRES_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    parts = psycopg.conninfo.conninfo_to_dict(url)
    plain_env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": name,
        "POSTGRES_HOST": str(parts.get("host", "127.0.0.1")),
        "POSTGRES_PORT": str(parts.get("port", "5432")),
        "POSTGRES_USER": str(parts.get("user", "postgres")),
        "POSTGRES_PASSWORD": str(parts.get("password", "")),
        "POSTGRES_SCHEMA": "plain",
    }
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA plain")
    try:
        yield f"{url}?schema=ledger", plain_env, lambda: psycopg.connect(url, autocommit=True)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def sbin_buy(client_order_id: str, quantity: int) -> SubmitOrder:
    """The order every case submits: a limit buy of SBIN."""
    return SubmitOrder(
        account="B1",
        client_order_id=client_order_id,
        exchange=Exchange.NSE,
        tradingsymbol="SBIN",
        side=Side.BUY,
        quantity=quantity,
        order_type=OrderType.LIMIT,
        product=Product.CNC,
        price=Decimal("812.35"),
    )


def ledger_commands(ledger: OrderLedger, n: int, tag: str) -> list[float]:
    latencies = []
    for i in range(n):
        start = time.perf_counter()
        order = ledger.submit(sbin_buy(f"{tag}-{i}", 100))
        latencies.append(time.perf_counter() - start)
        for update in (
            RecordAccepted(order_id=order.id, broker_order_id=f"B{tag}{i}"),
            RecordFill(
                order_id=order.id,
                trade_id=f"{tag}-{i}-1",
                exchange=Exchange.NSE,
                tradingsymbol="SBIN",
                quantity=40,
                price=Decimal("812.30"),
            ),
            RecordFill(
                order_id=order.id,
                trade_id=f"{tag}-{i}-2",
                exchange=Exchange.NSE,
                tradingsymbol="SBIN",
                quantity=60,
                price=Decimal("812.35"),
            ),
        ):
            start = time.perf_counter()
            ledger.record(update)
            latencies.append(time.perf_counter() - start)
    return latencies
