"""Export the log, and rebuild every projection from an export with no database server.

An export holds one record per event, in log order:

| column | meaning |
|---|---|
| position | the event's notification id in the log |
| order_id, version | the order and the event's version in it |
| topic, event_type | the event class (stable topic) and its short name |
| recorded_at | the ledger's record time (UTC) |
| state | the event exactly as stored (the ledger's JSON), so nothing is lost |

JSON lines (`.jsonl`) and Parquet (`.parquet`) hold the same columns. An analyst can query
either directly (DuckDB: `SELECT * FROM 'log.parquet'`), or rebuild the projections into a
DuckDB or SQLite file with `offline_rebuild` and query those tables; they equal the live
projections exactly, because the same folds run over the same events. (In DuckDB, amounts
are DECIMAL(38,10): one with more than 10 decimal places, such as a computed reference
price or a charge share to 12 places, is rounded to 10 there; SQLite keeps it exactly.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal
from uuid import UUID

from eventsourcing.persistence import (
    StoredEvent,
)

from ledger.application import OrderLedger
from ledger.checkpoints import IntegrityReport, check_records
from ledger.domain.errors import LedgerError
from ledger.domain.order import Order
from ledger.integrity import Checkpoint, StoredRecord
from ledger.persistence import first_line
from projections.base import Projection, Record, ledger_mapper, parse_state
from projections.rebuild import rebuild
from projections.runner import (
    DEFAULT_BATCH_SIZE,
    LedgerLog,
    canonical_id,
    decode,
    order_kind,
    stored_records,
)
from projections.store import (
    WriterProcessStore,
    projections_path_for,
    store_for_file,
    sync_directory,
    sync_file,
)

Format = Literal["jsonl", "parquet"]
COLUMNS: Final = ("position", "order_id", "version", "topic", "event_type", "recorded_at", "state")


class ExportError(LedgerError, ValueError):
    """An export file is unreadable or malformed; the message names the file and record."""


_FORMAT_OF_SUFFIX: Final[dict[str, Format]] = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
#: Suffixes of formats an export is not written in: a file so named is refused.
_OTHER_FORMATS: Final = {".csv": "CSV", ".tsv": "TSV", ".xlsx": "Excel", ".feather": "Arrow"}


def format_of(path: str | Path) -> Format:
    suffix = Path(path).suffix.lower()
    named = _FORMAT_OF_SUFFIX.get(suffix)
    if named is None:
        raise ExportError(f"{path}: unknown export format {suffix!r} (use .jsonl or .parquet)")
    return named


def export_format(path: str | Path, fmt: Format | None) -> Format:
    """The format to export to `path` in: `fmt`, or without one its suffix's.

    A name and a format that disagree are refused before anything is written: `--out
    x.jsonl` with the default format wrote Parquet bytes into a file that every reader
    (offline-rebuild, DuckDB, a person) takes by its name for JSON lines. A suffix of
    a format an export is never in (`.csv`) is refused whatever the format; a name
    that says nothing (`/dev/stdout`, `log.out`) takes the format given."""
    suffix = Path(path).suffix.lower()
    other = _OTHER_FORMATS.get(suffix)
    if other is not None:
        raise ExportError(
            f"{path}: an export is Parquet or JSON lines, not {other}: name it .parquet or .jsonl"
        )
    named = _FORMAT_OF_SUFFIX.get(suffix)
    if fmt is None:
        if named is None:
            raise ExportError(
                f"{path}: the export format cannot be told from {suffix or 'a name with no'}"
                " suffix: name it .parquet or .jsonl, or give the format"
            )
        return named
    if named is not None and named != fmt:
        raise ExportError(
            f"{path}: the name says {named} but the format asked for is {fmt}:"
            f" name it {'.parquet' if fmt == 'parquet' else '.jsonl'} or ask for {named}"
        )
    return fmt


# --------------------------------------------------------------------------- export


def _records(
    ledger: OrderLedger, since: datetime | None, until: datetime | None, page: int = 5000
) -> Iterator[dict[str, Any]]:
    """Export rows straight from the stored rows: the state exactly as stored, the other
    columns from it (no event objects are made). With a window, whole orders: every event
    of each order with an event recorded in [since, until) (`_orders_in`)."""
    log = LedgerLog(ledger)
    wanted = None if since is None and until is None else _orders_in(log, since, until, page)
    after = 0
    while rows := log.stored_rows(after, page):
        for position, order_id, version, topic, state in rows:
            if wanted is not None and order_id not in wanted:
                continue
            kind = order_kind(topic, position)
            if kind is None:
                continue  # another application's event in a shared table
            text = state if isinstance(state, str) else str(state, "utf-8")
            recorded_at = datetime.fromisoformat(parse_state(text)["timestamp"]["_data_"])
            yield {
                "position": position,
                "order_id": order_id if len(order_id) == 36 else canonical_id(order_id),
                "version": version,
                "topic": topic,
                "event_type": kind,
                "recorded_at": recorded_at.astimezone(UTC),
                "state": text,
            }
        after = rows[-1][0]


def _orders_in(
    log: LedgerLog, since: datetime | None, until: datetime | None, page: int
) -> set[str]:
    """The orders (ids as stored) with an event recorded in [since, until).

    A window exports whole orders, not the events in it one by one: an order submitted
    before the window and filled in it gave an export with a fill and no submission,
    which offline-rebuild could not fold (the README's `export --from T --to T` then
    `offline-rebuild`). Every event of such an order is exported, those before and after
    the window too, so each order in the export is complete and folds as it does live."""
    orders: set[str] = set()
    after = 0
    while rows := log.stored_rows(after, page):
        for position, order_id, _version, topic, state in rows:
            if order_id in orders or order_kind(topic, position) is None:
                continue
            text = state if isinstance(state, str) else str(state, "utf-8")
            recorded_at = datetime.fromisoformat(parse_state(text)["timestamp"]["_data_"])
            if (since is None or recorded_at >= since) and (until is None or recorded_at < until):
                orders.add(order_id)
        after = rows[-1][0]
    return orders


def export_log(
    ledger: OrderLedger,
    path: str | Path,
    *,
    fmt: Format | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    on_record: Callable[[int], None] | None = None,
) -> int:
    """Write the log to `path`: every event, or with `since` / `until` every event of the
    orders with an event recorded in [since, until) (whole orders, so the export folds:
    `_orders_in`). Streams: memory stays flat whatever the log's size (a window keeps the
    set of its order ids). Returns the records written.

    All or nothing: the export is written to a file beside `path`, flushed to the disk
    and moved over `path` only when complete, so an interrupted export leaves what was
    there (it left a shorter file, which offline-rebuild took for the whole log). The
    ledger's own files are refused with nothing written (`--out ledger.db` emptied the
    ledger: its target was truncated before the log was read out of it).

    A stream (a pipe, a terminal, `--out /dev/stdout` whatever it is redirected to) is
    written as the export goes: there is nothing there to keep. A directory with no room
    for the file beside the target is refused, naming it. A target that cannot be replaced
    (a file bind-mounted into a container) has the complete export copied over it; if
    that fails, the error names the file that still holds the complete export."""
    fmt = export_format(path, fmt)
    target, stream = _export_target(ledger, path)
    records = _records(ledger, since, until)
    if stream:
        with _open_stream(target) as sink:
            return _write_export(fmt, sink, records, on_record)
    partial = target.with_name(f"{target.stem}.partial-{os.getpid()}{target.suffix}")
    try:
        sink = partial.open("wb")
    except OSError as error:
        raise ExportError(
            f"{path}: the export is written beside it first and cannot be"
            f" ({error.strerror}); choose a file in a directory you may write in"
        ) from None
    try:
        with sink:
            count = _write_export(fmt, sink, records, on_record)
        sync_file(partial)
    except BaseException:  # a failure or an interrupt: the target stays as it was
        partial.unlink(missing_ok=True)
        raise
    try:
        os.replace(partial, target)
    except OSError as error:
        if error.errno not in (errno.EBUSY, errno.EXDEV):
            partial.unlink(missing_ok=True)
            raise
        try:
            _copy_over(partial, target)  # a mount point: rewritten, not replaced
        except OSError as copy_error:
            raise ExportError(
                f"{path}: could not be rewritten ({copy_error.strerror}); the complete"
                f" export is in {partial}"
            ) from copy_error
        except BaseException as interrupted:
            interrupted.add_note(f"{path} is incomplete; the complete export is in {partial}")
            raise
        partial.unlink()
        return count
    sync_directory(target.parent)
    return count


#: Names of the process's own standard output: written through the descriptor it has
#: (opened again, a file redirected with `>>` would be truncated, not appended to).
_STDOUT_NAMES: Final = ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")


@contextlib.contextmanager
def _open_stream(target: Path) -> Iterator[BinaryIO]:
    if str(target) in _STDOUT_NAMES:
        sys.stdout.flush()
        sink = os.fdopen(os.dup(1), "wb")  # the process's, whatever sys.stdout is now
    else:
        sink = target.open("wb")
    with sink:
        yield sink


def _write_export(
    fmt: Format,
    sink: BinaryIO,
    records: Iterator[dict[str, Any]],
    on_record: Callable[[int], None] | None,
) -> int:
    if fmt == "parquet":
        return _write_parquet(sink, records, on_record)
    return _write_jsonl(sink, records, on_record)


def _copy_over(source: Path, target: Path) -> None:
    """Rewrite `target` with the bytes of the complete export `source`, durably."""
    with source.open("rb") as reader, target.open("wb") as writer:
        shutil.copyfileobj(reader, writer)
        writer.flush()
        os.fsync(writer.fileno())


def _export_target(ledger: OrderLedger, path: str | Path) -> tuple[Path, bool]:
    """The file an export of `ledger` may replace: `path` with its symbolic links
    followed (the link keeps pointing at the new export), checked to be neither a
    directory nor a block device, nor one of the ledger's own files; and whether it is a
    stream (a pipe, a terminal, a character device) to write straight into."""
    given = Path(path)
    if given.is_dir():
        # As open() said it before exports were written beside their target.
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    try:
        mode = given.stat().st_mode
    except OSError:  # not there yet
        mode = 0
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode):
        return given, True
    stream = str(given) in _STDOUT_NAMES and not stat.S_ISBLK(mode)
    target = Path(os.path.realpath(given))
    if not stream and target.exists() and not target.is_file():
        raise ExportError(f"{path}: is not a regular file (an export replaces the file)")
    database = ledger.storage.sqlite_path if ledger.storage is not None else None
    if database is not None:
        for what, own in (("database", database), ("projections", projections_path_for(database))):
            for name in (own, *(own.with_name(own.name + s) for s in SQLITE_SIDE_FILES)):
                if _same_file(target, name):
                    raise ExportError(
                        f"{path}: is the ledger's own {what} file ({name}); choose another"
                        " file for the export (nothing was written)"
                    )
    if stream:  # stdout redirected to a file: written where the redirection says
        return given, True
    return target, False


#: The files SQLite keeps beside a database while it is open or after a crash.
SQLITE_SIDE_FILES: Final = ("-wal", "-shm", "-journal")


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: spelled alike once resolved, or (both existing)
    the same file on disk (a hard link)."""
    if a == Path(os.path.realpath(b)):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist
        return False


def _write_jsonl(
    sink: BinaryIO, records: Iterator[dict[str, Any]], on_record: Callable[[int], None] | None
) -> int:
    count = 0
    for record in records:
        record["recorded_at"] = record["recorded_at"].isoformat()
        sink.write((json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8"))
        count += 1
        if on_record:
            on_record(count)
    sink.flush()
    return count


def _parquet_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("position", pa.int64()),
            ("order_id", pa.string()),
            ("version", pa.int64()),
            ("topic", pa.string()),
            ("event_type", pa.string()),
            ("recorded_at", pa.timestamp("us", tz="UTC")),
            ("state", pa.string()),
        ]
    )


def _write_parquet(
    sink: BinaryIO, records: Iterator[dict[str, Any]], on_record: Callable[[int], None] | None
) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _parquet_schema()
    count = 0
    with pq.ParquetWriter(pa.PythonFile(_Counted(sink), mode="w"), schema) as writer:
        chunk: list[dict[str, Any]] = []
        for record in records:
            chunk.append(record)
            count += 1
            if len(chunk) >= 10000:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                chunk = []
            if on_record:
                on_record(count)
        if chunk or count == 0:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
    return count


class _Counted:
    """A sink Parquet can be written to when it cannot seek (a pipe): it asks where it is
    (`tell`), which is what has been written."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self._written = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        self._sink.flush()

    def close(self) -> None:  # the caller closes the sink itself
        self._sink.flush()
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


# --------------------------------------------------------------------------- import


def _stored(record: Any, where: str) -> tuple[int, StoredEvent]:
    if not isinstance(record, dict):
        raise ExportError(f"{where}: expected an object with {', '.join(COLUMNS)}")
    missing = [c for c in ("position", "order_id", "version", "topic", "state") if c not in record]
    if missing:
        raise ExportError(f"{where}: missing {', '.join(missing)}")
    position, version = record["position"], record["version"]
    if type(position) is not int or type(version) is not int:  # not "5", 5.9 or true
        raise ExportError(f"{where}: position and version must be whole numbers")
    try:
        order_id = UUID(str(record["order_id"]))
    except (TypeError, ValueError) as error:
        raise ExportError(f"{where}: bad order_id ({error})") from None
    if not isinstance(record["topic"], str) or not isinstance(record["state"], str):
        raise ExportError(f"{where}: topic and state must be strings")
    return position, StoredEvent(
        originator_id=order_id,
        originator_version=version,
        topic=record["topic"],
        state=record["state"].encode("utf-8"),
    )


def read_export(path: str | Path, *, chunk: int = 5000) -> Iterator[list[tuple[int, Order.Event]]]:
    """The events of an export, in chunks, checked: positions must increase and each
    record must decode to an order event, or `ExportError` names the record."""
    mapper = ledger_mapper()
    fmt = format_of(path)
    raw = _read_parquet(path) if fmt == "parquet" else _read_jsonl(path)
    last = 0
    pending: list[tuple[int, StoredEvent]] = []

    def flush() -> list[tuple[int, Order.Event]]:
        try:
            return decode(mapper, pending)
        except Exception as error:  # a corrupt state or unknown topic
            first = pending[0][0] if pending else 0
            raise ExportError(
                f"{path}: cannot decode events from position {first}: {error}"
            ) from None

    for where, record in raw:
        position, stored = _stored(record, where)
        if position <= last:
            raise ExportError(
                f"{where}: position {position} is not after {last} (log order broken)"
            )
        last = position
        pending.append((position, stored))
        if len(pending) >= chunk:
            yield flush()
            pending = []
    if pending:
        yield flush()


def _read_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    try:
        with Path(path).open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as error:
                    raise ExportError(f"{path}:{number}: not JSON ({error.msg})") from None
    except OSError as error:
        raise ExportError(f"{path}: cannot read export: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ExportError(f"{path}: not a UTF-8 text file") from None


def _open_parquet(path: str | Path) -> Any:
    """A Parquet reader that keeps nothing it has handed out (pre_buffer off: with it, the
    reader keeps what it read, and memory grows with the file)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(str(path), pre_buffer=False)


def _release_arrow_memory() -> None:
    """Give back the decode buffers Arrow's allocator (mimalloc) keeps once freed: about
    60 MB for the rest of the process otherwise (reading a 100,000-event export took the
    process from 49 to 110 MB; releasing after each batch, 81)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _read_parquet(path: str | Path) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa

    try:
        parquet = _open_parquet(path)
    except (OSError, pa.ArrowException) as error:
        raise ExportError(f"{path}: cannot read Parquet export: {error}") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=5000, use_threads=False):
        records = batch.to_pylist()
        del batch
        _release_arrow_memory()
        for record in records:
            index += 1
            yield f"{path} record {index}", record


def read_export_records(path: str | Path, *, chunk: int = 5000) -> Iterator[list[Record]]:
    """The records of an export, in chunks, checked as `read_export` checks events; the
    state is parsed but no event object is made (what the folds read)."""
    fmt = format_of(path)
    rows = _parquet_rows(path, chunk) if fmt == "parquet" else _jsonl_rows(path, chunk)
    last = 0
    for where, batch in rows:
        try:
            records = stored_records(batch)
        except (ValueError, TypeError) as error:  # a corrupt state or unknown topic
            first = batch[0][0] if batch else 0
            raise ExportError(
                f"{path}: cannot decode events from position {first}: {error}"
            ) from None
        for record in records:
            if record.position <= last:
                raise ExportError(
                    f"{where}: position {record.position} is not after {last} (log order broken)"
                )
            last = record.position
        # Handed over without keeping a reference while suspended: the runner frees a
        # batch's records (and their states) before the cyclic collector runs again.
        handed = [records]
        del records, batch
        yield handed.pop()


StoredRow = tuple[Any, ...]  # position, order id, version, topic, state[, event_type, recorded_at]


def export_integrity(
    path: str | Path, *, reference: Sequence[Checkpoint] | None = None
) -> IntegrityReport:
    """An export checked as `verify` checks the database, with no database: every order's
    hash chain, and, with `reference` (a digest file's checkpoints), that the export holds
    exactly the records each checkpoint covered. The offline rebuild trusts an export's
    content; this is how an auditor handed one knows it is the ledger's, unaltered.
    A windowed export (`export --from/--to`) lacks the other orders' positions, which a
    digest file's checkpoints name as deleted: check it by its chains alone."""
    transcoder = ledger_mapper().transcoder
    fmt = format_of(path)
    rows = (
        _parquet_rows(path, 5000, columns=(*_BASE_COLUMNS, "event_type", "recorded_at"))
        if fmt == "parquet"
        else _jsonl_rows(path, 5000, whole=True)
    )

    def records() -> Iterator[StoredRecord]:
        last = 0
        for where, batch in rows:
            for position, order_id, version, topic, state, *told in batch:
                if position <= last:
                    raise ExportError(
                        f"{where}: position {position} is not after {last} (log order broken)"
                    )
                last = position
                data = state.encode("utf-8")
                try:
                    decoded = transcoder.decode(data)
                except Exception:  # undecodable bytes are a finding of the chain check
                    decoded = None
                state_dict = decoded if isinstance(decoded, dict) else None
                _check_told(where, position, topic, state_dict, *told)
                try:
                    originator_id = UUID(order_id)
                except ValueError:
                    raise ExportError(
                        f"{where}: position {position}: order_id {order_id!r} is not a UUID"
                    ) from None
                yield StoredRecord(
                    position=position,
                    originator_id=originator_id,
                    originator_version=version,
                    topic=topic,
                    state_bytes=data,
                    state=state_dict,
                )

    return check_records(records(), reference=reference)


def _check_told(
    where: str,
    position: int,
    topic: str,
    state: dict[str, Any] | None,
    event_type: Any = None,
    recorded_at: Any = None,
) -> None:
    """An export's `event_type` and `recorded_at` columns, which its hash does not cover,
    held to the hashed state they repeat (analysts query them directly), and every row an
    order event (an export holds nothing else)."""
    try:
        kind = order_kind(topic, position)
    except ValueError as error:
        raise ExportError(f"{where}: {error}") from None
    if kind is None:
        raise ExportError(f"{where}: position {position}: topic {topic!r} is not an order's")
    if event_type != kind:
        raise ExportError(
            f"{where}: position {position}: event_type {event_type!r} is not the event's"
            f" own ({kind!r})"
        )
    if state is None:
        return  # an undecodable state is the chain check's finding
    if isinstance(recorded_at, str):
        try:
            recorded_at = datetime.fromisoformat(recorded_at)
        except ValueError:
            recorded_at = None
    if not isinstance(recorded_at, datetime) or recorded_at != state.get("timestamp"):
        raise ExportError(
            f"{where}: position {position}: recorded_at {recorded_at!s} is not the event's"
            f" own ({state.get('timestamp')!s})"
        )


def _jsonl_rows(
    path: str | Path, chunk: int, *, whole: bool = False
) -> Iterator[tuple[str, list[StoredRow]]]:
    """Rows of a JSON lines export; `whole`: every record holds exactly `COLUMNS`, and
    rows carry event_type and recorded_at too."""
    batch: list[StoredRow] = []
    where = str(path)
    for where, record in _read_jsonl(path):
        position, stored = _stored(record, where)
        if whole and set(record) != _COLUMN_SET:
            odd = sorted(set(record) ^ _COLUMN_SET)
            raise ExportError(f"{where}: fields {', '.join(odd)} are not an export's")
        row: StoredRow = (
            position,
            str(stored.originator_id),
            stored.originator_version,
            stored.topic,
            record["state"],
        )
        if whole:
            row = (*row, record["event_type"], record["recorded_at"])
        batch.append(row)
        if len(batch) >= chunk:
            yield where, batch
            batch = []
    if batch:
        yield where, batch


_BASE_COLUMNS: Final = ("position", "order_id", "version", "topic", "state")
_COLUMN_SET: Final = frozenset(COLUMNS)


def _parquet_rows(
    path: str | Path, chunk: int, *, columns: Sequence[str] = _BASE_COLUMNS
) -> Iterator[tuple[str, list[StoredRow]]]:
    """Rows of a Parquet export: `columns`, each of the type `export` writes."""
    import pyarrow as pa

    try:
        parquet = _open_parquet(path)
        schema = parquet.schema_arrow
    except (OSError, pa.ArrowException) as error:
        raise ExportError(f"{path}: cannot read Parquet export: {error}") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ExportError(f"{path}: missing column(s) {', '.join(missing)}")
    expected = _parquet_schema()
    for name in columns:  # a column of another type reads as other values (5.9, b"...")
        if not schema.field(name).type.equals(expected.field(name).type):
            raise ExportError(
                f"{path}: column {name} is {schema.field(name).type},"
                f" not {expected.field(name).type}"
            )
    index = 0
    try:
        for batch in parquet.iter_batches(
            batch_size=chunk,
            columns=list(columns),
            use_threads=False,  # decoding is a few % of the rebuild; each thread keeps buffers
        ):
            read = [batch.column(i).to_pylist() for i in range(len(columns))]
            rows = batch.num_rows
            del batch
            _release_arrow_memory()
            if any(None in column for column in read):
                raise ExportError(f"{path} records {index + 1}-{index + rows}: empty field")
            index += rows
            yield f"{path} record {index}", list(zip(*read, strict=True))
    except (pa.ArrowException, UnicodeDecodeError, OSError) as error:  # damaged pages
        raise ExportError(
            f"{path}: cannot read Parquet export after record {index}: {first_line(error)}"
        ) from None


@dataclass
class ExportLog:
    """An export file as an event source for the runner (read front to back, once)."""

    path: str | Path
    _chunks: Iterator[list[tuple[int, Order.Event]]] | None = None
    _buffer: list[tuple[int, Order.Event]] = field(default_factory=list)
    _record_chunks: Iterator[list[Record]] | None = None
    _records: list[Record] = field(default_factory=list)
    #: The log positions of the last batch handed to the folds (for error messages).
    batch: tuple[int, int] | None = None

    def read(self, after: int, limit: int) -> list[tuple[int, Order.Event]]:
        if self._chunks is None:
            self._chunks = read_export(self.path)
        self._buffer = [item for item in self._buffer if item[0] > after]
        while len(self._buffer) < limit:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer.extend(item for item in chunk if item[0] > after)
        taken, self._buffer = self._buffer[:limit], self._buffer[limit:]
        return taken

    def read_records(self, after: int, limit: int) -> list[Record]:
        if self._record_chunks is None:
            self._record_chunks = read_export_records(self.path, chunk=max(limit, 1000))
        if self._records and self._records[0].position <= after:
            self._records = [r for r in self._records if r.position > after]
        while len(self._records) < limit:
            chunk = next(self._record_chunks, None)
            if chunk is None:
                break
            self._records.extend(r for r in chunk if r.position > after)
        taken, self._records = self._records[:limit], self._records[limit:]
        if taken:
            self.batch = (taken[0].position, taken[-1].position)
        return taken


def offline_rebuild(
    export: str | Path,
    into: str | Path,
    projections: Sequence[Projection],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int, int], None] | None = None,
    stats: dict[str, int] | None = None,
) -> int:
    """Rebuild `projections` from an export into a DuckDB (`.duckdb`) or SQLite file.
    Returns the records folded.

    A SQLite file is rebuilt by two processes: this one reads and folds, a writer process
    (`projections/sqlite_writer.py`) commits the batches, so the SQLite work runs on
    another core. `stats`, if given, gets the writer's peak RSS (`writer_peak_kb`).

    All or nothing: the rebuild is made in a file beside `into` (a copy of it, if it
    exists) and moved over it only when every record has folded; a damaged export raises
    `ExportError` and leaves `into` as it was."""
    target = Path(into)
    if not target.parent.is_dir():
        raise ExportError(f"{target}: directory {target.parent} does not exist")
    if target.exists() and not target.is_file():
        raise ExportError(f"{target}: is not a file")
    _refuse_live_files(target)
    partial = target.with_name(f"{target.stem}.partial-{os.getpid()}{target.suffix}")
    _remove(partial)
    if target.exists():
        shutil.copyfile(target, partial)
    folded = [0]

    def progress(done: int, total: int) -> None:
        folded[0] = done
        if on_batch is not None:
            on_batch(done, total)

    duckdb = target.suffix.lower() == ".duckdb"
    try:
        store = store_for_file(partial) if duckdb else WriterProcessStore(partial)
    except Exception as error:  # an existing target that is not a database of its kind
        _remove(partial)
        raise ExportError(
            f"{target}: cannot rebuild into it ({type(error).__name__}: {error});"
            " it was left as it was"
        ) from None

    def abandon() -> None:
        if isinstance(store, WriterProcessStore):
            store.kill()
        else:
            store.close()
        _remove(partial)

    log = ExportLog(export)
    try:
        count = rebuild(log, store, projections, batch_size=batch_size, on_batch=progress)
        store.close()
    except ExportError:
        abandon()
        raise
    except Exception as error:  # damaged data fails in the folds or in the store's writes
        abandon()
        notes = getattr(error, "__notes__", None)
        read = log.batch
        where = (
            f", {notes[-1]}"
            if notes
            else f" (the batch read last: log positions {read[0]}..{read[1]})"
            if read
            else ""
        )
        raise ExportError(
            f"export {export}: folding or writing a record after the first {folded[0]}"
            f" failed{where} ({type(error).__name__}: {error}); {target} was left as it was"
        ) from None
    except BaseException:  # an interrupt: leave no partial file behind
        abandon()
        raise
    if isinstance(store, WriterProcessStore) and stats is not None:
        stats["writer_peak_kb"] = store.writer_peak_kb
    if not duckdb:  # built with no syncs: durable before it is moved
        sync_file(partial)
    os.replace(partial, target)
    sync_directory(target.parent)
    return count


#: What an offline rebuild writes: a DuckDB file, or a SQLite one.
REBUILD_SUFFIXES: Final = (".duckdb", ".sqlite", ".sqlite3", ".sqlitedb", ".db")


def _refuse_live_files(target: Path) -> None:
    """An offline rebuild replaces its target with a file it made from a copy of it.
    Pointed at a ledger's own files it would put that copy over the live one: the events
    committed after the copy lost (and the ledger's write-ahead log then applied to a file
    that is not its own), or the ledger's live projections replaced by those of an export,
    shown by every read command as current. Those are refused, and so is a name that says
    another format (`out.csv` got a SQLite file)."""
    suffix = target.suffix.lower()
    if suffix and suffix not in REBUILD_SUFFIXES:  # (no suffix: SQLite, as it always was)
        raise ExportError(
            f"{target}: name a .duckdb file (DuckDB) or a .sqlite, .sqlite3 or .db file (SQLite)"
        )
    stem = target.stem
    if stem.endswith(".projections"):
        ledger_file = target.with_name(stem.removesuffix(".projections") + target.suffix)
        if ledger_file.exists():
            raise ExportError(
                f"{target}: is the live projections file of the ledger {ledger_file};"
                " rebuild those with `kite-ledger rebuild`, or name a file of its own"
            )
    if suffix != ".duckdb" and target.exists() and target.stat().st_size:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{target}?mode=ro", uri=True)) as conn:
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError:
            return  # not SQLite: the store says so, naming the file
        if "stored_events" in tables:
            raise ExportError(
                f"{target}: is a ledger (it holds an event log); name a file of its own"
            )


def _remove(path: Path) -> None:
    for leftover in (path, path.with_name(path.name + ".wal"), path.with_name(path.name + "-wal")):
        leftover.unlink(missing_ok=True)
    path.with_name(path.name + "-shm").unlink(missing_ok=True)
