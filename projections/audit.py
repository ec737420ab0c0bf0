"""The audit trail: every event in log order, with time, order, type, actor, source and
details; filters by order, instrument, account, time range and event type; CSV and JSON
lines export.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final
from uuid import UUID

import orjson

from ledger.domain.order import Order
from ledger.domain.values import InstrumentRef
from projections.base import Projection, Record, Table, View, Working

_COMMON = {"originator_id", "originator_version", "timestamp", "originator_topic"}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    log_position: int
    recorded_at: datetime
    order_id: str
    order_version: int
    account: str
    client_order_id: str
    exchange: str
    tradingsymbol: str
    event_type: str
    actor: str
    source: str
    details: str  # JSON object of the event's own fields


@dataclass(frozen=True, slots=True)
class AuditOrder:
    """What the trail needs to know about an order to label its later events."""

    order_id: str
    account: str
    client_order_id: str
    exchange: str
    tradingsymbol: str


#: State keys that are not the event's own details: identity, record time, the hash chain.
_NOT_DETAILS: Final = frozenset(
    {*_COMMON, "class_version", "hash", "previous_hash", "originator_id", "originator_version"}
)


def _plain_stored(value: Any) -> Any:
    """A value as the log stores it (the transcoder's wrapped form), made plain: enums and
    amounts as their text, an instrument as EXCHANGE:SYMBOL."""
    data = value["_data_"]
    kind = value["_type_"]
    if kind == "instrument_ref":
        return f"{data['exchange']['_data_']}:{data['tradingsymbol']}"
    if kind == "order_changes":
        return {
            k: (_plain_stored(v) if type(v) is dict else v)
            for k, v in data.items()
            if v is not None
        }
    if kind == "uuid_hex":
        return str(UUID(data))
    return data  # decimals, times, dates and enums are stored as plain text already


def details_json(state: dict[str, Any], kind: str = "") -> str:
    """The audit trail's details column for a stored state: its own fields, plain, in
    key order (the order is worked out once per kind of event and shape of state)."""
    signature = (kind, state.get("class_version"), len(state))
    shape = _DETAIL_KEYS.get(signature)
    if shape is None:
        shape = _DETAIL_KEYS[signature] = (
            frozenset(state),
            [k for k in sorted(state) if k not in _NOT_DETAILS],
        )
    names, keys = shape
    if state.keys() != names:  # a state of another shape (foreign or damaged): on its own
        keys = [k for k in sorted(state) if k not in _NOT_DETAILS]
    details = {}
    for k in keys:
        value = state[k]
        details[k] = _plain_stored(value) if type(value) is dict else value
    return encode_details(details)


def encode_details(details: dict[str, Any]) -> str:
    """`json.dumps(details, separators=(",", ":"))`, the same text, by orjson where that
    is certain to give it: flat values of plain types (no floats, which the two format
    differently, nothing nested) and printable ASCII out (`json` escapes the rest as
    \\uXXXX, orjson writes UTF-8); anything else, and integers beyond 64 bits (which orjson
    refuses), by `json` as before."""
    if _FLAT.issuperset(map(type, details.values())):
        try:
            out = orjson.dumps(details)
        except TypeError:
            pass
        else:
            if out.isascii() and b"\x7f" not in out:
                return out.decode("ascii")
    return _dumps(details)


_FLAT: Final = frozenset({str, int, bool, type(None)})
_DETAIL_KEYS: dict[tuple[str, Any, int], tuple[frozenset[str], list[str]]] = {}
_dumps: Final = json.JSONEncoder(separators=(",", ":")).encode


class AuditTrailProjection(Projection):
    name: ClassVar[str] = "audit"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table, ...]] = (
        Table("audit_trail", AuditEntry, ("log_position",), "append"),
        Table("audit_orders", AuditOrder, ("order_id",), "per_order"),
    )
    handles: ClassVar[tuple[type[Order.Event], ...]] = (Order.Event,)

    def apply_record(self, working: Working, record: Record) -> None:
        order_id = record.order_id
        key = (order_id,)
        state = record.state
        if record.kind == "Submitted":
            instrument = state["instrument"]["_data_"]
            order = working.cells["audit_orders"][key] = working.changed["audit_orders"][key] = (
                _ORDERS.cell(
                    order_id,
                    state["account"],
                    state["client_order_id"],
                    instrument["exchange"]["_data_"],
                    instrument["tradingsymbol"],
                )
            )
        else:
            order = working.cells["audit_orders"].get(key) or working.lookup("audit_orders", key)
            if order is None:  # pragma: no cover - the log always starts an order with Submitted
                raise LookupError(f"event for unknown order {order_id} at {record.position}")
        source = state.get("source")
        actor = state.get("actor")
        position = record.position
        working.changed["audit_trail"][(position,)] = _TRAIL.cell(
            position,
            state["timestamp"]["_data_"],
            order_id,
            record.version,
            order.account,
            order.client_order_id,
            order.exchange,
            order.tradingsymbol,
            record.kind,
            actor if actor is not None else "broker",
            source["_data_"] if source is not None else "ledger",
            details_json(state, record.kind),
        )


_TRAIL: Final = AuditTrailProjection.tables[0]
_ORDERS: Final = AuditTrailProjection.tables[1]


def query(
    entries: Iterable[AuditEntry],
    *,
    order_id: UUID | str | None = None,
    instrument: InstrumentRef | None = None,
    account: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    event_types: Iterable[str] | None = None,
) -> list[AuditEntry]:
    """Entries matching every filter, in log order. `since` inclusive, `until` exclusive."""
    types = set(event_types) if event_types is not None else None
    wanted_order = str(order_id) if order_id is not None else None
    matched = [
        e
        for e in entries
        if (wanted_order is None or e.order_id == wanted_order)
        and (
            instrument is None
            or (e.exchange, e.tradingsymbol)
            == (instrument.exchange.value, instrument.tradingsymbol)
        )
        and (account is None or e.account == account)
        and (since is None or e.recorded_at >= since)
        and (until is None or e.recorded_at < until)
        and (types is None or e.event_type in types)
    ]
    return sorted(matched, key=lambda e: e.log_position)


def trail(view: View, **filters: Any) -> list[AuditEntry]:
    return query(view.rows("audit_trail"), **filters)


CSV_COLUMNS = list(AuditEntry.__dataclass_fields__)


def _row(entry: AuditEntry) -> dict[str, Any]:
    row = {name: getattr(entry, name) for name in CSV_COLUMNS}
    row["recorded_at"] = entry.recorded_at.isoformat()
    return row


def to_csv(entries: Iterable[AuditEntry]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for entry in entries:
        writer.writerow(_row(entry))
    return out.getvalue()


def to_jsonl(entries: Iterable[AuditEntry]) -> Iterator[str]:
    for entry in entries:
        row = _row(entry)
        row["details"] = json.loads(entry.details)
        yield json.dumps(row, sort_keys=True)
