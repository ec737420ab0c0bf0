"""Where the log lives, and how events are written to it.

`StorageSettings.from_url` turns a database URL into the `eventsourcing` environment:

* a path (default `./ledger.db`) or `sqlite:///path`: one SQLite file, WAL journal (set
  by the library), `synchronous` left at SQLite's FULL default so a commit is durable;
* `postgresql://user[:password]@host[:port]/dbname[?schema=name]`: PostgreSQL through
  `eventsourcing.postgres` with a connection pool, in a schema of its own (default
  `kite_ledger`), created if missing.

`POSTGRES_ENABLE_DB_FUNCTIONS` is forced off, and refused if someone turns it on: without
the table lock it drops, readers that tail the log by notification id can miss events
committed out of order.

The transcoder learns the ledger's value types so that every event comes back from the log
exactly as it went in: enums as the same member (not `str`), dates as `date`, nested values
as their frozen dataclasses.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date
from enum import Enum
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from eventsourcing.persistence import JSONTranscoder, Transcoding

from ledger.domain.errors import LedgerError
from ledger.domain.status import EventKind, OrderStatus
from ledger.domain.values import (
    Exchange,
    Fill,
    InstrumentRef,
    OrderChanges,
    OrderType,
    Product,
    Side,
    Source,
    Validity,
    Variety,
)

DEFAULT_DATABASE: Final = "./ledger.db"
DEFAULT_SCHEMA: Final = "kite_ledger"
DATABASE_URL_VARIABLE: Final = "LEDGER_DATABASE_URL"
_FORBIDDEN_SETTING: Final = "POSTGRES_ENABLE_DB_FUNCTIONS"


class StorageError(LedgerError, ValueError):
    """The database URL or settings are unusable; the message says which part."""


class StorageUnavailable(LedgerError):
    """The database could not be reached, or stayed locked, past the ledger's bound.

    The command was not acknowledged. A submission, a fill or another broker update may
    be sent again as it is: they are idempotent (client order id, trade id, the order's
    state), so one that did reach the log before the failure is not written twice. A
    modify or cancel request is not (an order may be asked twice): look at the order's
    pending request before asking again."""

    def __init__(self, where: str, what: str, cause: BaseException) -> None:
        super().__init__(
            f"{what}: the database at {where} is unavailable ({first_line(cause)}); the"
            " command was not acknowledged and may be sent again"
        )


def first_line(error: BaseException) -> str:
    """The first line of an error's message (drivers add detail lines), or its repr."""
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


def advisory_lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit integer) named by `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


@dataclass(frozen=True)
class StorageSettings:
    """A parsed database location and the `eventsourcing` environment for it."""

    backend: Literal["sqlite", "postgres"]
    display: str  # the URL with any password removed, for messages and logs
    env: Mapping[str, str] = field(repr=False)
    sqlite_path: Path | None = None
    postgres_schema: str | None = None
    postgres_conninfo: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str | Path | None = None, *, lock_timeout: int = 10) -> StorageSettings:
        """Parse `url`, or `LEDGER_DATABASE_URL`, or the default `./ledger.db`.

        `lock_timeout` (seconds) bounds how long a write waits for another writer's lock
        (SQLite: `database is locked` is retried until then) before it fails clearly."""
        if lock_timeout < 1:
            raise StorageError("lock_timeout must be at least 1 second")
        settings = cls._parse(url)
        key = "SQLITE_LOCK_TIMEOUT" if settings.backend == "sqlite" else "POSTGRES_LOCK_TIMEOUT"
        env = dict(settings.env)
        env[key] = str(lock_timeout)
        return replace(settings, env=env)

    @classmethod
    def _parse(cls, url: str | Path | None) -> StorageSettings:
        text = str(url) if url is not None else os.environ.get(DATABASE_URL_VARIABLE, "")
        text = text.strip() or DEFAULT_DATABASE
        if text.startswith(("postgresql://", "postgres://")):
            return cls._postgres(text)
        if text.startswith("sqlite:"):
            # As in SQLAlchemy: sqlite:///relative.db and sqlite:////absolute/path.db
            path_text = text.removeprefix("sqlite:")
            path_text = path_text.removeprefix("///") if path_text.startswith("///") else path_text
            return cls._sqlite(path_text)
        if "://" in text:
            scheme = text.split("://", 1)[0]
            raise StorageError(
                f"database URL: unsupported scheme {scheme!r} in {_redact(text)!r}"
                " (use a file path, sqlite:///path or postgresql://user@host:port/dbname)"
            )
        return cls._sqlite(text)

    @classmethod
    def _sqlite(cls, path_text: str) -> StorageSettings:
        if not path_text or path_text == ":memory:":
            raise StorageError(
                "database URL: give a file path for SQLite; an in-memory database"
                " would lose the log when the process ends"
            )
        path = Path(path_text).expanduser()
        if path.is_dir():
            raise StorageError(f"database URL: {path} is a directory, not a database file")
        if not path.parent.exists():
            raise StorageError(f"database URL: directory {path.parent} does not exist")
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(path),
            "SQLITE_LOCK_TIMEOUT": "10",
            "APPLICATION_RECORDER_TOPIC": "ledger.recorders:LeanSQLiteRecorder",
        }
        return cls(backend="sqlite", display=str(path), env=env, sqlite_path=path)

    @classmethod
    def _postgres(cls, url: str) -> StorageSettings:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        unknown = sorted(set(query) - {"schema"})
        if unknown:
            raise StorageError(
                f"database URL: unknown parameter(s) {', '.join(unknown)} (only schema= is read)"
            )
        dbname = unquote(parts.path.lstrip("/"))
        if not dbname:
            raise StorageError(f"database URL: no database name in {_redact(url)!r}")
        if not parts.hostname:
            raise StorageError(f"database URL: no host in {_redact(url)!r}")
        try:
            port = parts.port or 5432
        except ValueError:
            raise StorageError(f"database URL: bad port in {_redact(url)!r}") from None
        schema = query.get("schema", [DEFAULT_SCHEMA])[0]
        if not schema.replace("_", "").isalnum() or schema[0].isdigit():
            raise StorageError(f"database URL: schema {schema!r} must be letters, digits and _")
        user = unquote(parts.username or "postgres")
        password = unquote(parts.password or "")
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": parts.hostname,
            "POSTGRES_PORT": str(port),
            "POSTGRES_USER": user,
            "POSTGRES_PASSWORD": password,
            "POSTGRES_SCHEMA": schema,
            "POSTGRES_POOL_SIZE": "5",
            "POSTGRES_MAX_OVERFLOW": "10",
            "POSTGRES_CONNECT_TIMEOUT": "10",
            "POSTGRES_LOCK_TIMEOUT": "10",
            # No ping before each use of a pooled connection (a round trip per command):
            # a connection found dead is retried on a fresh one (see ledger/recorders.py).
            "POSTGRES_PRE_PING": "n",
            "APPLICATION_RECORDER_TOPIC": "ledger.recorders:OneTripPostgresRecorder",
            _FORBIDDEN_SETTING: "n",
        }
        conninfo = f"postgresql://{parts.netloc}/{parts.path.lstrip('/')}"
        return cls(
            backend="postgres",
            display=_redact(url),
            env=env,
            postgres_schema=schema,
            postgres_conninfo=conninfo,
        )

    @contextmanager
    def creating_tables(self) -> Iterator[None]:
        """On PostgreSQL: create the schema if missing (what the library does not; a
        concurrent creator's duplicate is ignored), then, while the ledger's recorders
        create their tables (if missing), hold a lock that other processes opening the
        same schema wait for. One connection does both.

        `CREATE ... IF NOT EXISTS` is not safe against itself in PostgreSQL: two processes
        opening the ledger at once (a server and a runner started together) both create,
        and one fails ("tuple concurrently updated", or a duplicate key in the
        catalogue): 5 errors in 10 rounds of three processes starting on a new schema,
        one round in 20 on an existing one. With the lock the second waits (up to the
        ledger's lock timeout), then finds the tables. The lock is a session's: closing
        its connection releases it, also when that connection has died meanwhile."""
        if self.backend != "postgres":
            yield
            return
        import psycopg

        assert self.postgres_conninfo is not None
        key = advisory_lock_key(f"kite-ledger tables {self.postgres_schema}")
        timeout = int(self.env.get("POSTGRES_LOCK_TIMEOUT", "10"))
        try:
            conn = psycopg.connect(self.postgres_conninfo, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as error:
            raise StorageError(
                f"cannot reach PostgreSQL at {self.display}: {first_line(error)}"
            ) from None
        try:
            self._create_schema(conn)
            self._lock_for_tables(conn, key, timeout)
            yield
        finally:
            conn.close()  # releases the lock; never raises

    def _lock_for_tables(self, conn: Any, key: int, timeout: int) -> None:
        import psycopg

        try:
            conn.execute(f"SET lock_timeout = '{timeout}s'")
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        except psycopg.errors.LockNotAvailable:
            raise StorageError(
                f"PostgreSQL at {self.display}: another process has been creating the"
                f" ledger's tables for over {timeout} s; try again"
            ) from None
        except psycopg.Error as error:
            raise StorageError(f"PostgreSQL at {self.display}: {first_line(error)}") from None

    def _create_schema(self, conn: Any) -> None:
        import psycopg
        from psycopg import sql

        assert self.postgres_schema is not None
        try:
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(self.postgres_schema)
                )
            )
        except psycopg.errors.UniqueViolation:
            pass  # another opener or a projection store made it at this very moment
        except psycopg.Error as error:
            raise StorageError(f"PostgreSQL at {self.display}: {first_line(error)}") from None


def guard_environment(env: Mapping[str, str], app_name: str) -> None:
    """Refuse `POSTGRES_ENABLE_DB_FUNCTIONS` wherever it might be set."""
    for key in (_FORBIDDEN_SETTING, f"{app_name.upper()}_{_FORBIDDEN_SETTING}"):
        value = env.get(key, "").strip().lower()
        if value and value not in ("n", "no", "f", "false", "off", "0"):
            raise StorageError(
                f"{key}={env[key]!r} is refused: it drops the table lock that keeps the log's"
                " order equal to commit order, and readers would miss events"
            )


# --------------------------------------------------------------------------- transcodings


class EnumAsValue(Transcoding):
    """One enum class, stored as its value and read back as the same member."""

    def __init__(self, enum_class: type[Enum]) -> None:
        self.type = enum_class
        self.name = enum_class.__name__
        self._enum_class = enum_class

    def encode(self, obj: Enum) -> Any:
        return obj.value

    def decode(self, data: Any) -> Enum:
        return self._enum_class(data)


class DateAsISO(Transcoding):
    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


class InstrumentRefAsDict(Transcoding):
    type = InstrumentRef
    name = "instrument_ref"

    def encode(self, obj: InstrumentRef) -> dict[str, Any]:
        return {"exchange": obj.exchange, "tradingsymbol": obj.tradingsymbol}

    def decode(self, data: dict[str, Any]) -> InstrumentRef:
        return InstrumentRef(exchange=data["exchange"], tradingsymbol=data["tradingsymbol"])


class OrderChangesAsDict(Transcoding):
    type = OrderChanges
    name = "order_changes"

    def encode(self, obj: OrderChanges) -> dict[str, Any]:
        return {
            "quantity": obj.quantity,
            "price": obj.price,
            "trigger_price": obj.trigger_price,
            "order_type": obj.order_type,
            "validity": obj.validity,
            "disclosed_quantity": obj.disclosed_quantity,
        }

    def decode(self, data: dict[str, Any]) -> OrderChanges:
        return OrderChanges(**data)


class FillAsDict(Transcoding):
    """Fills inside order snapshots."""

    type = Fill
    name = "fill"

    def encode(self, obj: Fill) -> dict[str, Any]:
        return {
            "trade_id": obj.trade_id,
            "quantity": obj.quantity,
            "price": obj.price,
            "exchange_timestamp": obj.exchange_timestamp,
            "source": obj.source,
            "recorded_at": obj.recorded_at,
            "charges": obj.charges,
        }

    def decode(self, data: dict[str, Any]) -> Fill:
        return Fill(**data)


class SetAsSortedList(Transcoding):
    """Sets of text (an order's trade ids) inside snapshots; sorted so a snapshot's bytes
    do not depend on hash order."""

    type = set
    name = "set"

    def encode(self, obj: set[str]) -> list[str]:
        return sorted(obj)

    def decode(self, data: list[str]) -> set[str]:
        return set(data)


#: Enum classes that may appear in events; their class names are their stored names.
STORED_ENUMS: Final[tuple[type[Enum], ...]] = (
    Exchange,
    Side,
    OrderType,
    Product,
    Variety,
    Validity,
    Source,
    OrderStatus,
    EventKind,
)


class _NotPlain(Exception):
    """A value the fast encoding leaves to the library's encoder."""


#: Bytes that stand for a decimal digit, everything else a space: a text with a run of 19
#: digits may hold an integer beyond 64 bits, which orjson would parse as a float.
_DIGITS: Final = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_NUMBER: Final = b"0" * 19
#: States longer than this are decoded by the library: what makes them long is arrays
#: (a snapshot's fill rows, trade ids), which `json` builds in C with no hook to call, and
#: which the walk here would visit value by value (a snapshot of 1,000 fills: 369 us by
#: `json`, 991 us here). Events are 0.4-1 kB.
_LONGEST_FAST_DECODE: Final = 4096
#: What `loads_like_json` gives for a text it leaves to `json`.
NOT_PARSED: Final = object()


def loads_like_json(text: bytes | str) -> Any:
    """`json.loads(text)` by orjson (a third of the cost), or `NOT_PARSED` where orjson
    might not give the same: a run of 19 digits anywhere (an integer beyond 64 bits, which
    orjson would make a float, silently; a few hashes in a thousand have such a run), and
    whatever orjson refuses (NaN, 1e400, lone surrogates, text that is not UTF-8, nesting
    beyond 1,024), where `json` either agrees or raises its usual error."""
    try:
        data = text.encode() if type(text) is str else text  # lone surrogates raise
        if _LONG_NUMBER in data.translate(_DIGITS):
            return NOT_PARSED
        return orjson.loads(data)
    except (UnicodeEncodeError, orjson.JSONDecodeError):
        return NOT_PARSED


class LedgerTranscoder(JSONTranscoder):
    """The library's JSON transcoder, writing the same JSON in about a third of the time.

    Every command encodes its events, so `encode` turns the state into plain values in one
    pass (each registered type becomes the library's `{"_type_": name, "_data_": ...}`)
    and lets orjson write the text. Anything it is not sure about (a float, a key that is
    not text, an integer wider than 64 bits, a type nobody registered, text that is not
    Unicode) goes to the library's encoder instead, which then behaves exactly as before:
    the stored JSON always decodes to what the library would have stored.

    `decode` parses with orjson where that gives what `json` gives (`loads_like_json`),
    then applies the library's own `_decode_obj` to every object, innermost first and in
    document order, as `json`'s object hook does: the same values and the same errors.
    Reading every order back from the log (200,650 events) takes 6.4-6.7 s instead of
    7.4-7.7. Anything else, and any state over 4 kB, is the library's."""

    def __init__(self) -> None:
        super().__init__()
        self._converters: dict[type, Callable[[Any], Any]] = {
            dict: self._plain_dict,
            list: self._plain_list,
            tuple: self._plain_list,
        }

    def register(self, transcoding: Transcoding) -> None:
        super().register(transcoding)
        self._converters.pop(transcoding.type, None)

    def encode(self, obj: Any) -> bytes:
        try:
            return orjson.dumps(self._plain(obj))
        except (_NotPlain, orjson.JSONEncodeError):
            return super().encode(obj)

    def decode(self, data: bytes) -> Any:
        if len(data) > _LONGEST_FAST_DECODE:
            return super().decode(data)  # mostly arrays (a snapshot's fills): json is quicker
        parsed = loads_like_json(data)
        if parsed is NOT_PARSED:
            return super().decode(data)
        kind = type(parsed)
        if kind is dict:
            return self._decoded_object(parsed)
        return self._decoded_array(parsed) if kind is list else parsed

    def _decoded_object(self, value: dict[str, Any]) -> Any:
        """`value` with its members decoded, then through `_decode_obj` if it is one of
        the transcoder's `{"_type_": ..., "_data_": ...}` (the hook returns any other
        object as it is); members changed in place."""
        for key, item in value.items():
            kind = type(item)
            if kind is dict:
                value[key] = self._decoded_object(item)
            elif kind is list:
                value[key] = self._decoded_array(item)
        if len(value) == 2 and "_type_" in value and "_data_" in value:
            return self._decode_obj(value)
        return value

    def _decoded_array(self, value: list[Any]) -> list[Any]:
        for index, item in enumerate(value):
            kind = type(item)
            if kind is dict:
                value[index] = self._decoded_object(item)
            elif kind is list:
                value[index] = self._decoded_array(item)
        return value

    def _plain(self, value: Any) -> Any:
        kind = type(value)
        if kind is str or kind is int or value is None or kind is bool:
            return value
        convert = self._converters.get(kind)
        if convert is None:
            convert = self._converters[kind] = self._converter_for(kind)
        return convert(value)

    def _plain_dict(self, value: dict[Any, Any]) -> dict[str, Any]:
        plain: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _NotPlain
            kind = type(item)
            if kind is str or kind is int or item is None or kind is bool:
                plain[key] = item
            else:
                plain[key] = self._plain(item)
        return plain

    def _plain_list(self, value: list[Any] | tuple[Any, ...]) -> list[Any]:
        return [self._plain(item) for item in value]

    def _converter_for(self, kind: type) -> Callable[[Any], Any]:
        transcoding = self.types.get(kind)
        if transcoding is None or issubclass(kind, str | int | float | list | tuple | dict):
            # json writes subclasses of its own types as those types, never through a
            # transcoding; floats (never in the ledger's events) keep json's spelling.
            return _not_plain
        name, encode, plain = transcoding.name, transcoding.encode, self._plain
        return lambda value: {"_type_": name, "_data_": plain(encode(value))}


def _not_plain(value: Any) -> Any:
    raise _NotPlain


def register_ledger_transcodings(transcoder: JSONTranscoder) -> None:
    """Teach `transcoder` the ledger's value types (in addition to the library's own)."""
    for enum_class in STORED_ENUMS:
        transcoder.register(EnumAsValue(enum_class))
    transcoder.register(DateAsISO())
    transcoder.register(InstrumentRefAsDict())
    transcoder.register(OrderChangesAsDict())
    transcoder.register(FillAsDict())
    transcoder.register(SetAsSortedList())
