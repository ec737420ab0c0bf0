"""Tamper evidence: a hash chain in every order, and digest checkpoints over the whole log.

Every order event (class version 2 on) carries `previous_hash`, the hash of the order's
event before it (none for the first), and `hash`, SHA-256 over its canonical content: its
topic, class version, order id, version, record time and every field, `previous_hash`
included. Changing, removing, inserting or reordering one event of an order breaks the chain
at that event, so `verify` can name it.

A chain cannot see the removal of an order's *last* events, nor a rewrite that recomputes
every hash after the change (SHA-256 is not keyed). Digest checkpoints close both gaps:
each checkpoint folds every stored record (its notification id, order id, version, topic
and stored bytes) since the previous checkpoint into a digest chained to the previous one,
and notes which notification ids it covered. Exported and kept elsewhere
(`kite-ledger checkpoint --export FILE`), they let `kite-ledger verify --digest FILE` prove a
copy of the database holds exactly what it held when the digests were taken.

Events written before version 2 (no chain) are counted as unchained, not as failures; the
checkpoints still cover their stored bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final
from uuid import UUID

import orjson

#: The topics of order events (`Order.TOPIC` and its events'): other applications' rows in
#: a shared table are not the order log's.
ORDER_TOPIC: Final = "ledger.domain.order:Order"
#: The fields that are the event's identity and are hashed under fixed names.
_IDENTITY: Final = frozenset({"originator_id", "originator_version", "hash", "class_version"})


def _canonical(value: Any) -> Any:
    """A JSON-ready form of a stored value that does not depend on the Python objects'
    identity or on dict order: the same event always gives the same bytes.

    Runs for every field of every event a command makes, so each type's conversion is
    looked up once and kept (`_CONVERTERS`), not found by a chain of isinstance checks."""
    kind = type(value)
    if kind is str or kind is int or value is None or kind is bool:
        return value
    convert = _CONVERTERS.get(kind)
    if convert is None:
        convert = _CONVERTERS[kind] = _converter_for(kind)
    return convert(value)


def _as_is(value: Any) -> Any:
    # str and int subclasses (StrEnum, IntEnum members) encode as their plain value.
    return value


def _dataclass_converter(kind: type) -> Callable[[Any], Any]:
    names = tuple(f.name for f in fields(kind))

    def convert(value: Any) -> Any:
        return {name: _canonical(getattr(value, name)) for name in names}

    return convert


def _refuse_float(value: Any) -> Any:
    raise TypeError("floats are not hashed: money and quantities are Decimal or int")


def _converter_for(kind: type) -> Callable[[Any], Any]:
    """The conversion of one type, in the order the canonical form has always used."""
    if issubclass(kind, bool | int | str):
        return _as_is
    if issubclass(kind, Decimal):
        return lambda value: {"$d": str(value)}
    if issubclass(kind, datetime):
        return lambda value: {"$t": value.isoformat()}
    if issubclass(kind, date):
        return lambda value: {"$date": value.isoformat()}
    if issubclass(kind, UUID):
        return lambda value: {"$u": str(value)}
    if issubclass(kind, Enum):
        return lambda value: _canonical(value.value)
    if is_dataclass(kind):
        return _dataclass_converter(kind)
    if issubclass(kind, Mapping):
        return lambda value: {str(k): _canonical(v) for k, v in value.items()}
    if issubclass(kind, set | frozenset):
        return lambda value: sorted(_canonical(v) for v in value)
    if issubclass(kind, list | tuple):
        return lambda value: [_canonical(v) for v in value]
    if issubclass(kind, float):
        return _refuse_float
    name = kind.__name__

    def refuse(value: Any) -> Any:
        raise TypeError(f"cannot hash a {name}")

    return refuse


_CONVERTERS: dict[type, Callable[[Any], Any]] = {}


def canonical_bytes(document: Any) -> bytes:
    """`document` as compact JSON with sorted keys, UTF-8, nothing escaped that need not
    be: the bytes `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`
    gives, made by orjson (a tenth of the time). orjson refuses integers wider than 64
    bits and text that is not valid Unicode; those go through `json` (which encodes the
    first and refuses the second), so the result never depends on which one ran."""
    try:
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8")


def content_hash(
    *,
    topic: str,
    class_version: int,
    originator_id: UUID,
    originator_version: int,
    state: Mapping[str, Any],
) -> str:
    """SHA-256 (hex) over an event's canonical content; `state` is every attribute but the
    identity (a `hash` key in it is ignored)."""
    body = {k: _canonical(v) for k, v in state.items() if k not in _IDENTITY}
    document = {
        "topic": topic,
        "class_version": class_version,
        "order": str(originator_id),
        "version": originator_version,
        "state": body,
    }
    return hashlib.sha256(canonical_bytes(document)).hexdigest()


# --------------------------------------------------------------------------- chain checks


@dataclass(frozen=True)
class Finding:
    """One thing wrong with the stored log, named by where it is."""

    position: int | None  # notification id, when the record exists
    order_id: UUID | None
    version: int | None
    what: str

    def __str__(self) -> str:
        where = []
        if self.position is not None:
            where.append(f"log position {self.position}")
        if self.order_id is not None:
            where.append(f"order {self.order_id}")
        if self.version is not None:
            where.append(f"version {self.version}")
        return f"{', '.join(where) or 'the log'}: {self.what}"


@dataclass(frozen=True)
class StoredRecord:
    """A stored event as the database holds it, with its decoded (not upcast) state."""

    position: int
    originator_id: UUID
    originator_version: int
    topic: str
    state_bytes: bytes
    state: Mapping[str, Any] | None  # None when the bytes do not decode


@dataclass
class _Head:
    version: int
    hash: str | None  # None: the event before had no chain (written before v2)


@dataclass
class ChainReport:
    events: int = 0
    chained: int = 0
    unchained: int = 0
    orders: int = 0
    findings: list[Finding] = field(default_factory=list)


def check_chains(records: Iterable[StoredRecord]) -> ChainReport:
    """Walk the log in order and check every order's chain; findings in log order."""
    report = ChainReport()
    heads: dict[UUID, _Head] = {}
    for record in records:
        if not record.topic.startswith(ORDER_TOPIC):
            continue  # another application's row in a shared table: not an order's
        report.events += 1
        if record.position <= 0:
            report.findings.append(
                Finding(
                    record.position,
                    record.originator_id,
                    record.originator_version,
                    "at a log position the ledger never writes (zero or below): inserted",
                )
            )
        head = heads.get(record.originator_id)
        expected_version = 1 if head is None else head.version + 1
        in_sequence = record.originator_version == expected_version
        if not in_sequence:
            if head is not None and record.originator_version <= head.version:
                what = (
                    f"out of order: version {record.originator_version} comes after version"
                    f" {head.version} in the log (events were reordered or inserted)"
                )
            else:
                missing = (
                    f"version {expected_version}"
                    if record.originator_version == expected_version + 1
                    else f"versions {expected_version}..{record.originator_version - 1}"
                )
                what = (
                    f"{missing} missing: the versions jump from {expected_version - 1}"
                    f" to {record.originator_version} (an event was deleted)"
                )
            report.findings.append(
                Finding(record.position, record.originator_id, record.originator_version, what)
            )
        state = record.state
        if state is None:
            report.findings.append(
                Finding(
                    record.position,
                    record.originator_id,
                    record.originator_version,
                    "the stored bytes do not decode (altered)",
                )
            )
            heads[record.originator_id] = _Head(record.originator_version, None)
            continue
        try:
            class_version = int(state.get("class_version", 1))
        except (TypeError, ValueError):
            class_version = -1
        stored_hash = state.get("hash")
        if class_version < 2 and stored_hash is None:
            report.unchained += 1
            if head is not None and head.hash is not None:
                report.findings.append(
                    Finding(
                        record.position,
                        record.originator_id,
                        record.originator_version,
                        "carries no hash although the events before it do (altered)",
                    )
                )
            heads[record.originator_id] = _Head(record.originator_version, None)
            continue
        report.chained += 1
        recomputed: str | None = None  # no hash can match: altered all the same
        # (None for a class version that is not a number, or a value no event holds.)
        with contextlib.suppress(TypeError, ValueError):
            if class_version >= 0:
                recomputed = content_hash(
                    topic=record.topic,
                    class_version=class_version,
                    originator_id=record.originator_id,
                    originator_version=record.originator_version,
                    state=state,
                )
        previous = state.get("previous_hash")
        if recomputed != stored_hash:
            report.findings.append(
                Finding(
                    record.position,
                    record.originator_id,
                    record.originator_version,
                    "altered: its content no longer matches its hash",
                )
            )
        elif head is None and previous is not None:
            report.findings.append(
                Finding(
                    record.position,
                    record.originator_id,
                    record.originator_version,
                    "chains to an event the log does not hold (an earlier event was deleted)",
                )
            )
        elif head is not None and previous != head.hash and in_sequence:
            report.findings.append(
                Finding(
                    record.position,
                    record.originator_id,
                    record.originator_version,
                    f"does not follow version {head.version}: the previous event was altered,"
                    " removed or inserted",
                )
            )
        # After an altered event, follow the hash its successor chained to, so that one
        # change is reported once, where it is.
        chained_to = stored_hash if recomputed != stored_hash else recomputed
        heads[record.originator_id] = _Head(record.originator_version, chained_to)
    report.orders = len(heads)
    return report


# --------------------------------------------------------------------------- checkpoints


GENESIS: Final = "0" * 64


def record_digest(
    position: int, originator_id: UUID, version: int, topic: str, data: bytes
) -> bytes:
    """The digest of one stored record, as a checkpoint folds it."""
    head = f"{position}|{originator_id}|{version}|{topic}|".encode()
    return hashlib.sha256(head + data).digest()


@dataclass(frozen=True)
class Checkpoint:
    """A digest over the stored records after the previous checkpoint, up to `last_position`.

    `positions` lists the covered notification ids as runs [first, last], so a record that
    disappears or appears later can be named by its position."""

    seq: int
    first_position: int
    last_position: int
    event_count: int
    positions: tuple[tuple[int, int], ...]
    previous_digest: str
    digest: str
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "event_count": self.event_count,
            "positions": [list(run) for run in self.positions],
            "previous_digest": self.previous_digest,
            "digest": self.digest,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        return cls(
            seq=_whole(data["seq"], "seq"),
            first_position=_whole(data["first_position"], "first_position"),
            last_position=_whole(data["last_position"], "last_position"),
            event_count=_whole(data["event_count"], "event_count"),
            positions=tuple(
                (_whole(a, "positions"), _whole(b, "positions")) for a, b in data["positions"]
            ),
            previous_digest=_hex_digest(data["previous_digest"], "previous_digest"),
            digest=_hex_digest(data["digest"], "digest"),
            created_at=str(data["created_at"]),
        )


def _whole(value: Any, name: str) -> int:
    """A whole number as JSON holds one: not 5.9, "5", true or 1e999 (which `int` took,
    rounded, or failed on with an OverflowError)."""
    if type(value) is not int:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return value


def _hex_digest(value: Any, name: str) -> str:
    """A SHA-256 digest as 64 hex digits (what every fold starts from or ends with)."""
    text = str(value)
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"{name} must be 64 lowercase hex digits, got {text[:70]!r}")
    return text


@dataclass
class DigestFold:
    """Folds records into a checkpoint digest, noting which positions it saw."""

    previous_digest: str
    count: int = 0
    runs: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._hash = hashlib.sha256(bytes.fromhex(self.previous_digest))

    def add(
        self, position: int, originator_id: UUID, version: int, topic: str, data: bytes
    ) -> None:
        self._hash.update(record_digest(position, originator_id, version, topic, data))
        self.count += 1
        if self.runs and self.runs[-1][1] == position - 1:
            self.runs[-1][1] = position
        else:
            self.runs.append([position, position])

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    @property
    def positions(self) -> tuple[tuple[int, int], ...]:
        return tuple((a, b) for a, b in self.runs)


def positions_in(runs: Sequence[tuple[int, int]]) -> Iterator[int]:
    for first, last in runs:
        yield from range(first, last + 1)


def describe_difference(
    expected: Checkpoint, found_runs: Sequence[tuple[int, int]], found_count: int
) -> tuple[int | None, str]:
    """Name what differs between a checkpoint and the records found in its range now: the
    first log position that was deleted or inserted (None if only content changed), and
    what happened."""
    if tuple(found_runs) != expected.positions:
        had, has = set(positions_in(expected.positions)), set(positions_in(found_runs))
        gone, new = sorted(had - has), sorted(has - had)
        parts = []
        if gone:
            parts.append(f"log position {gone[0]} was deleted" + _more(gone))
        if new:
            parts.append(f"log position {new[0]} was inserted" + _more(new))
        return min(gone[:1] + new[:1]), "; ".join(parts)
    return None, (
        f"the {found_count} stored records at log positions {expected.first_position}.."
        f"{expected.last_position} differ from what was recorded (altered)"
    )


def _more(items: Sequence[int]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""
