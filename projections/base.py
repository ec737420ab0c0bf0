"""What every projection is made of.

A projection is a fold over the order log into tables of small rows. One definition of
each fold runs live (the runner, with a database store), at a past instant, and offline
over an export, so the results cannot differ.

The fold reads *records*, not event objects: an event as the log stores it (its JSON state
parsed, values still in the transcoder's wrapped form), with its position, order id,
version and kind. That is what the log and an export hold, so the hot paths (catch-up,
offline rebuild) never build event objects; `apply` and `fold` accept event objects too and
turn them into records first.

While it folds, a projection keeps its rows as mutable *cells* in a `Working` set and
marks the ones it changed; stores write the changed cells and readers get frozen rows
(`View`). Tables come in three kinds, which decide what the working set keeps:

* `bounded`: as many rows as instruments, strategies and days (positions, books, totals):
  kept in memory;
* `per_order`: one row per order (execution reports, tallies): kept while the order is
  being worked, evicted after it is written and loaded again if a later event (a late
  fill after a cancel) touches it;
* `append`: one row per event or fill (the audit trail, fills): written, never read back
  by the fold.

Decimal arithmetic in projections rounds derived prices (averages) to `PRICE_PLACES`
decimal places, half-even, so every store (SQLite text, PostgreSQL NUMERIC, DuckDB
DECIMAL(38,10)) holds exactly the same value. Sums of fill values are exact anyway; they
are brought to canonical form (`money`) when a row is written or read, not on every event.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from functools import cached_property
from operator import attrgetter
from typing import Any, ClassVar, Final, Literal, get_type_hints

from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    UUIDAsHex,
)

from ledger.domain.order import Order
from ledger.domain.status import EventKind, OrderStatus, next_status
from ledger.domain.values import IST
from ledger.persistence import loads_like_json, register_ledger_transcodings

PRICE_PLACES: Final = 10
_QUANTUM: Final = Decimal(1).scaleb(-PRICE_PLACES)
_DIVISION: Final = Context(prec=50, rounding=ROUND_HALF_EVEN)
_ONE: Final = Decimal(1)
ZERO: Final = Decimal(0)

Key = tuple[Any, ...]
TableKind = Literal["bounded", "per_order", "append"]


def divide(numerator: Decimal, denominator: Decimal | int) -> Decimal:
    """numerator / denominator rounded to PRICE_PLACES (half-even), normalised."""
    value = _DIVISION.divide(numerator, Decimal(denominator)).quantize(
        _QUANTUM, rounding=ROUND_HALF_EVEN, context=_DIVISION
    )
    return _normal(value)


def _normal(value: Decimal) -> Decimal:
    """Canonical form: no trailing zeros, no exponent (so stores round-trip it as text)."""
    if not value:
        return ZERO
    normalized = value.normalize()
    # Plain positional text means a finite value with exponent <= 0: the canonical form
    # already (str is a sixth of the cost of as_tuple, which builds the digit tuple).
    if normalized.is_finite() and "E" not in str(normalized):
        return normalized
    exponent = normalized.as_tuple().exponent
    assert isinstance(exponent, int)
    return normalized if exponent <= 0 else normalized.quantize(_ONE)


def money(value: Decimal) -> Decimal:
    """Canonical form of an exact amount."""
    return _normal(value)


_DAYS: dict[str, date] = {}


def trading_day_of(exchange_timestamp: Any, timestamp: Any) -> date:
    """The Indian trading day of a fill, from wrapped ISO times as records hold them: its
    exchange time if known, else its record time. The day depends only on
    the minute and the UTC offset, so it is remembered by those (a few entries a day)."""
    text: str = (exchange_timestamp or timestamp)["_data_"]
    if len(text) > 22 and text[-6] in "+-" and text[-3] == ":":
        key = text[:16] + text[-6:]
        day = _DAYS.get(key)
        if day is None:
            if len(_DAYS) > 10_000:
                _DAYS.clear()
            day = _DAYS[key] = datetime.fromisoformat(text).astimezone(IST).date()
        return day
    return datetime.fromisoformat(text).astimezone(IST).date()


_TRANSITIONS: dict[tuple[str, str, bool], str] = {}


def next_lifecycle(lifecycle: str, kind: str, filled_quantity: int, quantity: int) -> str:
    """`next_status` (the domain's transition table) by values, remembered: the target
    depends on the status, the event kind and whether the order is completely filled."""
    key = (lifecycle, kind, filled_quantity >= quantity)
    after = _TRANSITIONS.get(key)
    if after is None:
        after = _TRANSITIONS[key] = next_status(
            OrderStatus(lifecycle),
            EventKind(kind),
            filled_quantity=filled_quantity,
            quantity=quantity,
        ).value
    return after


TERMINAL: Final = frozenset(s.value for s in OrderStatus if s.is_terminal)


# --------------------------------------------------------------------------- records


class Record:
    """One event as the log stores it: what every fold reads."""

    __slots__ = ("fill", "kind", "order_id", "position", "state", "version")

    def __init__(
        self, position: int, order_id: str, version: int, kind: str, state: dict[str, Any]
    ) -> None:
        self.position = position
        self.order_id = order_id
        self.version = version
        self.kind = kind  # the event class's name: "Submitted", "Filled", ...
        self.state = state  # the stored JSON state, parsed; values still wrapped
        self.fill: FillFields | None = None  # a fill's fields, decoded once for all folds

    def __repr__(self) -> str:
        return f"Record({self.position}, {self.order_id}, {self.version}, {self.kind})"


class FillFields:
    """What positions, P&L, reports and statistics read of a `Filled` record."""

    __slots__ = (
        "account",
        "charges",
        "exchange",
        "multiplier",
        "price",
        "product",
        "quantity",
        "side",
        "sign",
        "strategy",
        "tradingsymbol",
        "value",
    )

    def __init__(self, state: dict[str, Any]) -> None:
        instrument = state["instrument"]["_data_"]
        self.account: str = state["account"]
        self.exchange: str = instrument["exchange"]["_data_"]
        self.tradingsymbol: str = instrument["tradingsymbol"]
        self.product: str = state["product"]["_data_"]
        self.side: str = state["side"]["_data_"]
        self.sign = 1 if self.side == "BUY" else -1
        self.strategy: str = state["strategy"] or ""
        self.quantity: int = state["quantity"]
        self.price = Decimal(state["price"]["_data_"])
        self.value = self.price * self.quantity
        charges = state["charges"]
        self.charges = Decimal(charges["_data_"]) if charges is not None else None
        # Absent from fills recorded before v3 of `Filled`, whose upcaster makes it 1.
        self.multiplier: int = state.get("multiplier", 1)


def fill_of(record: Record) -> FillFields:
    """The record's fill fields (decoded on first use)."""
    fields = record.fill
    if fields is None:
        fields = record.fill = FillFields(record.state)
    return fields


def _event_classes() -> dict[str, type[Order.Event]]:
    classes: dict[str, type[Order.Event]] = {}
    for value in vars(Order).values():
        if isinstance(value, type) and issubclass(value, Order.Event) and value is not Order.Event:
            classes[value.__name__] = value
    return classes


#: Order event classes by kind (class name), and kinds by stored topic.
EVENT_CLASSES: Final = _event_classes()
KIND_OF_TOPIC: Final = {cls.TOPIC: kind for kind, cls in EVENT_CLASSES.items()}
ORDER_TOPIC_PREFIX: Final = Order.TOPIC + "."


def ledger_mapper() -> Mapper[Any]:
    """A mapper with the ledger's transcodings and no database."""
    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DecimalAsStr())
    transcoder.register(DatetimeAsISO())
    register_ledger_transcodings(transcoder)
    return Mapper(transcoder=transcoder)


_MAPPER: Final = ledger_mapper()


def parse_state(state: bytes | str) -> dict[str, Any]:
    """A stored state, parsed: exactly what `json.loads` gives, at a third of its cost
    (orjson, where `loads_like_json` says it agrees with `json`; `json` elsewhere, which
    raises the usual error for a corrupt state)."""
    parsed = loads_like_json(state)
    if type(parsed) is not dict:
        text = state if isinstance(state, str) else str(state, "utf-8")
        parsed = json.loads(text)  # raises the usual error for a corrupt state
        if type(parsed) is not dict:
            raise ValueError(f"a stored state must be a JSON object, not {text[:40]!r}")
    result: dict[str, Any] = parsed
    return result


def record_of(position: int, event: Order.Event) -> Record:
    """The record the log holds for `event` (the slow path: events made in memory)."""
    stored = _MAPPER.to_stored_event(event)
    return Record(
        position,
        str(event.originator_id),
        event.originator_version,
        type(event).__name__,
        parse_state(stored.state),
    )


def kinds_of(handles: Iterable[type[Order.Event]]) -> frozenset[str]:
    """The kinds of record a projection handling `handles` folds."""
    handled = tuple(handles)
    return frozenset(k for k, cls in EVENT_CLASSES.items() if issubclass(cls, handled))


# --------------------------------------------------------------------------- tables


def _decimal_out(value: Any) -> Any:
    return None if value is None else _normal(value)


def _datetime_out(value: Any) -> Any:
    return datetime.fromisoformat(value) if type(value) is str else value


def _date_out(value: Any) -> Any:
    return date.fromisoformat(value) if type(value) is str else value


@dataclass(frozen=True)
class Table:
    """One table of a projection: rows of `row_type`, keyed by `key_fields`."""

    name: str
    row_type: type[Any]
    key_fields: tuple[str, ...]
    kind: TableKind = "bounded"

    def key_of(self, row: Any) -> Key:
        return tuple(getattr(row, f) for f in self.key_fields)

    @cached_property
    def columns(self) -> dict[str, Any]:
        """Column name -> Python type, in declaration order."""
        hints = get_type_hints(self.row_type)
        return {f.name: hints[f.name] for f in dataclasses.fields(self.row_type)}

    @cached_property
    def kinds(self) -> list[type[Any]]:
        """The base type of each column (Decimal for `Decimal | None`, ...)."""
        from projections.store import base_type

        return [base_type(a)[0] for a in self.columns.values()]

    @cached_property
    def cell_type(self) -> type[Any]:
        """A mutable row with the same fields: what the fold changes in place."""
        names = tuple(self.columns)
        # A generated __init__ (plain attribute stores): cells are made for every event.
        namespace: dict[str, Any] = {}
        # The names are the row dataclass's own field names, never input.
        exec(
            f"def __init__(self, {', '.join(names)}):\n"
            + "".join(f"    self.{n} = {n}\n" for n in names),
            namespace,
        )

        def __repr__(self: Any) -> str:  # noqa: N807
            return f"{type(self).__name__}{tuple(getattr(self, n) for n in names)}"

        return type(
            f"{self.row_type.__name__}Cell",
            (),
            {"__slots__": names, "__init__": namespace["__init__"], "__repr__": __repr__},
        )

    @cached_property
    def values_of(self) -> Callable[[Any], tuple[Any, ...]]:
        """A row's or cell's values, as a tuple in column order."""
        names = tuple(self.columns)
        getter = attrgetter(*names) if len(names) > 1 else _single(names[0])
        if self.kind == "append":

            def values(cell: Any) -> tuple[Any, ...]:
                return cell if type(cell) is tuple else getter(cell)

            return values
        return getter

    def cell(self, *values: Any) -> Any:
        """A cell; for an `append` table, whose rows never change once made, a plain
        tuple of the values in column order."""
        return values if self.kind == "append" else self.cell_type(*values)

    @cached_property
    def _row_converters(self) -> list[Callable[[Any], Any] | None]:
        out: list[Callable[[Any], Any] | None] = []
        for kind in self.kinds:
            if kind is Decimal:
                out.append(_decimal_out)
            elif kind is datetime:
                out.append(_datetime_out)
            elif kind is date:
                out.append(_date_out)
            else:
                out.append(None)
        return out

    def row_of(self, cell: Any) -> Any:
        """The frozen row a cell stands for (canonical decimals, datetime objects)."""
        values = self.values_of(cell)
        return self.row_type(
            *(
                value if convert is None else convert(value)
                for value, convert in zip(values, self._row_converters, strict=True)
            )
        )

    def cell_of(self, row: Any) -> Any:
        return self.cell(*(getattr(row, name) for name in self.columns))


def _single(name: str) -> Callable[[Any], tuple[Any, ...]]:
    def values(cell: Any) -> tuple[Any, ...]:
        return (getattr(cell, name),)

    return values


# --------------------------------------------------------------------------- working set

Loader = Callable[[Table, list[Key]], dict[Key, Any]]


class Working:
    """A projection's rows while it folds: cells by table and key, and the changed ones.

    Rows of `append` tables are only marked changed (never kept); rows of `per_order`
    tables missing here are asked of `loader` (the store), if there is one. `stored`
    holds the keys the store has (or will have once the changes taken are committed), so
    the store can insert the rows that are new instead of upserting them.
    """

    __slots__ = ("cells", "changed", "loader", "stored", "tables")

    def __init__(self, tables: Iterable[Table], loader: Loader | None = None) -> None:
        self.tables = {t.name: t for t in tables}
        self.cells: dict[str, dict[Key, Any]] = {name: {} for name in self.tables}
        self.changed: dict[str, dict[Key, Any]] = {name: {} for name in self.tables}
        self.stored: dict[str, set[Key]] = {name: set() for name in self.tables}
        self.loader = loader

    def load(self, table: str, cells: Mapping[Key, Any]) -> None:
        """Cells read from the store."""
        self.cells[table].update(cells)
        self.stored[table].update(cells)

    def lookup(self, table: str, key: Key) -> Any:
        """The cell at `key`, loaded from the store if evicted; None if there is none."""
        cell = self.cells[table].get(key)
        if cell is None and self.loader is not None:
            found = self.loader(self.tables[table], [key])
            self.load(table, found)
            cell = found.get(key)
        return cell

    def prefetch(self, table: str, keys: Iterable[Key]) -> None:
        """Load, in one go, the cells at `keys` that are not here (a batch's orders)."""
        if self.loader is None:
            return
        cells = self.cells[table]
        missing = list({k for k in keys if k not in cells})
        if missing:
            self.load(table, self.loader(self.tables[table], missing))

    def take_changed(self) -> dict[str, dict[Key, Any]]:
        changed = {name: rows for name, rows in self.changed.items() if rows}
        self.changed = {name: {} for name in self.tables}
        return changed

    def take_changes(self) -> tuple[dict[str, dict[Key, Any]], dict[str, set[Key]]]:
        """The changed cells by table, and the keys among them the store does not have
        yet (every key, for an `append` table); from now on the store is taken to have
        them all."""
        changed = self.take_changed()
        created: dict[str, set[Key]] = {}
        for name, cells in changed.items():
            if self.tables[name].kind == "append":
                created[name] = set(cells)
                continue
            stored = self.stored[name]
            new = {key for key in cells if key not in stored}
            if new:
                created[name] = new
                stored.update(new)
        return changed, created

    def over(self, limit: int) -> bool:
        """Whether a `per_order` table holds more than `limit` cells."""
        return any(
            len(self.cells[name]) > limit
            for name, table in self.tables.items()
            if table.kind == "per_order"
        )

    def evict(self, limit: int, keep: Mapping[str, set[Key]] | None = None) -> None:
        """Forget `per_order` cells once there are more than `limit` (they are written),
        but those at the keys `keep` names by table (rows of a write not yet committed:
        loaded back now, they would be read as they were before it)."""
        for name, table in self.tables.items():
            if table.kind == "per_order" and len(self.cells[name]) > limit:
                kept = (keep or {}).get(name, set())
                cells = self.cells[name]
                self.cells[name] = {key: cells[key] for key in kept if key in cells}
                self.stored[name] = self.stored[name] & kept

    def clear(self) -> None:
        self.cells = {name: {} for name in self.tables}
        self.changed = {name: {} for name in self.tables}
        self.stored = {name: set() for name in self.tables}


@dataclass
class View:
    """A projection's tables as frozen rows: what readers get."""

    tables: dict[str, dict[Key, Any]] = field(default_factory=dict)
    working: Working | None = field(default=None, repr=False, compare=False)

    def table(self, name: str) -> dict[Key, Any]:
        return self.tables.setdefault(name, {})

    def get(self, table: str, key: Key) -> Any:
        return self.tables.get(table, {}).get(key)

    def rows(self, table: str) -> Iterator[Any]:
        return iter(self.tables.get(table, {}).values())

    def contents(self) -> dict[str, dict[Key, Any]]:
        """The non-empty tables: what two views are compared by."""
        return {name: dict(rows) for name, rows in self.tables.items() if rows}


# --------------------------------------------------------------------------- projection


class Projection:
    """A fold over the order log into tables."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table, ...]]
    handles: ClassVar[tuple[type[Order.Event], ...]]

    @cached_property
    def kinds(self) -> frozenset[str]:
        """The kinds of record this projection folds (from `handles`)."""
        return kinds_of(self.handles)

    def apply_record(self, working: Working, record: Record) -> None:
        """Fold one record (of a kind in `kinds`) into the working set."""
        raise NotImplementedError

    def working(self, loader: Loader | None = None) -> Working:
        return Working(self.tables, loader)

    # ------------------------------------------------------------------ in memory

    def apply(self, view: View, event: Order.Event, position: int) -> None:
        """Fold one event (at log position `position`) into `view`."""
        if type(event).__name__ not in self.kinds:
            return
        working = self._working_of(view)
        self.apply_record(working, record_of(position, event))
        self._publish(view, working)

    def fold(self, events: Iterable[tuple[int, Order.Event]], view: View | None = None) -> View:
        """Fold many events into a (new) view (events made in memory; from the log,
        `fold_records` of stored records is the fast path)."""
        kinds = self.kinds
        return self.fold_records(
            (record_of(p, e) for p, e in events if type(e).__name__ in kinds), view
        )

    def fold_records(self, records: Iterable[Record], view: View | None = None) -> View:
        view = view if view is not None else View()
        working = self._working_of(view)
        kinds = self.kinds
        apply = self.apply_record
        for record in records:
            if record.kind in kinds:
                apply(working, record)
        self._publish(view, working)
        return view

    def _working_of(self, view: View) -> Working:
        if view.working is None:
            working = self.working()
            for table in self.tables:
                if table.kind == "append":
                    continue
                working.cells[table.name] = {
                    key: table.cell_of(row) for key, row in view.table(table.name).items()
                }
            view.working = working
        return view.working

    def _publish(self, view: View, working: Working) -> None:
        for name, cells in working.take_changed().items():
            table = working.tables[name]
            rows = view.table(name)
            for key, cell in cells.items():
                rows[key] = table.row_of(cell)

    def table_named(self, name: str) -> Table:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)


def rows_equal(a: Mapping[Key, Any], b: Mapping[Key, Any]) -> bool:
    return dict(a) == dict(b)
