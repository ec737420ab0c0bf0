"""Recorders that append with less than the library's: PostgreSQL in one round trip, SQLite
without re-preparing its insert.

The library's recorder appends in a pipeline that still waits for the server several
times per transaction (the lock, the insert, the ids, the commit). Here the whole
transaction is one message: BEGIN, the same `LOCK TABLE ... IN EXCLUSIVE MODE` (so log
order stays commit order), NOTIFY, the insert with its RETURNING, COMMIT. The server only
accepts several statements in one message without server-side parameters, so the values
are written as literals: text quoted by libpq (`PQescapeLiteral`), everything else in a form
that cannot hold a quote (a UUID's canonical form, a decimal integer, bytes as hex).

A command is still durable when this returns: the reply arrives after COMMIT. If the
insert conflicts (a second event at the same order version) the server skips the rest,
the transaction is rolled back and `IntegrityError` is raised, as the library does. A lost
connection is retried as the library retries it (ten tries, 0.2 s apart). If a try whose
reply was lost did commit, the retry conflicts; the rows at those order versions are then
read back, and if they hold exactly the bytes sent (each state carries its record time and
hash, so no other command's could), the append succeeded and their ids are returned. A
command whose events are repeatable (a second cancel request is allowed) would otherwise
be decided again and written twice.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import (
    ConnectionPoolClosedError,
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import SQLITE3_DEFAULT_LOCK_TIMEOUT, SQLiteApplicationRecorder
from psycopg import sql
from psycopg.generators import execute
from psycopg.pq import Escaping, ExecStatus, TransactionStatus
from psycopg.pq.abc import PGresult
from psycopg.rows import tuple_row

_IN_A_TRANSACTION = (TransactionStatus.INTRANS, TransactionStatus.INERROR)
#: A lost connection's retries, as the library's own `@retry` on its recorder.
_ATTEMPTS = 10
_RETRY_WAIT = 0.2
_SUCCEEDED = (ExecStatus.COMMAND_OK, ExecStatus.TUPLES_OK)


def _text(value: bytes | None) -> bytes:
    if value is None:
        raise psycopg.DataError("the insert returned a null notification id")
    return value


class OneTripPostgresRecorder(PostgresApplicationRecorder):
    """`PostgresApplicationRecorder` whose append is a single round trip."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _discard_dead_connections_after_a_failure(self.datastore)
        table = sql.Identifier(self.datastore.schema, self.events_table_name)
        self._head = sql.SQL(
            "BEGIN; SET LOCAL lock_timeout = '{timeout}s'; LOCK TABLE {table} IN EXCLUSIVE MODE;"
            " NOTIFY {channel}; INSERT INTO {table}"
            " (originator_id, originator_version, topic, state) VALUES "
        ).format(
            timeout=sql.Literal(self.datastore.lock_timeout),
            table=table,
            channel=sql.Identifier(self.channel_name),
        )
        self._tail_bytes = b" RETURNING notification_id; COMMIT"
        self._head_statement: bytes | None = None
        self._topics: dict[str, bytes] = {}

    def _head_bytes(self, conn: psycopg.Connection[Any]) -> bytes:
        if self._head_statement is None:
            self._head_statement = self._head.as_bytes(conn)
        return self._head_statement

    def _row_literal(self, conn: psycopg.Connection[Any], event: StoredEvent) -> bytes:
        """One event as `(id, version, topic, state)` literals. Text goes through libpq's
        own quoting (`PQescapeLiteral`); the rest is written in forms that cannot hold a
        quote: a UUID's canonical form, a decimal integer, bytes as hex. (psycopg's
        per-value quoting did the same and took a tenth of each command's time.)"""
        ident = event.originator_id
        if type(ident) is UUID:
            ident_literal = b"'%s'::uuid" % str(ident).encode("ascii")
        else:
            ident_literal = _escape(conn, str(ident)) + b"::uuid"
        version = event.originator_version
        if type(version) is not int:
            raise TypeError(f"an event version must be an int, not {type(version).__name__}")
        topic = self._topics.get(event.topic)
        if topic is None:
            topic = _escape(conn, event.topic)
            if len(self._topics) < 1024:  # the event classes' topics; anything else is not kept
                self._topics[event.topic] = topic
        state = event.state
        if not isinstance(state, bytes):
            raise TypeError(f"a stored state must be bytes, not {type(state).__name__}")
        # E'' so the backslash means the same whatever standard_conforming_strings says.
        return b"(%s, %d, %s, E'\\\\x%s'::bytea)" % (
            ident_literal,
            version,
            topic,
            state.hex().encode("ascii"),
        )

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return []
        uncertain = False  # whether an earlier try may have committed
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return self._insert_once(stored_events)
            except IntegrityError:
                if not uncertain:
                    raise
                try:
                    ids = self._ids_if_stored(stored_events)
                except (InterfaceError, OperationalError):
                    if attempt == _ATTEMPTS:
                        raise
                else:
                    if ids is None:
                        raise
                    return ids
            except (InterfaceError, OperationalError):
                if attempt == _ATTEMPTS:
                    raise
                uncertain = True
            time.sleep(_RETRY_WAIT * (1 + 0.1 * (random.random() - 0.5)))
        raise AssertionError("unreachable")  # pragma: no cover

    def _ids_if_stored(self, stored_events: Sequence[StoredEvent]) -> list[int] | None:
        """The notification ids of `stored_events` if the log holds them byte for byte
        (an earlier try committed them), else None."""
        table = sql.Identifier(self.datastore.schema, self.events_table_name)
        keys = [(str(e.originator_id), e.originator_version) for e in stored_events]
        query = sql.SQL(
            "SELECT originator_id::text, originator_version, topic, state, notification_id"
            " FROM {} WHERE (originator_id, originator_version) IN ({})"
        ).format(table, sql.SQL(", ").join(sql.SQL("(%s::uuid, %s)") for _ in keys))
        with (
            self.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cursor,
        ):
            rows = cursor.execute(query, [v for key in keys for v in key]).fetchall()
        found = {(r[0], r[1]): r for r in rows}
        ids: list[int] = []
        for key, event in zip(keys, stored_events, strict=True):
            row = found.get(key)
            if row is None or row[2] != event.topic or bytes(row[3]) != event.state:
                return None
            ids.append(int(row[4]))
        return ids

    def _insert_once(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        with self.datastore.get_connection() as conn:
            rows = b", ".join([self._row_literal(conn, event) for event in stored_events])
            query = self._head_bytes(conn) + rows + self._tail_bytes
            try:
                results = _exec_message(conn, query)
            except psycopg.Error:
                if not conn.closed and conn.info.transaction_status in _IN_A_TRANSACTION:
                    conn.execute("ROLLBACK")
                raise
            failed = next((r for r in results if r.status not in _SUCCEEDED), None)
            if failed is not None:
                error = psycopg.errors.error_from_result(failed, encoding=conn.info.encoding)
                if conn.info.transaction_status in _IN_A_TRANSACTION:
                    conn.execute("ROLLBACK")
                if isinstance(error, psycopg.errors.UniqueViolation):
                    raise IntegrityError(str(error)) from error
                if isinstance(error, psycopg.errors.LockNotAvailable):
                    raise OperationalError(str(error)) from error
                raise error
            inserted = next(r for r in results if r.status == ExecStatus.TUPLES_OK)
            ids = [int(_text(inserted.get_value(row, 0))) for row in range(inserted.ntuples)]
        return ids


class LeanSQLiteRecorder(SQLiteApplicationRecorder):
    """`SQLiteApplicationRecorder` whose append is the same transaction with less around it.

    The library takes the pool's writer connection for each append (two locks and a
    semaphore each way, about 15 us of a 330 us command), opens it with an explicit
    `BEGIN`, and keeps one prepared statement per connection, so `BEGIN` and the insert
    evicted each other and every append prepared its insert again. Here appends go
    through a connection of the recorder's own, opened on first use, whose `BEGIN
    IMMEDIATE`, insert and `COMMIT` all stay prepared; the group committer lets one
    thread append at a time, and a lock here keeps it so for any other caller. Other
    writers of the file (the library's snapshots, other processes) are kept apart by
    SQLite's own lock, as any two connections are: `BEGIN IMMEDIATE` takes it first and
    waits for it (the library's lock timeout). The commit is the same: durable when this
    returns (`synchronous=FULL`, WAL). Errors are the library's, mapped as it maps them,
    and a failed append is rolled back. An in-memory database (one per connection) keeps
    the library's pooled connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._appender: sqlite3.Connection | None = None
        # One cursor for every append, kept with its connection. A cursor made per append
        # and caught in an exception's reference cycle was freed later by the cyclic
        # collector, in whatever thread ran it; freeing it takes its connection's mutex,
        # which SQLite holds while that connection waits for the file's write lock. When
        # the collecting thread held that lock itself (another ledger's append, a
        # snapshot through the pool) the two waited on each other until the lock timeout
        # and a command failed (seen under load: four ledgers on one file).
        self._appender_cursor: sqlite3.Cursor | None = None
        self._appender_lock = threading.Lock()
        self._closed = False

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        pool = self.datastore.pool
        if pool.is_sqlite_memory_mode:
            return self._insert_pooled(stored_events)
        with self._appender_lock:
            if self._closed:  # as the library's pool refuses, not a connection opened again
                raise ConnectionPoolClosedError("the recorder is closed")
            conn, cursor = self._appender, self._appender_cursor
            if conn is None or cursor is None:
                conn = self._appender = _appending_connection(
                    pool.db_name, pool.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT
                )
                cursor = self._appender_cursor = conn.cursor()
            with _rolled_back_on_error(conn):
                cursor.execute("BEGIN IMMEDIATE")
                ids = self._insert_rows(cursor, stored_events)
                cursor.execute("COMMIT")
        return ids

    def close(self) -> None:
        """Close the appending connection (the pool's are closed by the datastore)."""
        with self._appender_lock:
            conn, self._appender = self._appender, None
            cursor, self._appender_cursor = self._appender_cursor, None
            self._closed = True
        if cursor is not None:
            cursor.close()
        if conn is not None:
            conn.close()

    def _insert_pooled(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        pool = self.datastore.pool
        connection = pool.get_connection(is_writer=True)
        try:
            conn: sqlite3.Connection = connection._sqlite_conn
            conn.isolation_level = "DEFERRED"
            try:
                with _rolled_back_on_error(conn):
                    ids = self._insert_rows(conn.cursor(), stored_events)
                    conn.commit()
            finally:
                conn.isolation_level = None  # back to autocommit, as the library uses it
        finally:
            pool.put_connection(connection)
        return ids

    def _insert_rows(
        self, cursor: sqlite3.Cursor, stored_events: Sequence[StoredEvent]
    ) -> list[int]:
        """The rows, inserted in the open transaction; their notification ids."""
        ids: list[int] = []
        for event in stored_events:
            ident = event.originator_id
            cursor.execute(
                self.insert_events_statement,
                (
                    ident.hex if isinstance(ident, UUID) else ident,
                    event.originator_version,
                    event.topic,
                    event.state,
                ),
            )
            assert cursor.lastrowid is not None
            ids.append(cursor.lastrowid)
        return ids


@contextmanager
def _rolled_back_on_error(conn: sqlite3.Connection) -> Iterator[None]:
    """An append that fails is rolled back, and a sqlite3 error raised as the library's."""
    try:
        yield
    except BaseException as error:
        if conn.in_transaction:
            conn.rollback()
        if isinstance(error, sqlite3.Error):
            raise _library_error(error) from error
        raise


def _appending_connection(database: str, lock_timeout: float) -> sqlite3.Connection:
    """A connection to append through, as the library opens its own (a URI, autocommit,
    usable from any thread), with its few statements kept prepared and commits durable.
    Failing to open it (no file descriptors left, a file it may not read) raises the
    library's error, as an append that fails does."""
    try:
        conn = sqlite3.connect(
            database,
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=lock_timeout,
            cached_statements=8,
        )
    except sqlite3.Error as error:
        raise _library_error(error) from error
    try:
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error as error:
        conn.close()
        raise _library_error(error) from error
    return conn


def _library_error(error: sqlite3.Error) -> PersistenceError:
    """The library's exception for a sqlite3 one (as its SQLite transaction maps them)."""
    for sqlite_class, library_class in (
        (sqlite3.InterfaceError, InterfaceError),
        (sqlite3.DataError, DataError),
        (sqlite3.OperationalError, OperationalError),
        (sqlite3.IntegrityError, IntegrityError),
        (sqlite3.InternalError, InternalError),
        (sqlite3.ProgrammingError, ProgrammingError),
        (sqlite3.NotSupportedError, NotSupportedError),
        (sqlite3.DatabaseError, DatabaseError),
    ):
        if isinstance(error, sqlite_class):
            return library_class(error)
    return PersistenceError(error)


def _exec_message(conn: psycopg.Connection[Any], query: bytes) -> list[PGresult]:
    """Send `query` (several statements, simple query protocol) and return every result,
    errors included, as libpq gives them: what `cursor.execute` does, without a cursor,
    its row maker and its description of each of the six results (a fifth of a
    command's time under the GIL with eight writers). `psycopg.generators.execute` and
    `Connection.wait` are the lower-level API psycopg's own cursors run on, not its
    documented surface: every PostgreSQL test appends through here, so a psycopg that
    changed them fails the suite, not production."""
    with conn.lock:
        if conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        conn.pgconn.send_query(query)
        return conn.wait(execute(conn.pgconn))


def _escape(conn: psycopg.Connection[Any], text: str) -> bytes:
    return Escaping(conn.pgconn).escape_literal(text.encode(conn.info.encoding))


def _discard_dead_connections_after_a_failure(datastore: PostgresDatastore) -> None:
    """When one pooled connection is found dead, test the idle others at once.

    Without a ping before each use, a server restart or a cut leaves every idle connection
    in the pool dead, and each would be found dead only on its own next use, one retry
    (and one 0.2 s wait) at a time. `pool.check()` tests them all and replaces the dead."""
    if getattr(datastore, "_ledger_checks_after_failure", False):
        return
    original = datastore.get_connection

    @contextmanager
    def get_connection() -> Iterator[Any]:
        try:
            with original() as conn:
                yield conn
        except (OperationalError, InterfaceError):
            datastore.pool.check()
            raise

    datastore.get_connection = get_connection  # type: ignore[method-assign]
    datastore._ledger_checks_after_failure = True  # type: ignore[attr-defined]
