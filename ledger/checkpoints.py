"""Digest checkpoints in the ledger's database, and the integrity check over the stored log.

    cp = write_checkpoint(ledger)                 # fold everything since the last one
    export_checkpoints(ledger, "digests.json")    # keep this file somewhere else
    report = check_integrity(ledger, reference=load_digests("digests.json"))
    report.findings[0]                            # the first bad event, by log position

The checkpoint table (`ledger_checkpoints`) lives beside the log: in the SQLite file, or in
the ledger's PostgreSQL schema. What each checkpoint means is in ledger/integrity.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast
from uuid import UUID

from ledger.application import OrderLedger
from ledger.domain.errors import LedgerError
from ledger.integrity import (
    GENESIS,
    ChainReport,
    Checkpoint,
    DigestFold,
    Finding,
    StoredRecord,
    check_chains,
    describe_difference,
)

TABLE: Final = "ledger_checkpoints"
_PAGE: Final = 5000
_COLUMNS: Final = (
    "seq, first_position, last_position, event_count, positions, previous_digest, digest,"
    " created_at"
)


class DigestFileError(LedgerError, ValueError):
    """A digest file is unreadable or malformed; the message names the file and the part."""


# --------------------------------------------------------------------------- the table


class CheckpointStore:
    """The checkpoint table of one ledger database."""

    def __init__(self, ledger: OrderLedger) -> None:
        storage = ledger.storage
        if storage is None:
            raise LedgerError("checkpoints need a ledger opened with open_ledger()")
        self._backend = storage.backend
        if storage.backend == "sqlite":
            assert storage.sqlite_path is not None
            self._sqlite = sqlite3.connect(storage.sqlite_path, timeout=10, isolation_level=None)
            self._mark = "?"
            self._table = TABLE
        else:
            import psycopg
            from psycopg import sql

            assert storage.postgres_conninfo is not None
            assert storage.postgres_schema is not None
            self._pg = psycopg.connect(storage.postgres_conninfo, autocommit=True)
            self._mark = "%s"
            self._table = sql.Identifier(storage.postgres_schema, TABLE).as_string(self._pg)
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {self._table} (seq INTEGER PRIMARY KEY,"
            " first_position BIGINT NOT NULL, last_position BIGINT NOT NULL,"
            " event_count BIGINT NOT NULL, positions TEXT NOT NULL,"
            " previous_digest TEXT NOT NULL, digest TEXT NOT NULL, created_at TEXT NOT NULL)"
        )

    def _execute(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._backend == "sqlite":
            cursor = self._sqlite.execute(statement, params)
            return cursor.fetchall()
        cur = cast(Any, self._pg).execute(statement, params)
        return list(cur.fetchall()) if cur.description else []

    def all(self) -> list[Checkpoint]:
        rows = self._execute(f"SELECT {_COLUMNS} FROM {self._table} ORDER BY seq")
        return [_from_row(row) for row in rows]

    def last(self) -> Checkpoint | None:
        rows = self._execute(f"SELECT {_COLUMNS} FROM {self._table} ORDER BY seq DESC LIMIT 1")
        return _from_row(rows[0]) if rows else None

    def insert(self, checkpoint: Checkpoint) -> bool:
        """Store `checkpoint`; False if another writer stored one with its number first."""
        m = self._mark
        try:
            self._execute(
                f"INSERT INTO {self._table} ({_COLUMNS}) VALUES ({m},{m},{m},{m},{m},{m},{m},{m})",
                (
                    checkpoint.seq,
                    checkpoint.first_position,
                    checkpoint.last_position,
                    checkpoint.event_count,
                    json.dumps([list(run) for run in checkpoint.positions]),
                    checkpoint.previous_digest,
                    checkpoint.digest,
                    checkpoint.created_at,
                ),
            )
        except sqlite3.IntegrityError:
            return False
        except Exception as error:
            if type(error).__name__ == "UniqueViolation":
                return False
            raise
        return True

    def close(self) -> None:
        if self._backend == "sqlite":
            self._sqlite.close()
        else:
            self._pg.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _from_row(row: Sequence[Any]) -> Checkpoint:
    return Checkpoint(
        seq=int(row[0]),
        first_position=int(row[1]),
        last_position=int(row[2]),
        event_count=int(row[3]),
        positions=tuple((int(a), int(b)) for a, b in json.loads(row[4])),
        previous_digest=str(row[5]),
        digest=str(row[6]),
        created_at=str(row[7]),
    )


# --------------------------------------------------------------------------- reading the log


#: Below every position the databases can hold (SQLite's rowid and PostgreSQL's bigint).
LOWEST_POSITION: Final = -(2**63)


def stored_records(ledger: OrderLedger, *, after: int | None = None) -> Iterator[StoredRecord]:
    """Every stored record after position `after` (all of them if None, rows at positions
    the ledger never writes, zero and below, included), as the database holds it, with its
    state decoded but not upcast (hashes are over what was written)."""
    transcoder = ledger.mapper.transcoder
    position, inclusive = (LOWEST_POSITION, True) if after is None else (after, False)
    while True:
        page = ledger.recorder.select_notifications(
            start=position, limit=_PAGE, inclusive_of_start=inclusive
        )
        inclusive = False
        if not page:
            return
        for n in page:
            # A row edited by hand can come back as text; hash what is there.
            data = n.state.encode() if isinstance(n.state, str) else bytes(n.state)
            try:
                state: dict[str, Any] | None = transcoder.decode(data)
                if not isinstance(state, dict):
                    state = None
            except Exception:
                state = None  # undecodable bytes are a finding, not a crash
            originator_id = n.originator_id
            yield StoredRecord(
                position=n.id,
                originator_id=originator_id
                if isinstance(originator_id, UUID)
                else UUID(str(originator_id)),
                originator_version=n.originator_version,
                topic=n.topic,
                state_bytes=data,
                state=state,
            )
        position = page[-1].id


# --------------------------------------------------------------------------- writing


def write_checkpoint(ledger: OrderLedger, *, now: datetime | None = None) -> Checkpoint | None:
    """Fold every record since the last checkpoint into a new one; None if there is none.

    Two writers racing for the same number: one stores it, the other returns None."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    with CheckpointStore(ledger) as store:
        last = store.last()
        fold = DigestFold(last.digest if last else GENESIS)
        for record in stored_records(ledger, after=last.last_position if last else 0):
            fold.add(
                record.position,
                record.originator_id,
                record.originator_version,
                record.topic,
                record.state_bytes,
            )
        if fold.count == 0:
            return None
        checkpoint = Checkpoint(
            seq=(last.seq + 1) if last else 1,
            first_position=fold.runs[0][0],
            last_position=fold.runs[-1][1],
            event_count=fold.count,
            positions=fold.positions,
            previous_digest=last.digest if last else GENESIS,
            digest=fold.digest,
            created_at=moment.isoformat(),
        )
        return checkpoint if store.insert(checkpoint) else None


def export_checkpoints(ledger: OrderLedger, path: str | Path) -> int:
    """Write every checkpoint to `path` (JSON) for safekeeping; returns how many."""
    with CheckpointStore(ledger) as store:
        checkpoints = store.all()
    document = {
        "kind": "kite-ledger digests",
        "version": 1,
        "ledger": ledger.storage.display if ledger.storage else "",
        "exported_at": datetime.now(UTC).isoformat(),
        "checkpoints": [cp.to_json() for cp in checkpoints],
    }
    Path(path).write_text(json.dumps(document, indent=1), encoding="utf-8")
    return len(checkpoints)


def load_digests(path: str | Path) -> list[Checkpoint]:
    """Read a digest file written by `export_checkpoints`; clear errors for anything else."""
    where = str(path)
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DigestFileError(f"digest file {where} does not exist") from None
    except OSError as error:  # a directory, no permission
        raise DigestFileError(f"digest file {where} cannot be read: {error}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DigestFileError(f"digest file {where} is not JSON: {error}") from None
    if not isinstance(document, dict) or document.get("kind") != "kite-ledger digests":
        raise DigestFileError(f"digest file {where} was not written by kite-ledger checkpoint")
    items = document.get("checkpoints")
    if not isinstance(items, list):
        raise DigestFileError(f"digest file {where}: 'checkpoints' must be a list")
    if not items:
        raise DigestFileError(f"digest file {where} holds no checkpoints: it proves nothing")
    checkpoints = []
    for index, item in enumerate(items):
        try:
            checkpoints.append(Checkpoint.from_json(item))
        except (KeyError, TypeError, ValueError) as error:
            raise DigestFileError(
                f"digest file {where}: checkpoint #{index + 1}: {error}"
            ) from None
    return checkpoints


# --------------------------------------------------------------------------- checking


class _RangeCheck:
    """Refolds the records of each reference checkpoint's range and compares."""

    def __init__(self, reference: Sequence[Checkpoint], label: str) -> None:
        self.reference = list(reference)
        self.label = label
        self.findings: list[Finding] = []
        self.after_last = 0
        self._index = 0
        self._fold = self._new_fold()
        for earlier, later in zip(self.reference, self.reference[1:], strict=False):
            if later.previous_digest != earlier.digest or later.seq != earlier.seq + 1:
                self.findings.append(
                    Finding(
                        None,
                        None,
                        None,
                        f"{label} checkpoint {later.seq} does not chain to checkpoint"
                        f" {earlier.seq} (the checkpoints were altered)",
                    )
                )

    def _new_fold(self) -> DigestFold | None:
        if self._index >= len(self.reference):
            return None
        return DigestFold(self.reference[self._index].previous_digest)

    def add(self, record: StoredRecord) -> None:
        while (
            self._index < len(self.reference)
            and record.position > self.reference[self._index].last_position
        ):
            self._close()
        if self._fold is None:
            self.after_last += 1
            return
        self._fold.add(
            record.position,
            record.originator_id,
            record.originator_version,
            record.topic,
            record.state_bytes,
        )

    def _close(self) -> None:
        expected = self.reference[self._index]
        fold = self._fold
        assert fold is not None
        if fold.digest != expected.digest:
            position, difference = describe_difference(expected, fold.positions, fold.count)
            self.findings.append(
                Finding(
                    position,
                    None,
                    None,
                    f"{difference} (differs from {self.label} checkpoint {expected.seq})",
                )
            )
        self._index += 1
        self._fold = self._new_fold()

    def finish(self) -> None:
        while self._index < len(self.reference):
            self._close()


@dataclass
class IntegrityReport:
    """What the integrity check found; `findings` in log order, the first bad event first."""

    chains: ChainReport
    checkpoints: int
    reference_checkpoints: int
    after_last_checkpoint: int  # events after the database's last checkpoint
    after_last_reference: int | None = None  # ... and after the digest file's last one
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def check_integrity(
    ledger: OrderLedger, *, reference: Sequence[Checkpoint] | None = None
) -> IntegrityReport:
    """Check every order's hash chain and every checkpoint in the database (and, if given,
    every checkpoint of a digest file taken earlier) in one pass over the log."""
    with CheckpointStore(ledger) as store:
        own = store.all()
    checks = [_RangeCheck(own, "the database's")]
    meta: list[Finding] = []
    if reference is not None:
        checks.append(_RangeCheck(reference, "the digest file's"))
        own_by_seq = {cp.seq: cp for cp in own}
        for cp in reference:
            mine = own_by_seq.get(cp.seq)
            if mine is None or mine.digest != cp.digest:
                meta.append(
                    Finding(
                        None,
                        None,
                        None,
                        f"the database's checkpoint {cp.seq} "
                        + ("is missing" if mine is None else "differs from the digest file's"),
                    )
                )

    def records() -> Iterator[StoredRecord]:
        for record in stored_records(ledger):
            for check in checks:
                check.add(record)
            yield record

    chains = check_chains(records())
    for check in checks:
        check.finish()
    findings = list(chains.findings)
    for check in checks:
        findings += check.findings
    findings += meta
    findings.sort(key=lambda f: (f.position is None, f.position or 0))
    return IntegrityReport(
        chains=chains,
        checkpoints=len(own),
        reference_checkpoints=len(reference) if reference is not None else 0,
        after_last_checkpoint=checks[0].after_last,
        after_last_reference=checks[1].after_last if reference is not None else None,
        findings=_dedupe(findings),
    )


def check_records(
    records: Iterable[StoredRecord], *, reference: Sequence[Checkpoint] | None = None
) -> IntegrityReport:
    """Check every order's hash chain in `records` (an export's, read with no database),
    and, if given, every checkpoint of a digest file over them: an export that holds the
    whole log (no window) must fold to each checkpoint's digest, as the database did.
    A position a checkpoint covers and the records lack is named as deleted."""
    checks = [_RangeCheck(reference, "the digest file's")] if reference is not None else []

    def checked() -> Iterator[StoredRecord]:
        for record in records:
            for check in checks:
                check.add(record)
            yield record

    chains = check_chains(checked())
    findings = list(chains.findings)
    for check in checks:
        check.finish()
        findings += check.findings
    findings.sort(key=lambda f: (f.position is None, f.position or 0))
    return IntegrityReport(
        chains=chains,
        checkpoints=0,
        reference_checkpoints=len(reference) if reference is not None else 0,
        after_last_checkpoint=0,
        after_last_reference=checks[0].after_last if checks else None,
        findings=_dedupe(findings),
    )


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen: set[str] = set()
    unique = []
    for finding in findings:
        text = str(finding)
        if text not in seen:
            seen.add(text)
            unique.append(finding)
    return unique
