"""Instrument reference data: tick size, lot size and the rest, from Kite's instruments dump.

Kite publishes the dump as CSV (`kite.instruments()` returns the same rows). The ledger
needs it to check that prices are multiples of the tick size and quantities of the lot
size, and to refuse an instrument it has never heard of. A small sample ships with the
package for the demo; point `LEDGER_INSTRUMENTS` (or `open_ledger(instruments=...)`) at a
full dump for real trading.

On CDS, BCD and MCX Kite's quantity counts contracts, and P&L needs each contract's
multiplier (MCX GOLDM: 10), which the dump does not carry. An optional `multiplier` column
gives it; without one, those rows load with no multiplier and orders on them are refused,
rather than booked at a P&L off by the contract size. Elsewhere it is 1.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator
from datetime import date
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path

from ledger.domain.errors import UnknownInstrument
from ledger.domain.values import Exchange, Instrument, InstrumentRef

REQUIRED_COLUMNS = ("tradingsymbol", "exchange", "tick_size", "lot_size")


class InstrumentDataError(ValueError):
    """The instruments file is malformed; the message names the line and the column."""


class InstrumentCatalog:
    """Instruments by (exchange, tradingsymbol)."""

    def __init__(self, instruments: Iterable[Instrument] = ()) -> None:
        self._by_ref: dict[InstrumentRef, Instrument] = {}
        for instrument in instruments:
            self._by_ref[instrument.ref] = instrument

    def __len__(self) -> int:
        return len(self._by_ref)

    def __iter__(self) -> Iterator[Instrument]:
        return iter(self._by_ref.values())

    def __contains__(self, ref: object) -> bool:
        return ref in self._by_ref

    def get(self, ref: InstrumentRef) -> Instrument:
        """The instrument, or `UnknownInstrument` naming it."""
        try:
            return self._by_ref[ref]
        except KeyError:
            raise UnknownInstrument(str(ref)) from None

    def merged(self, other: InstrumentCatalog) -> InstrumentCatalog:
        """A catalog with both; `other` wins where both know an instrument."""
        return InstrumentCatalog([*self, *other])

    @classmethod
    def from_csv_text(cls, text: str, *, origin: str = "<text>") -> InstrumentCatalog:
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InstrumentDataError(f"{origin}: missing column(s) {', '.join(missing)}")
        exchanges = {e.value for e in Exchange}
        instruments = []
        for line, row in enumerate(reader, start=2):
            if row["exchange"] not in exchanges:
                continue  # segments the ledger does not trade (e.g. indices, MF)
            instruments.append(_parse_row(row, f"{origin}:{line}"))
        return cls(instruments)

    @classmethod
    def from_csv(cls, path: str | Path) -> InstrumentCatalog:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise InstrumentDataError(f"{path}: cannot read instruments file: {error}") from None
        return cls.from_csv_text(text, origin=str(path))

    @classmethod
    def bundled(cls) -> InstrumentCatalog:
        """The small sample that ships with the package (the demo's instruments)."""
        text = resources.files("ledger").joinpath("data/instruments.csv").read_text("utf-8")
        return cls.from_csv_text(text, origin="ledger/data/instruments.csv")

    @classmethod
    def default(cls) -> InstrumentCatalog:
        """`LEDGER_INSTRUMENTS` (a Kite instruments CSV) if set, else the bundled sample."""
        path = os.environ.get("LEDGER_INSTRUMENTS")
        return cls.from_csv(path) if path else cls.bundled()


def _parse_row(row: dict[str, str], where: str) -> Instrument:
    def decimal(column: str) -> Decimal:
        raw = (row.get(column) or "").strip()
        try:
            value = Decimal(raw)
        except InvalidOperation:
            raise InstrumentDataError(f"{where}: {column}: not a number: {raw!r}") from None
        if not value.is_finite():
            raise InstrumentDataError(f"{where}: {column}: not a finite number: {raw!r}")
        return value

    tick_size = decimal("tick_size")
    if tick_size <= 0:
        raise InstrumentDataError(f"{where}: tick_size: must be positive, got {tick_size}")
    try:
        lot_size = int(row["lot_size"])
    except ValueError:
        raise InstrumentDataError(
            f"{where}: lot_size: not a whole number: {row['lot_size']!r}"
        ) from None
    if lot_size <= 0:
        raise InstrumentDataError(f"{where}: lot_size: must be positive, got {lot_size}")
    expiry_text = (row.get("expiry") or "").strip()
    try:
        expiry = date.fromisoformat(expiry_text) if expiry_text else None
    except ValueError:
        raise InstrumentDataError(f"{where}: expiry: not a date: {expiry_text!r}") from None
    exchange = Exchange(row["exchange"])
    multiplier_text = (row.get("multiplier") or "").strip()
    multiplier: int | None
    if multiplier_text:
        value = decimal("multiplier")
        if value <= 0 or value != value.to_integral_value():
            raise InstrumentDataError(
                f"{where}: multiplier: must be a positive whole number, got {multiplier_text!r}"
            )
        multiplier = int(value)
    else:
        multiplier = None if exchange.counts_contracts else 1
    token_text = (row.get("instrument_token") or "").strip()
    strike = decimal("strike") if (row.get("strike") or "").strip() else None
    return Instrument(
        ref=InstrumentRef(exchange, row["tradingsymbol"].strip()),
        # normalize(): "0.050000" and "0.05" are the same tick.
        tick_size=tick_size.normalize(),
        lot_size=lot_size,
        instrument_token=int(token_text) if token_text.isdigit() else None,
        name=(row.get("name") or "").strip(),
        instrument_type=(row.get("instrument_type") or "").strip(),
        segment=(row.get("segment") or "").strip(),
        expiry=expiry,
        strike=strike if strike else None,
        multiplier=multiplier,
    )
