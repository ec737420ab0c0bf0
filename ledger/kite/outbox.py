"""The placement outbox's memory: which requests were ever sent to Kite, and when.

`Submitted` (or a modify / cancel request) is durable in the log before anything is sent.
Before the dispatcher sends, it writes here that it is about to, and commits; after a
timeout, an error whose outcome is unknown, or a crash, that row tells the next dispatcher
to look the order up at Kite by its tag instead of sending it again. So an order is never
placed twice: at worst it is looked up once more than needed.

A request Kite is known to have taken is marked `sent` (after the reply, so a crash before
the mark leaves the outcome unknown, as before): a cancellation or modification Kite took is
not sent again while the exchange works on it. Its `baseline`, written before the send, is
how many records of that kind of request (CANCEL PENDING; MODIFY VALIDATION PENDING and
MODIFY PENDING) Kite's history of the order held then: a newer one is this request's, which
is how its outcome is told apart from an earlier request's, after a restart too.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

from ledger.persistence import StorageSettings

#: Added after the table was first made: a table made before gets them on opening.
_ADDED_COLUMNS = {"sent": "sent INTEGER NOT NULL DEFAULT 0", "baseline": "baseline INTEGER"}
_CREATE = (
    "CREATE TABLE IF NOT EXISTS gateway_outbox (order_id TEXT NOT NULL, request TEXT NOT NULL,"
    " version INTEGER NOT NULL, attempts INTEGER NOT NULL, last_attempt DOUBLE PRECISION NOT NULL,"
    f" {', '.join(_ADDED_COLUMNS.values())}, PRIMARY KEY (order_id, request, version))"
)


@dataclass(frozen=True, slots=True)
class Attempt:
    attempts: int
    #: Epoch seconds: when the latest attempt ended or, while it may still be sending, the
    #: end of its lease (a time to come), before which nobody else may send.
    last_attempt: float
    #: Kite answered a send of it with success.
    sent: bool = False
    #: How many records of this kind of request Kite's history held before the send
    #: (None: not counted, as for placements and rows written before it was kept).
    baseline: int | None = None


class Outbox:
    """Rows of (order id, request kind, order version of the request): attempts made."""

    def __init__(self, storage: StorageSettings) -> None:
        self._lock = threading.Lock()
        self.backend = storage.backend
        if storage.backend == "sqlite":
            assert storage.sqlite_path is not None
            self._conn: Any = sqlite3.connect(
                str(storage.sqlite_path), isolation_level=None, timeout=30, check_same_thread=False
            )
            self._mark = "?"
        else:
            import psycopg
            from psycopg import sql

            assert storage.postgres_conninfo is not None
            self._conn = psycopg.connect(storage.postgres_conninfo, autocommit=True)
            self._conn.execute(
                sql.SQL("SET search_path TO {}").format(
                    sql.Identifier(storage.postgres_schema or "public")
                )
            )
            self._mark = "%s"
        self._conn.execute(_CREATE)
        self._add_columns()

    def _add_columns(self) -> None:
        """Give a table made before `sent` and `baseline` existed those columns (several
        processes may open the outbox at once: whoever comes second finds them there)."""
        if self.backend == "sqlite":
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(gateway_outbox)")}
        else:
            columns = {
                row[0]
                for row in self._conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = 'gateway_outbox'"
                )
            }
        for name, definition in _ADDED_COLUMNS.items():
            if name in columns:
                continue
            if self.backend != "sqlite":
                self._conn.execute(
                    f"ALTER TABLE gateway_outbox ADD COLUMN IF NOT EXISTS {definition}"
                )
                continue
            try:
                self._conn.execute(f"ALTER TABLE gateway_outbox ADD COLUMN {definition}")
            except sqlite3.OperationalError as error:
                if "duplicate column" not in str(error):
                    raise

    def attempt(self, order_id: str, request: str, version: int) -> Attempt | None:
        m = self._mark
        with self._lock:
            row = self._conn.execute(
                "SELECT attempts, last_attempt, sent, baseline FROM gateway_outbox"
                f" WHERE order_id = {m} AND request = {m} AND version = {m}",
                (order_id, request, version),
            ).fetchone()
        if row is None:
            return None
        baseline = None if row[3] is None else int(row[3])
        return Attempt(int(row[0]), float(row[1]), bool(row[2]), baseline)

    def set_baseline(self, order_id: str, request: str, version: int, baseline: int) -> None:
        """Before a send: how many records of this kind of request Kite's history of the
        order holds (see the module's docstring)."""
        m = self._mark
        with self._lock:
            self._conn.execute(
                f"UPDATE gateway_outbox SET baseline = {m} WHERE order_id = {m}"
                f" AND request = {m} AND version = {m}",
                (baseline, order_id, request, version),
            )

    def mark_sent(self, order_id: str, request: str, version: int) -> None:
        """Kite answered a send of this request with success: it is not to be sent again."""
        m = self._mark
        with self._lock:
            self._conn.execute(
                f"UPDATE gateway_outbox SET sent = 1 WHERE order_id = {m} AND request = {m}"
                f" AND version = {m}",
                (order_id, request, version),
            )

    def claim(
        self, order_id: str, request: str, version: int, previous: Attempt | None, until: float
    ) -> bool:
        """Durably claim the right to send this request now, until `until` (the lease: the
        longest the send can take). Only one dispatcher (thread or process) wins a claim:
        the first attempt by inserting the row, a retry by moving `last_attempt` on from
        the value it read. Returns whether this caller may send. The sender `release`s the
        claim when its send ends, whatever the outcome; if it dies instead, the lease runs
        out, so nobody else sends while the first send may still reach Kite."""
        m = self._mark
        with self._lock:
            if previous is None:
                cursor = self._conn.execute(
                    "INSERT INTO gateway_outbox"
                    " (order_id, request, version, attempts, last_attempt)"
                    f" VALUES ({m}, {m}, {m}, 1, {m})"
                    " ON CONFLICT (order_id, request, version) DO NOTHING",
                    (order_id, request, version, until),
                )
            else:
                cursor = self._conn.execute(
                    f"UPDATE gateway_outbox SET attempts = attempts + 1, last_attempt = {m}"
                    f" WHERE order_id = {m} AND request = {m} AND version = {m}"
                    f" AND last_attempt = {m}",
                    (until, order_id, request, version, previous.last_attempt),
                )
            return bool(cursor.rowcount == 1)

    def extend(self, order_id: str, request: str, version: int, until: float, to: float) -> bool:
        """Move a claim's lease from `until` on to `to`; False if it is no longer this
        claim (it ran out and another dispatcher claimed the request)."""
        m = self._mark
        with self._lock:
            cursor = self._conn.execute(
                f"UPDATE gateway_outbox SET last_attempt = {m}"
                f" WHERE order_id = {m} AND request = {m} AND version = {m}"
                f" AND last_attempt = {m}",
                (to, order_id, request, version, until),
            )
            return bool(cursor.rowcount == 1)

    def release(self, order_id: str, request: str, version: int, until: float, at: float) -> None:
        """The send claimed until `until` ended at `at`: the time a look-up waits for now
        counts from here (unless another dispatcher has claimed the request since)."""
        m = self._mark
        with self._lock:
            self._conn.execute(
                f"UPDATE gateway_outbox SET last_attempt = {m}"
                f" WHERE order_id = {m} AND request = {m} AND version = {m}"
                f" AND last_attempt = {m}",
                (at, order_id, request, version, until),
            )

    def close(self) -> None:
        self._conn.close()
