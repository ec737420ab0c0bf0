"""Where projections keep their tables: SQLite, PostgreSQL or DuckDB.

Every projection table gets one SQL table, named `proj_<projection>_v<version>_<table>`,
with typed columns an analyst can query (NUMERIC / DECIMAL for money, TIMESTAMPTZ for
times) and the row's key as primary key. Beside them:

* `proj_tracking (projection, version, position)`: how far into the log each projection
  version has folded. It is written in the same transaction as the rows a batch changed,
  so a projection is never ahead of or behind its tracking position: exactly once.
* `proj_active (projection, version)`: the version readers use. A new version is built
  beside the old one and switched to in one statement when it has caught up.

Only values (never names from input) go into parameters; the identifiers are the
projections' own.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from operator import itemgetter
from pathlib import Path
from typing import Any, ClassVar, Final

from ledger.domain.errors import LedgerError
from ledger.persistence import StorageError, StorageSettings, advisory_lock_key, first_line
from projections.base import PRICE_PLACES, Key, Projection, Table, View, _normal

TRACKING: Final = "proj_tracking"
#: Rows to write, by projection and table, as parameter tuples: (inserts, upserts).
Encoded = list[tuple[Projection, list[tuple[Table, list[Any], list[Any]]]]]
ACTIVE: Final = "proj_active"
SOURCE: Final = "proj_source"


def table_name(
    projection: Projection | type[Projection], table: Table, version: int | None = None
) -> str:
    return f"proj_{projection.name}_v{version or projection.version}_{table.name}"


def base_type(annotation: Any) -> tuple[type[Any], bool]:
    """(the type, whether None is allowed) of a row field annotation."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


class ProjectionConflict(RuntimeError):
    """Another runner moved a projection while this one folded a batch."""

    def __init__(self, name: str, expected: int, actual: int) -> None:
        super().__init__(
            f"projection {name}: expected position {expected}, found {actual}"
            " (another runner is folding it)"
        )


class ProjectionSourceMismatch(LedgerError):
    """The store holds projections folded from another log than the one being read.

    A SQLite ledger's projections live in a file of their own beside the ledger's: a
    ledger file deleted and started again, or another ledger pointed at the same
    projections database, would otherwise fold its events on top of another log's rows
    (positions that do not match, events skipped or counted twice). A log is known by its
    first event, record time and hash included: two logs whose first events are byte for
    byte the same (a replay with the same clock readings) are not told apart."""

    def __init__(self, where: str, recorded: str, found: str) -> None:
        super().__init__(
            f"the projections in {where} were folded from another log (its first event"
            f" {recorded}; this log's first event {found}): delete them (the file, or the"
            " proj_ tables) and they are folded again from this log"
        )


class ProjectionStore(ABC):
    """Tables, tracking positions and active versions in one database."""

    placeholder = "?"
    sql_types: Mapping[type[Any], str] = {}

    # ------------------------------------------------------------------ dialect

    @abstractmethod
    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside one transaction: committed on success, rolled back on error."""

    @abstractmethod
    @contextmanager
    def committed_reads(self) -> Iterator[Any]:
        """A cursor that sees only committed rows, on a connection none of this store's
        writes use: reads through it may run while another thread writes (the runner
        loads rows back while the previous batch is being committed)."""

    @contextmanager
    def reading(self) -> Iterator[Any]:
        """A cursor for reads that write nothing (positions, rows): `transaction` where
        that takes no lock a writer needs; SQLite's takes the file's write lock, so its
        reads have a transaction of their own that does not."""
        with self.transaction() as cur:
            yield cur

    @abstractmethod
    def close(self) -> None: ...

    def reconnect(self) -> None:  # noqa: B027 - most stores have nothing to do
        """After a lost connection: a fresh one (a no-op where connections do not die)."""

    def encode(self, value: Any, kind: type[Any]) -> Any:
        return value

    def decode(self, value: Any, kind: type[Any]) -> Any:
        if value is None:
            return None
        if kind is Decimal and not isinstance(value, Decimal):
            return Decimal(str(value))
        return value

    def _q(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    # ------------------------------------------------------------------ schema

    def ensure(self, projections: Sequence[Projection]) -> None:
        """Create the bookkeeping tables and every projection's tables, if missing."""
        with self.transaction() as cur:
            self._serialise_schema_changes(cur)
            self._ensure_bookkeeping(cur)
            for projection in projections:
                for table in projection.tables:
                    cur.execute(self._create_statement(projection, table))
                cur.execute(
                    f"INSERT INTO {TRACKING} (projection, version, position) VALUES"
                    f" ({self.placeholder}, {self.placeholder}, 0) ON CONFLICT DO NOTHING",
                    (projection.name, projection.version),
                )
                cur.execute(
                    f"INSERT INTO {ACTIVE} (projection, version) VALUES"
                    f" ({self.placeholder}, {self.placeholder}) ON CONFLICT DO NOTHING",
                    (projection.name, projection.version),
                )

    @property
    def where(self) -> str:
        """The database, for messages."""
        return type(self).__name__

    def _serialise_schema_changes(self, cur: Any) -> None:  # noqa: B027 - a hook
        """Make concurrent creators and droppers of tables wait for each other (SQLite's
        `BEGIN IMMEDIATE` does it already)."""

    @staticmethod
    def _ensure_bookkeeping(cur: Any) -> None:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {TRACKING} (projection TEXT NOT NULL,"
            " version INTEGER NOT NULL, position BIGINT NOT NULL,"
            " PRIMARY KEY (projection, version))"
        )
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {ACTIVE} (projection TEXT PRIMARY KEY,"
            " version INTEGER NOT NULL)"
        )
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {SOURCE} (id INTEGER PRIMARY KEY,"
            " first_event TEXT NOT NULL)"
        )

    def _create_statement(self, projection: Projection, table: Table) -> str:
        columns = []
        for name, annotation in table.columns.items():
            kind, nullable = base_type(annotation)
            sql_type = self.sql_types[kind]
            columns.append(f"{self._q(name)} {sql_type}{'' if nullable else ' NOT NULL'}")
        key = ", ".join(self._q(k) for k in table.key_fields)
        return (
            f"CREATE TABLE IF NOT EXISTS {self._q(table_name(projection, table))}"
            f" ({', '.join(columns)}, PRIMARY KEY ({key}))"
        )

    def drop(self, projection: Projection) -> None:
        """Drop a projection version's tables and forget its position."""
        with self.transaction() as cur:
            self._serialise_schema_changes(cur)
            self._ensure_bookkeeping(cur)
            for table in projection.tables:
                cur.execute(f"DROP TABLE IF EXISTS {self._q(table_name(projection, table))}")
            cur.execute(
                f"DELETE FROM {TRACKING} WHERE projection = {self.placeholder}"
                f" AND version = {self.placeholder}",
                (projection.name, projection.version),
            )

    # ------------------------------------------------------------------ tracking

    def position(self, projection: Projection) -> int:
        with self.reading() as cur:
            return self.position_in(cur, projection)

    def position_in(self, cur: Any, projection: Projection) -> int:
        """The projection's stored position, read through `cur` (in its transaction)."""
        cur.execute(
            f"SELECT position FROM {TRACKING} WHERE projection = {self.placeholder}"
            f" AND version = {self.placeholder}",
            (projection.name, projection.version),
        )
        row = cur.fetchone()
        return int(row[0]) if row else 0

    def active_version(self, name: str) -> int | None:
        with self.reading() as cur:
            cur.execute(
                f"SELECT version FROM {ACTIVE} WHERE projection = {self.placeholder}", (name,)
            )
            row = cur.fetchone()
        return int(row[0]) if row else None

    def claim_source(self, first_event: str) -> None:
        """Record the log these projections are folded from, by its first event, or check
        it is the one recorded. Another log's first event is refused
        (`ProjectionSourceMismatch`) while anything folded from the recorded one is left;
        once every projection is back at position 0 (dropped to be rebuilt), the new log
        is recorded in its place."""
        mark = self.placeholder
        with self.transaction() as cur:
            # Two runners starting together: the second insert waits and does nothing.
            cur.execute(
                f"INSERT INTO {SOURCE} (id, first_event) VALUES (1, {mark}) ON CONFLICT DO NOTHING",
                (first_event,),
            )
            cur.execute(f"SELECT first_event FROM {SOURCE} WHERE id = 1")
            recorded = str(cur.fetchone()[0])
            if recorded == first_event:
                return
            cur.execute(f"SELECT MAX(position) FROM {TRACKING}")
            folded = cur.fetchone()
            if folded is not None and folded[0]:
                raise ProjectionSourceMismatch(self.where, recorded, first_event)
            cur.execute(f"UPDATE {SOURCE} SET first_event = {mark} WHERE id = 1", (first_event,))

    def activate(self, projection: Projection) -> None:
        """Point readers at this projection version (one statement: no reader sees half)."""
        with self.transaction() as cur:
            cur.execute(
                f"UPDATE {ACTIVE} SET version = {self.placeholder}"
                f" WHERE projection = {self.placeholder}",
                (projection.version, projection.name),
            )

    # ------------------------------------------------------------------ rows

    #: What makes text keys sort by code point (Python's order) in ORDER BY.
    text_order: ClassVar[str] = ""

    @contextmanager
    def consistent_reads(self) -> Iterator[Any]:
        """A cursor whose statements all read one snapshot of the store, and never wait
        for (or hold up) its writer: a projection's position and every one of its rows
        as of the same commit, however long the reading takes."""
        with self.committed_reads() as cur:
            yield cur

    def stream_rows(
        self, cur: Any, projection: Projection, table: Table, *, stored: bool = False
    ) -> Iterator[Any]:
        """Every row of one table, read through `cur` a page at a time, in key order:
        text by code point, numbers and days by value (Python's order of the keys). Rows
        as row objects, or with `stored` as the database gives them (`row_of` makes
        those into row objects)."""
        names = list(table.columns)
        kind_of = dict(zip(names, table.kinds, strict=True))
        order = ", ".join(
            self._q(k) + (self.text_order if kind_of[k] is str else "") for k in table.key_fields
        )
        cur.execute(
            f"SELECT {', '.join(self._q(n) for n in names)}"
            f" FROM {self._q(table_name(projection, table))} ORDER BY {order}"
        )
        while page := cur.fetchmany(_STREAM_PAGE):
            if stored:
                yield from page
            else:
                for record in page:
                    yield self.row_of(table, record)

    def row_of(self, table: Table, record: Sequence[Any]) -> Any:
        """A row object for a row as this database gives it (columns in table order)."""
        decode = self.decode
        values = {
            n: decode(v, k) for n, v, k in zip(table.columns, record, table.kinds, strict=True)
        }
        return table.row_type(**values)

    def load_view(
        self, projection: Projection, where: Mapping[str, Collection[str]] | None = None
    ) -> View:
        """Every row of the projection's tables; with `where` (text column -> the values
        wanted), only the rows of each table whose columns of those names hold one of
        them (a table without such a column is read whole)."""
        view = View()
        with self.reading() as cur:
            for table in projection.tables:
                names = list(table.columns)
                kinds = [base_type(a)[0] for a in table.columns.values()]
                conditions: list[str] = []
                parameters: list[str] = []
                for column, wanted in (where or {}).items():
                    if column not in table.columns:
                        continue
                    if base_type(table.columns[column])[0] is not str:
                        raise ValueError(f"{table.name}.{column}: only text columns filter")
                    texts = sorted(set(wanted))
                    marks = ", ".join([self.placeholder] * len(texts))
                    conditions.append(f"{self._q(column)} IN ({marks})" if texts else "FALSE")
                    parameters += texts
                cur.execute(
                    f"SELECT {', '.join(self._q(n) for n in names)}"
                    f" FROM {self._q(table_name(projection, table))}"
                    + (f" WHERE {' AND '.join(conditions)}" if conditions else ""),
                    parameters,
                )
                rows = view.table(table.name)
                for record in cur.fetchall():
                    values = {
                        n: self.decode(v, k) for n, v, k in zip(names, record, kinds, strict=True)
                    }
                    row = table.row_type(**values)
                    rows[table.key_of(row)] = row
        return view

    def load_cells(
        self,
        projection: Projection,
        table: Table,
        keys: Sequence[Key] | None = None,
        *,
        beside_writes: bool = False,
        cursor: Any = None,
    ) -> dict[Key, Any]:
        """Cells (mutable rows) of one table: every row, or those at `keys`; with
        `beside_writes`, read through `committed_reads` (safe while a write is in
        flight on another thread, and blind to it); with `cursor`, through that (one of
        `consistent_reads`, for rows of one snapshot)."""
        cells: dict[Key, Any] = {}
        if keys is not None and not keys:
            return cells
        names = list(table.columns)
        decoders = self._decoders(table)
        select = (
            f"SELECT {', '.join(self._q(n) for n in names)}"
            f" FROM {self._q(table_name(projection, table))}"
        )
        make = table.cell_type
        key_at = [names.index(k) for k in table.key_fields]
        reads = (
            contextlib.nullcontext(cursor)
            if cursor is not None
            else self.committed_reads()
            if beside_writes
            else self.reading()
        )
        with reads as cur:
            batches: list[Sequence[Key] | None] = [None]
            if keys is not None:
                batches = [keys[i : i + 500] for i in range(0, len(keys), 500)]
            for batch in batches:
                if batch is None:
                    cur.execute(select)
                else:
                    assert len(table.key_fields) == 1, "load by key: single-column keys only"
                    marks = ", ".join([self.placeholder] * len(batch))
                    cur.execute(
                        f"{select} WHERE {self._q(table.key_fields[0])} IN ({marks})",
                        [k[0] for k in batch],
                    )
                for record in cur.fetchall():
                    values = [
                        v if decode is None or v is None else decode(v)
                        for v, decode in zip(record, decoders, strict=True)
                    ]
                    cells[tuple(values[i] for i in key_at)] = make(*values)
        return cells

    def _decoders(self, table: Table) -> list[Callable[[Any], Any] | None]:
        return [None for _ in table.kinds]

    def _encoders(self, table: Table) -> list[Callable[[Any], Any] | None]:
        return [None for _ in table.kinds]

    def _tuples(self, table: Table, rows: Iterable[Any]) -> list[Any]:
        """Rows or cells as parameter tuples, encoded for this database."""
        build = self._builders.get(table)
        if build is None:
            build = self._builders[table] = _tuple_builder(table, self._encoders(table))
        return build(rows)

    @property
    def _builders(self) -> dict[Table, Callable[[Iterable[Any]], list[Any]]]:
        builders: dict[Table, Callable[[Iterable[Any]], list[Any]]]
        builders = self.__dict__.setdefault("_tuple_builders", {})
        return builders

    def commit(
        self,
        changes: Sequence[tuple[Projection, Mapping[str, Mapping[Key, Any]]]],
        position: int,
        expected: Mapping[str, int] | None = None,
        created: Mapping[str, Mapping[str, set[Key]]] | None = None,
    ) -> None:
        """Write changed rows (or cells) of several projections and move each to
        `position`, in one transaction.

        With `expected` (projection name -> the position the caller folded from), the
        commit first checks, holding the tracking row, that no other runner moved the
        projection meanwhile, and raises `ProjectionConflict` (writing nothing) if one did.
        `created` (projection name -> table -> keys) names rows the store cannot have yet:
        those are inserted, not upserted (a row that is there after all is an error).
        """
        self.write(self.encode_changes(changes, created), position, expected)

    def encode_changes(
        self,
        changes: Sequence[tuple[Projection, Mapping[str, Mapping[Key, Any]]]],
        created: Mapping[str, Mapping[str, set[Key]]] | None = None,
    ) -> Encoded:
        """The changed rows as parameter tuples, new ones apart: a copy, so the cells may
        change again while another thread writes these."""
        encoded: Encoded = []
        for projection, tables in changes:
            new_keys = (created or {}).get(projection.name, {})
            rows = []
            for name, cells in tables.items():
                if not cells:
                    continue
                table = projection.table_named(name)
                new = new_keys.get(name, set())
                if len(new) == len(cells):
                    inserts, upserts = list(cells.values()), []
                elif not new:
                    inserts, upserts = [], list(cells.values())
                else:
                    inserts = [cell for key, cell in cells.items() if key in new]
                    upserts = [cell for key, cell in cells.items() if key not in new]
                rows.append((table, self._tuples(table, inserts), self._tuples(table, upserts)))
            encoded.append((projection, rows))
        return encoded

    def write(
        self, encoded: Encoded, position: int, expected: Mapping[str, int] | None = None
    ) -> None:
        """`commit` of rows `encode_changes` made: the position check and the move of
        every projection each in one statement."""
        if not encoded:
            return
        projections = [p for p, _ in encoded]
        check, move = self._tracking_statements(projections, position)
        with self.transaction() as cur:
            if expected is not None:
                cur.execute(*check)
                conflict = _conflict(cur.fetchall(), projections, expected)
                if conflict is not None:
                    raise conflict
            self._write_rows(cur, encoded)
            cur.execute(*move)
            self.count_transaction()
        self._committed()

    def _write_rows(self, cur: Any, encoded: Encoded) -> None:
        """Every table's new rows inserted and changed rows upserted, through `cur`."""
        for projection, tables in encoded:
            for table, inserts, upserts in tables:
                if inserts:
                    self._insert(cur, projection, table, inserts)
                if upserts:
                    self._write(cur, projection, table, upserts)

    def _tracking_statements(
        self, projections: Sequence[Projection], position: int
    ) -> tuple[tuple[str, list[Any]], tuple[str, tuple[Any, ...]]]:
        """(the check: the projections' stored positions, rows held in one order until the
        transaction ends; the move: every one of them to `position`), each in one statement."""
        mark = self.placeholder
        which = ", ".join([f"({mark}, {mark})"] * len(projections))
        keys = [value for p in projections for value in (p.name, p.version)]
        check = (
            f"SELECT projection, position FROM {TRACKING} WHERE (projection, version)"
            f" IN ({which}) ORDER BY projection, version{self.lock_clause}",
            keys,
        )
        move = (
            f"UPDATE {TRACKING} SET position = {mark} WHERE (projection, version) IN ({which})",
            (position, *keys),
        )
        return check, move

    def _committed(self) -> None:  # noqa: B027 - a hook; most stores need nothing here
        """After a commit went through."""

    def _insert(self, cur: Any, projection: Projection, table: Table, rows: list[Any]) -> None:
        names = list(table.columns)
        cur.executemany(
            f"INSERT INTO {self._q(table_name(projection, table))}"
            f" ({', '.join(self._q(n) for n in names)})"
            f" VALUES ({', '.join([self.placeholder] * len(names))})",
            self._in_key_order(table, rows),
        )

    def _write(self, cur: Any, projection: Projection, table: Table, rows: list[Any]) -> None:
        cur.executemany(self._upsert(projection, table), self._in_key_order(table, rows))

    @staticmethod
    def _in_key_order(table: Table, rows: list[Any]) -> list[Any]:
        """Rows sorted by key: the B-tree pages of a batch are visited once, in order."""
        if len(rows) < 2:
            return rows
        key_at = [list(table.columns).index(k) for k in table.key_fields]
        if key_at == [0]:
            return sorted(rows, key=itemgetter(0))
        return sorted(rows, key=itemgetter(*key_at))

    lock_clause = ""

    transactions_committed = 0

    def count_transaction(self) -> None:
        """Counted so tests can prove batching (one transaction per batch, not per event)."""
        self.transactions_committed += 1

    def _upsert(self, projection: Projection, table: Table, source: str | None = None) -> str:
        names = list(table.columns)
        updates = [n for n in names if n not in table.key_fields] or names[:1]
        columns = ", ".join(self._q(n) for n in names)
        values = (
            f" VALUES ({', '.join([self.placeholder] * len(names))})"
            if source is None
            else f" SELECT {columns} FROM {source}"
        )
        return (
            f"INSERT INTO {self._q(table_name(projection, table))} ({columns}){values}"
            f" ON CONFLICT ({', '.join(self._q(k) for k in table.key_fields)}) DO UPDATE SET "
            + ", ".join(f"{self._q(n)} = excluded.{self._q(n)}" for n in updates)
        )


def _tuple_builder(
    table: Table, encoders: Sequence[Callable[[Any], Any] | None]
) -> Callable[[Iterable[Any]], list[Any]]:
    """A generated function making parameter tuples of cells (tuples for `append`
    tables): one expression per column, no loop over columns for every row."""
    namespace: dict[str, Any] = {}
    parts = []
    for i, (name, encode) in enumerate(zip(table.columns, encoders, strict=True)):
        value = f"r[{i}]" if table.kind == "append" else f"r.{name}"  # tuples or cells
        if encode is None:
            parts.append(value)
        else:
            namespace[f"e{i}"] = encode
            parts.append(f"(None if {value} is None else e{i}({value}))")
    source = "rows"
    if table.kind == "append":  # frozen rows too, not only tuples
        namespace["values_of"] = table.values_of
        source = "map(values_of, rows)"
    # The names are the row dataclass's own field names, never input.
    exec(f"def build(rows):\n    return [({', '.join(parts)},) for r in {source}]\n", namespace)
    build: Callable[[Iterable[Any]], list[Any]] = namespace["build"]
    return build


def _normal_or_none(value: Any) -> Any:
    return _normal(value)


def _sqlite_decimal(value: Decimal) -> str:
    return str(_normal(value))


def _sqlite_datetime(value: Any) -> str:
    return value if type(value) is str else value.isoformat()


def _iso(value: Any) -> str:
    return value.isoformat()  # type: ignore[no-any-return]


#: Rows per multi-row statement, and bound values per statement (SQLite's default limit).
_MAX_ROWS: Final = 1024
_MAX_VARIABLES: Final = 32766


class SQLiteProjectionStore(ProjectionStore):
    """Projection tables in a SQLite file (by default one beside the ledger's:
    `projections_path_for`)."""

    sql_types = {
        str: "TEXT",
        int: "INTEGER",
        bool: "INTEGER",
        Decimal: "TEXT",  # exact: SQLite has no decimal type
        datetime: "TEXT",
        date: "TEXT",
    }

    def __init__(
        self, path: str | Path, *, cache_mb: int | None = 32, scratch: bool = False
    ) -> None:
        self.path = str(path)
        self.cache_mb = cache_mb
        self.scratch = scratch
        self._conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            timeout=30,
            check_same_thread=False,
            cached_statements=512,  # the multi-row statements of every table, kept prepared
        )
        self._variables = min(
            self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER), _MAX_VARIABLES
        )
        self._statements: dict[tuple[str, str, int], str] = {}
        if scratch:
            # A file nobody reads until it is complete (the offline rebuild's partial file,
            # moved over its target only when every record has folded): a crash leaves a
            # file that is thrown away anyway, so commits need no WAL and no syncs. The
            # journal stays (in memory) so a failed transaction still rolls back; `sync_file`
            # makes the finished file durable before it is moved. A quarter of the
            # rebuild's time went to writing the WAL and checkpointing it.
            self._conn.execute("PRAGMA journal_mode=MEMORY")
            self._conn.execute("PRAGMA synchronous=OFF")
        else:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # Commits stay atomic (rows and tracking position together, so exactly once);
            # an OS crash may lose the last few, which the runner then folds again.
            self._conn.execute("PRAGMA synchronous=NORMAL")
        # Rows keyed by order id land all over their tables: a page cache that holds the
        # tables' upper levels keeps an upsert of a long-lived store from reading pages
        # back (bounded; None leaves SQLite's 2 MB, for files rebuilt in one go).
        if cache_mb is not None:
            self._conn.execute(f"PRAGMA cache_size={-1024 * int(cache_mb)}")
            # A batch writes thousands of pages: checkpoint the WAL every 32 MB of it, not
            # every 4 MB (each checkpoint ends in an fsync of the database file).
            self._conn.execute("PRAGMA wal_autocheckpoint=8000")

    @property
    def where(self) -> str:
        return self.path

    def _insert(self, cur: Any, projection: Projection, table: Table, rows: list[Any]) -> None:
        self._many(cur, projection, table, self._in_key_order(table, rows), upsert=False)

    def _write(self, cur: Any, projection: Projection, table: Table, rows: list[Any]) -> None:
        self._many(cur, projection, table, self._in_key_order(table, rows), upsert=True)

    def _many(
        self, cur: Any, projection: Projection, table: Table, rows: list[Any], *, upsert: bool
    ) -> None:
        """Rows written by multi-row statements (`INSERT ... VALUES (..), (..), ...`) of up
        to 1,024 rows, not `executemany`.

        `executemany` binds and steps one row at a time, giving up the GIL for each step and
        waiting for it again: with the fold running in the other thread, each row waited up
        to the interpreter's 5 ms switch interval, so the writer thread gained nothing (a
        catch-up ran as fast with its writes done in line). One statement for many rows
        takes the GIL once to bind them all and writes them all without it. The row counts
        are powers of two (a batch of 1,000 is 512 + 256 + 128 + 64 + 32 + 8), so each
        table needs at most a dozen prepared statements, which SQLite keeps."""
        width = len(table.columns)
        size = _MAX_ROWS
        while size > 1 and size * width > self._variables:
            size //= 2
        flat = itertools.chain.from_iterable
        done, total = 0, len(rows)
        while done < total:
            while size > total - done:
                size //= 2
            cur.execute(
                self._statement(projection, table, size, upsert),
                list(flat(rows[done : done + size])),
            )
            done += size

    def _statement(self, projection: Projection, table: Table, rows: int, upsert: bool) -> str:
        key = (table_name(projection, table), "upsert" if upsert else "insert", rows)
        statement = self._statements.get(key)
        if statement is None:
            names = list(table.columns)
            one = f"({', '.join(['?'] * len(names))})"
            statement = (
                f"INSERT INTO {self._q(key[0])} ({', '.join(self._q(n) for n in names)})"
                f" VALUES {', '.join([one] * rows)}"
            )
            if upsert:
                updates = [n for n in names if n not in table.key_fields] or names[:1]
                statement += (
                    f" ON CONFLICT ({', '.join(self._q(k) for k in table.key_fields)})"
                    " DO UPDATE SET "
                    + ", ".join(f"{self._q(n)} = excluded.{self._q(n)}" for n in updates)
                )
            self._statements[key] = statement
        return statement

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            self._conn.rollback()
            raise
        else:
            self._conn.commit()

    @contextmanager
    def reading(self) -> Iterator[Any]:
        """A deferred transaction: one snapshot of the file, taking no write lock, so a
        read (a CLI's view, a runner's start) neither waits for a batch being committed
        by another process nor holds that batch up for as long as it reads."""
        with _read_only_transaction(self._conn) as cur:
            yield cur

    _reader: sqlite3.Connection | None = None

    @contextmanager
    def committed_reads(self) -> Iterator[Any]:
        """On a second connection, opened when first wanted (the first one may be inside
        a write's transaction on another thread)."""
        if self._reader is None:
            self._reader = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, check_same_thread=False
            )
        with _read_only_transaction(self._reader) as cur:
            yield cur

    def encode(self, value: Any, kind: type[Any]) -> Any:
        if kind is Decimal:
            return str(value)
        if kind is datetime or kind is date:
            return value.isoformat()
        if kind is bool:
            return int(value)
        return value

    def _encoders(self, table: Table) -> list[Callable[[Any], Any] | None]:
        table_encoders: dict[type[Any], Callable[[Any], Any]] = {
            Decimal: _sqlite_decimal,
            datetime: _sqlite_datetime,
            date: _iso,
            bool: int,
        }
        return [table_encoders.get(kind) for kind in table.kinds]

    def _decoders(self, table: Table) -> list[Callable[[Any], Any] | None]:
        # Times stay ISO text (the folds carry them, never compute with them).
        table_decoders: dict[type[Any], Callable[[Any], Any]] = {
            Decimal: Decimal,
            date: date.fromisoformat,
            bool: bool,
        }
        return [table_decoders.get(kind) for kind in table.kinds]

    def decode(self, value: Any, kind: type[Any]) -> Any:
        if value is None:
            return None
        if kind is Decimal:
            return Decimal(value)
        if kind is datetime:
            return datetime.fromisoformat(value)
        if kind is date:
            return date.fromisoformat(value)
        if kind is bool:
            return bool(value)
        return value

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._conn.close()


@contextmanager
def _read_only_transaction(conn: sqlite3.Connection) -> Iterator[Any]:
    """A cursor in a transaction of its own on `conn` (one snapshot of the file), ended
    without writing anything."""
    cur = conn.cursor()
    cur.execute("BEGIN")
    try:
        yield cur
    finally:
        conn.rollback()


def _conflict(
    found: Iterable[tuple[str, Any]], projections: Sequence[Projection], expected: Mapping[str, int]
) -> ProjectionConflict | None:
    """The first projection not where the caller folded from, as the error to raise."""
    actual = {name: int(position) for name, position in found}
    for projection in projections:
        position = actual.get(projection.name, 0)
        if position != expected[projection.name]:
            return ProjectionConflict(projection.name, expected[projection.name], position)
    return None


class _Statements:
    """A stand-in cursor that keeps the statements a write would execute."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []

    def execute(self, sql: str, parameters: Any = ()) -> None:
        self.statements.append((sql, parameters))


class WriterProcessStore(SQLiteProjectionStore):
    """A scratch SQLite file whose batches are committed by a writer process
    (`projections/sqlite_writer.py`); everything else (schema, positions, rows loaded back)
    goes through this process's own connection.

    `write` makes the same statements `SQLiteProjectionStore.write` executes and sends them
    to the writer, which runs them in one transaction with the same position check, and
    waits for its answer; the runner calls it on its writer thread, so the fold goes on
    meanwhile, and the SQLite work (about a quarter of a rebuild) runs on the other core
    instead of taking the GIL from the fold. The runner lands every commit before it reads
    rows back, so this connection always sees what the writer committed."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, cache_mb=None, scratch=True)
        import subprocess
        import sys

        self.writer_peak_kb = 0
        self._lock = threading.Lock()
        self._process: Any = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("sqlite_writer.py")), self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def write(
        self, encoded: Encoded, position: int, expected: Mapping[str, int] | None = None
    ) -> None:
        if not encoded:
            return
        cur = _Statements()
        self._write_rows(cur, encoded)
        projections = [p for p, _ in encoded]
        check, move = self._tracking_statements(projections, position)
        wanted = None
        if expected is not None:
            wanted = (*check, {p.name: expected[p.name] for p in projections})
        answer = self._call(("write", wanted, cur.statements, move))
        if answer[0] == "conflict":
            raise ProjectionConflict(*answer[1:])
        if answer[0] == "error":
            raise answer[1]
        self.count_transaction()

    @contextmanager
    def committed_reads(self) -> Iterator[Any]:
        """On this process's own connection: batches are written by the writer process,
        so no write of this store's is ever open on it."""
        with _read_only_transaction(self._conn) as cur:
            yield cur

    def _call(self, message: Any) -> tuple[Any, ...]:
        import pickle

        with self._lock:
            process = self._process
            try:
                # Pickled whole, then written in one call: pickling into the pipe wrote it
                # 64 kB at a time, each write giving up the GIL and waiting to get it back.
                process.stdin.write(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
                process.stdin.flush()
                answer: tuple[Any, ...] = pickle.load(process.stdout)
            except (OSError, EOFError, pickle.UnpicklingError) as error:
                raise RuntimeError(
                    f"the projection writer process ended (exit code {process.poll()})"
                ) from error
        return answer

    def close(self) -> None:
        """Close the writer (it reports its peak RSS: `writer_peak_kb`), then this one."""
        try:
            if self._process.poll() is None:
                answer = self._call(None)
                if answer[0] == "closed":
                    self.writer_peak_kb = int(answer[1])
                self._process.wait(timeout=30)
        except Exception:
            self._process.kill()
            self._process.wait()
            raise
        finally:
            super().close()

    def kill(self) -> None:
        """End the writer at once (after a failure: its work is thrown away)."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        super().close()


class PostgresProjectionStore(ProjectionStore):
    """Projection tables in PostgreSQL, in the given schema (by default the ledger's)."""

    placeholder = "%s"
    lock_clause = " FOR UPDATE"  # concurrent runners queue here, then see the new position
    sql_types = {
        str: "TEXT",
        int: "BIGINT",
        bool: "BOOLEAN",
        Decimal: "NUMERIC",
        datetime: "TIMESTAMPTZ",
        date: "DATE",
    }

    def _encoders(self, table: Table) -> list[Callable[[Any], Any] | None]:
        return [_normal_or_none if kind is Decimal else None for kind in table.kinds]

    def _write(self, cur: Any, projection: Projection, table: Table, rows: list[Any]) -> None:
        """Many rows: COPY into a scratch table, then one upsert from it."""
        if len(rows) < 20:
            super()._write(cur, projection, table, rows)
            return
        scratch = self._q(f"scratch_{table_name(projection, table)}")
        if scratch not in self._scratch:  # made once per connection (kept if committed)
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {scratch}"
                f" (LIKE {self._q(table_name(projection, table))}) ON COMMIT DELETE ROWS"
            )
            self._scratch_pending.add(scratch)
        columns = ", ".join(self._q(n) for n in table.columns)
        with cur.copy(f"COPY {scratch} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(self._upsert(projection, table, source=scratch))

    def _insert(self, cur: Any, projection: Projection, table: Table, rows: list[Any]) -> None:
        """New rows: COPY straight into the table."""
        if len(rows) < 20:
            super()._insert(cur, projection, table, rows)
            return
        columns = ", ".join(self._q(n) for n in table.columns)
        target = self._q(table_name(projection, table))
        with cur.copy(f"COPY {target} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    @property
    def where(self) -> str:
        return f"PostgreSQL schema {self.schema}"

    def __init__(self, conninfo: str, schema: str) -> None:
        self.schema = schema
        self._conninfo = conninfo
        self._connect()

    def _connect(self) -> None:
        import psycopg
        from psycopg import sql

        self._scratch: set[str] = set()  # scratch tables belong to a connection
        self._scratch_pending: set[str] = set()
        self._conn = self._session()
        schema = sql.Identifier(self.schema)
        # The ledger's own opening (StorageSettings.creating_tables) may create it at the same
        # moment, under another lock: then it exists, which is all that is wanted.
        with (
            contextlib.suppress(psycopg.errors.UniqueViolation),
            self._conn.transaction(),
            self._conn.cursor() as cur,
        ):
            self._serialise_schema_changes(cur)
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))

    def _session(self) -> Any:
        """A connection in autocommit whose unqualified names are the store's schema (it
        need not exist yet: `search_path` is looked up at each statement)."""
        import psycopg
        from psycopg import sql

        conn = psycopg.connect(self._conninfo, autocommit=True)
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        return conn

    def _serialise_schema_changes(self, cur: Any) -> None:
        """`CREATE ... IF NOT EXISTS` is not safe against itself in PostgreSQL: two runners
        starting together on a new schema both create, and one fails (a duplicate key in
        the catalogue, or "tuple concurrently updated"). A lock held to the end of the
        transaction, one per schema, makes the second wait and then find the tables."""
        cur.execute(
            "SELECT pg_advisory_xact_lock(%s)",
            (advisory_lock_key(f"kite-ledger projections {self.schema}"),),
        )

    def reconnect(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
        self._close_reader()
        self._connect()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        self._scratch_pending = set()
        with self._conn.transaction(), self._conn.cursor() as cur:
            yield cur

    _reader: Any = None

    @contextmanager
    def committed_reads(self) -> Iterator[Any]:
        """On a second connection, opened when first wanted (the first one may be inside
        a write's transaction on another thread)."""
        if self._reader is None or self._reader.closed:
            self._reader = self._session()
        with self._reader.transaction(), self._reader.cursor() as cur:
            yield cur

    text_order: ClassVar[str] = ' COLLATE "C"'

    @contextmanager
    def consistent_reads(self) -> Iterator[Any]:
        """On the committed-reads connection: one REPEATABLE READ, READ ONLY transaction
        (a snapshot for every statement), through a server-side cursor, so that a table is
        streamed a page at a time instead of arriving whole."""
        if self._reader is None or self._reader.closed:
            self._reader = self._session()
        with self._reader.transaction():
            self._reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            with self._reader.cursor(name="ledger_consistent_reads") as cur:
                yield cur

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()

    def _committed(self) -> None:
        self._scratch |= self._scratch_pending
        self._scratch_pending = set()

    def drop(self, projection: Projection) -> None:
        super().drop(projection)
        self._scratch = set()  # scratch tables are LIKE the dropped ones: make them again

    def close(self) -> None:
        self._close_reader()
        self._conn.close()


class DuckDBProjectionStore(ProjectionStore):
    """Projection tables in a DuckDB file, for analysts (no server).

    Amounts are DECIMAL(38,10), numbers an analyst can sum and compare in SQL; an amount
    with more than 10 decimal places (a computed reference price, a charge share to 12
    places) is rounded to 10 here, where SQLite (text) and PostgreSQL (NUMERIC) keep it. Ten
    places are far below the paisa; a SQLite file is the exact offline copy."""

    sql_types = {
        str: "VARCHAR",
        int: "BIGINT",
        bool: "BOOLEAN",
        Decimal: f"DECIMAL(38,{PRICE_PLACES})",
        datetime: "TIMESTAMPTZ",
        date: "DATE",
    }

    @property
    def where(self) -> str:
        return self.path

    def __init__(self, path: str | Path) -> None:
        import duckdb

        self.path = str(path)
        self._conn = duckdb.connect(self.path)
        self._conn.execute("SET TimeZone = 'UTC'")

    def _insert(self, cur: Any, projection: Projection, table: Table, rows: list[Any]) -> None:
        self._bulk(cur, projection, table, rows, upsert=False)

    def _write(self, cur: Any, projection: Projection, table: Table, rows: list[Any]) -> None:
        self._bulk(cur, projection, table, rows, upsert=True)

    def _bulk(
        self, cur: Any, projection: Projection, table: Table, rows: list[Any], *, upsert: bool
    ) -> None:
        """The rows as one Arrow table, inserted (or upserted) by one statement. DuckDB
        runs `executemany` a statement per row, at about 2 ms a row: an offline rebuild of
        200,000 events into DuckDB took 405 s, against 4.8 s into SQLite."""
        import pyarrow as pa

        names = list(table.columns)
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
        batch = pa.table(
            {
                name: _arrow_column(values, kind)
                for name, values, kind in zip(names, columns, table.kinds, strict=True)
            }
        )
        cur.register(_BATCH, batch)
        try:
            if upsert:
                cur.execute(self._upsert(projection, table, source=_BATCH))
            else:
                quoted = ", ".join(self._q(n) for n in names)
                cur.execute(
                    f"INSERT INTO {self._q(table_name(projection, table))} ({quoted})"
                    f" SELECT {quoted} FROM {_BATCH}"
                )
        except BaseException:
            _after_a_failure(cur.unregister, _BATCH)
            raise
        cur.unregister(_BATCH)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        cur = self._conn.cursor()
        cur.execute("BEGIN TRANSACTION")
        try:
            yield cur
        except BaseException:
            _after_a_failure(cur.execute, "ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")
        finally:
            cur.close()

    @contextmanager
    def committed_reads(self) -> Iterator[Any]:
        """A cursor of its own (DuckDB gives each cursor its own transaction)."""
        with self.transaction() as cur:
            yield cur

    def close(self) -> None:
        self._conn.close()


_BATCH: Final = "ledger_projection_batch"
_STREAM_PAGE: Final = 2000


def _after_a_failure(call: Callable[[str], Any], argument: str) -> None:
    """`call(argument)` as the clean-up after a failed statement, its own error ignored:
    once a statement fails DuckDB aborts the transaction, and a later call on the cursor
    (unregistering the batch, say) raises "Current transaction is aborted", which would
    replace the cause (out of memory, a full disk, a broken constraint) in the traceback
    and in the message an analyst reads."""
    import duckdb

    with contextlib.suppress(duckdb.Error):
        call(argument)


def _arrow_column(values: Sequence[Any], kind: type[Any]) -> Any:
    """A column of row values for DuckDB, typed by the column's kind. Amounts, times and
    days go as text, which DuckDB casts to the column's DECIMAL, TIMESTAMPTZ or DATE as it
    did each bound value (cells may hold a time as the log's ISO text or as a datetime)."""
    import pyarrow as pa

    if kind is int:
        return pa.array(values, type=pa.int64())
    if kind is bool:
        return pa.array(values, type=pa.bool_())
    if kind is str:
        return pa.array(values, type=pa.string())
    return pa.array(
        [v if v is None or type(v) is str else _text_of(v) for v in values], type=pa.string()
    )


def _text_of(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def projections_path_for(ledger_path: str | Path) -> Path:
    """Where a SQLite ledger's projections live: a file of their own beside the ledger's
    (`ledger.db` -> `ledger.projections.db`).

    Not the ledger's own file: SQLite lets one writer at a time into a file, so while a
    projection batch's transaction was open (tens of milliseconds for 2,000 events) every
    command waited for the lock, in the busy handler's steps of up to 100 ms. Measured
    with a runner process catching up 200,000 events in the same file: commands ran at a
    third of the rate, with a maximum of 453 ms; beside it, 58 ms (the two processes
    sharing two cores)."""
    path = Path(ledger_path)
    return path.with_name(f"{path.stem}.projections{path.suffix}")


def store_for_ledger_url(url: str | Path | StorageSettings | None) -> ProjectionStore:
    """The ledger's own projection store: on SQLite a file beside the ledger's
    (`projections_path_for`), on PostgreSQL the ledger's schema (where rows are locked, not
    the database, so a batch does not hold commands up)."""
    settings = url if isinstance(url, StorageSettings) else StorageSettings.from_url(url)
    if settings.backend == "sqlite":
        assert settings.sqlite_path is not None
        return SQLiteProjectionStore(projections_path_for(settings.sqlite_path))
    return store_at(settings)


def store_at(url: str | Path | StorageSettings) -> ProjectionStore:
    """Projections kept in exactly this database: a SQLite file, or a PostgreSQL URL
    (`?schema=` names the schema), as `--projections-db` gives it."""
    settings = url if isinstance(url, StorageSettings) else StorageSettings.from_url(url)
    if settings.backend == "sqlite":
        assert settings.sqlite_path is not None
        return SQLiteProjectionStore(settings.sqlite_path)
    assert settings.postgres_conninfo is not None
    assert settings.postgres_schema is not None
    import psycopg

    try:
        return PostgresProjectionStore(settings.postgres_conninfo, settings.postgres_schema)
    except psycopg.OperationalError as error:  # named as the ledger's own URL is (masked)
        raise StorageError(
            f"cannot reach PostgreSQL at {settings.display}: {first_line(error)}"
        ) from None


def store_for_file(path: str | Path) -> ProjectionStore:
    """An analyst's file: `.duckdb` for DuckDB, anything else SQLite."""
    return (
        DuckDBProjectionStore(path)
        if str(path).lower().endswith(".duckdb")
        else SQLiteProjectionStore(path, cache_mb=None)
    )


def sync_file(path: str | Path) -> None:
    """Flush a closed file's data to the disk (a scratch file, before it is moved)."""
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def sync_directory(path: str | Path) -> None:
    """Flush a directory's entries to the disk (after a file was moved into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
