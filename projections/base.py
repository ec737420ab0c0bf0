"""What every projection is made of.

A projection is a fold over the order log. Its state is a set of tables of small frozen
rows (a `View`); for each event it handles, `apply` replaces the rows the event changes with
new ones computed by pure functions (`evolve`-style: old row + event -> new row). The same
projection object runs live (the runner, with a database store), at a past instant, and
offline over an export: one definition, so the results cannot differ.

Decimal arithmetic in projections rounds derived prices (averages) to `PRICE_PLACES`
decimal places, half-even, so every store (SQLite text, PostgreSQL NUMERIC, DuckDB
DECIMAL(38,10)) holds exactly the same value. Sums of fill values are exact anyway.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any, ClassVar, Final, get_type_hints

from ledger.domain.order import Order
from ledger.domain.values import IST

PRICE_PLACES: Final = 10
_QUANTUM: Final = Decimal(1).scaleb(-PRICE_PLACES)
ZERO: Final = Decimal(0)

Key = tuple[Any, ...]


def divide(numerator: Decimal, denominator: Decimal | int) -> Decimal:
    """numerator / denominator rounded to PRICE_PLACES (half-even), normalised."""
    with localcontext() as ctx:
        ctx.prec = 50
        value = (numerator / Decimal(denominator)).quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)
    return _normal(value)


def _normal(value: Decimal) -> Decimal:
    """Canonical form: no trailing zeros, no exponent (so stores round-trip it as text)."""
    if value == 0:
        return ZERO
    normalized = value.normalize()
    exponent = normalized.as_tuple().exponent
    assert isinstance(exponent, int)
    return normalized if exponent <= 0 else normalized.quantize(Decimal(1))


def money(value: Decimal) -> Decimal:
    """Canonical form of an exact amount."""
    return _normal(value)


def trading_day(event_time: datetime | None, recorded_at: datetime) -> date:
    """The Indian trading day of a fill: its exchange time if known, else its record time."""
    return (event_time or recorded_at).astimezone(IST).date()


@dataclass(frozen=True)
class Table:
    """One table of a projection: rows of `row_type`, keyed by `key_fields`."""

    name: str
    row_type: type[Any]
    key_fields: tuple[str, ...]

    def key_of(self, row: Any) -> Key:
        return tuple(getattr(row, f) for f in self.key_fields)

    @property
    def columns(self) -> dict[str, Any]:
        """Column name -> Python type, in declaration order."""
        hints = get_type_hints(self.row_type)
        return {f.name: hints[f.name] for f in dataclasses.fields(self.row_type)}


@dataclass
class View:
    """A projection's tables in memory, with the keys changed since the last commit."""

    tables: dict[str, dict[Key, Any]] = field(default_factory=dict)
    dirty: dict[str, set[Key]] = field(default_factory=dict)

    def table(self, name: str) -> dict[Key, Any]:
        return self.tables.setdefault(name, {})

    def get(self, table: str, key: Key) -> Any:
        return self.tables.get(table, {}).get(key)

    def put(self, table: str, key: Key, row: Any) -> None:
        self.table(table)[key] = row
        self.dirty.setdefault(table, set()).add(key)

    def rows(self, table: str) -> Iterator[Any]:
        return iter(self.tables.get(table, {}).values())

    def contents(self) -> dict[str, dict[Key, Any]]:
        """The non-empty tables: what two views are compared by."""
        return {name: dict(rows) for name, rows in self.tables.items() if rows}

    def take_dirty(self) -> dict[str, dict[Key, Any]]:
        """The changed rows, by table; clears the record of changes."""
        changed = {
            name: {key: self.tables[name][key] for key in keys}
            for name, keys in self.dirty.items()
            if keys
        }
        self.dirty = {}
        return changed


class Projection(ABC):
    """A fold over the order log into tables."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table, ...]]
    handles: ClassVar[tuple[type[Order.Event], ...]]

    @abstractmethod
    def apply(self, view: View, event: Order.Event, position: int) -> None:
        """Fold one event (at log position `position`) into `view`."""

    def fold(self, events: Iterable[tuple[int, Order.Event]], view: View | None = None) -> View:
        """Fold many events into a (new) view: the offline and point-in-time path."""
        view = view if view is not None else View()
        handles = self.handles
        for position, event in events:
            if isinstance(event, handles):
                self.apply(view, event, position)
        return view

    def table_named(self, name: str) -> Table:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)


def rows_equal(a: Mapping[Key, Any], b: Mapping[Key, Any]) -> bool:
    return dict(a) == dict(b)
