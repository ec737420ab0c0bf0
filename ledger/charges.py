"""Zerodha's charges, computed from a versioned schedule (data, never literals in code).

`ledger/data/charges.json` lists one schedule per segment and exchange with the date it
takes effect; the schedule in force on a trade's date is the one with the latest
`effective_from` not after it (so the April 2026 STT change on futures and options applies
to trades from 2026-04-01 on, and earlier trades keep the old rate).

Charges are computed per executed order (brokerage caps are per order) and each fill is
given the difference its quantity makes, so the charges on an order's fills add up to the
order's charges exactly. Every component is rounded to the paisa, half up.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Final

from ledger.domain.values import Exchange, Instrument, Product, Side

PAISA: Final = Decimal("0.01")
HUNDRED: Final = Decimal(100)
CRORE: Final = Decimal(10_000_000)


class ChargesDataError(ValueError):
    """The charges schedule file is malformed; the message names the entry and field."""


@dataclass(frozen=True, slots=True)
class Schedule:
    segment: str
    exchange: str
    effective_from: date
    brokerage_percent: Decimal | None
    brokerage_cap: Decimal | None
    brokerage_flat: Decimal | None
    stt_buy: Decimal
    stt_sell: Decimal
    exchange_txn: Decimal
    sebi_per_crore: Decimal
    stamp_buy: Decimal
    gst: Decimal


@dataclass(frozen=True, slots=True)
class Charges:
    """One order's (or one fill's) charges, by component."""

    brokerage: Decimal
    stt: Decimal
    exchange_txn: Decimal
    sebi: Decimal
    stamp: Decimal
    gst: Decimal

    @property
    def total(self) -> Decimal:
        return self.brokerage + self.stt + self.exchange_txn + self.sebi + self.stamp + self.gst

    def minus(self, other: Charges) -> Charges:
        return Charges(
            self.brokerage - other.brokerage,
            self.stt - other.stt,
            self.exchange_txn - other.exchange_txn,
            self.sebi - other.sebi,
            self.stamp - other.stamp,
            self.gst - other.gst,
        )


NO_CHARGES: Final = Charges(*(Decimal(0),) * 6)


def _paisa(value: Decimal) -> Decimal:
    return value.quantize(PAISA, rounding=ROUND_HALF_UP)


def segment_of(instrument: Instrument, product: Product) -> str:
    """equity_delivery, equity_intraday, equity_mtf, futures or options."""
    kind = instrument.instrument_type.upper()
    if kind in ("CE", "PE"):
        return "options"
    if kind == "FUT" or instrument.ref.exchange in (Exchange.NFO, Exchange.BFO):
        return "futures"
    if product is Product.MTF:
        return "equity_mtf"  # delivery's taxes, but brokerage is charged
    return "equity_intraday" if product is Product.MIS else "equity_delivery"


class ChargesSchedule:
    """Every schedule, by segment and exchange, over time."""

    def __init__(self, schedules: Iterable[Schedule]) -> None:
        self._by_key: dict[tuple[str, str], list[Schedule]] = {}
        for schedule in schedules:
            self._by_key.setdefault((schedule.segment, schedule.exchange), []).append(schedule)
        for versions in self._by_key.values():
            versions.sort(key=lambda s: s.effective_from)

    @classmethod
    def from_json(cls, text: str, origin: str = "<charges>") -> ChargesSchedule:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ChargesDataError(f"{origin}: not JSON ({error.msg})") from None
        entries = document.get("schedules") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ChargesDataError(f"{origin}: expected an object with a 'schedules' list")
        return cls(_schedule(entry, f"{origin}: schedules[{i}]") for i, entry in enumerate(entries))

    @classmethod
    def bundled(cls) -> ChargesSchedule:
        text = resources.files("ledger").joinpath("data/charges.json").read_text("utf-8")
        return cls.from_json(text, "ledger/data/charges.json")

    @classmethod
    def from_file(cls, path: str | Path) -> ChargesSchedule:
        return cls.from_json(Path(path).read_text("utf-8"), str(path))

    def schedule_for(self, segment: str, exchange: str, on: date) -> Schedule:
        versions = self._by_key.get((segment, exchange))
        if not versions:
            raise ChargesDataError(f"no charges schedule for {segment} on {exchange}")
        in_force = [s for s in versions if s.effective_from <= on]
        if not in_force:
            raise ChargesDataError(
                f"no charges schedule for {segment} on {exchange} in force on {on.isoformat()}"
            )
        return in_force[-1]

    def order_charges(
        self,
        instrument: Instrument,
        product: Product,
        side: Side,
        fills: Sequence[tuple[int, Decimal]],
        on: date,
    ) -> Charges:
        """Charges of an executed order made of `fills` (quantity, price) on day `on`.

        Turnover is in rupees: price x quantity x the instrument's multiplier (where Kite's
        quantity counts contracts, a contract's worth is its multiplier times the price)."""
        if not fills:
            return NO_CHARGES
        if instrument.multiplier is None:
            raise ChargesDataError(f"{instrument.ref}: no contract multiplier is known")
        schedule = self.schedule_for(
            segment_of(instrument, product), instrument.ref.exchange.value, on
        )
        turnover = (
            sum((price * quantity for quantity, price in fills), Decimal(0)) * instrument.multiplier
        )
        if schedule.brokerage_flat is not None:
            brokerage = schedule.brokerage_flat
        else:
            brokerage = turnover * (schedule.brokerage_percent or Decimal(0)) / HUNDRED
            if schedule.brokerage_cap is not None:
                brokerage = min(brokerage, schedule.brokerage_cap)
        stt_rate = schedule.stt_buy if side is Side.BUY else schedule.stt_sell
        stt = turnover * stt_rate / HUNDRED
        txn = turnover * schedule.exchange_txn / HUNDRED
        sebi = turnover * schedule.sebi_per_crore / CRORE
        stamp = turnover * schedule.stamp_buy / HUNDRED if side is Side.BUY else Decimal(0)
        brokerage, stt, txn, sebi, stamp = (_paisa(v) for v in (brokerage, stt, txn, sebi, stamp))
        gst = _paisa((brokerage + txn + sebi) * schedule.gst / HUNDRED)
        return Charges(brokerage, stt, txn, sebi, stamp, gst)

    def fill_charges(
        self,
        instrument: Instrument,
        product: Product,
        side: Side,
        earlier_fills: Sequence[tuple[int, Decimal]],
        fill: tuple[int, Decimal],
        on: date,
    ) -> Decimal:
        """What one more fill adds to its order's charges."""
        before = self.order_charges(instrument, product, side, earlier_fills, on)
        after = self.order_charges(instrument, product, side, [*earlier_fills, fill], on)
        return after.minus(before).total


def _schedule(entry: Any, where: str) -> Schedule:
    if not isinstance(entry, dict):
        raise ChargesDataError(f"{where}: expected an object")

    def number(name: str, optional: bool = False) -> Decimal | None:
        value = entry.get(name)
        if value is None:
            if optional:
                return None
            raise ChargesDataError(f"{where}: {name}: missing")
        try:
            result = Decimal(str(value))
        except ArithmeticError:
            raise ChargesDataError(f"{where}: {name}: not a number: {value!r}") from None
        if not result.is_finite() or result < 0:
            raise ChargesDataError(f"{where}: {name}: must be a non-negative number")
        return result

    try:
        effective = date.fromisoformat(str(entry.get("effective_from")))
    except ValueError:
        raise ChargesDataError(f"{where}: effective_from: not a date") from None
    required = {
        n: number(n)
        for n in ("stt_buy", "stt_sell", "exchange_txn", "sebi_per_crore", "stamp_buy", "gst")
    }
    return Schedule(
        segment=str(entry.get("segment")),
        exchange=str(entry.get("exchange")),
        effective_from=effective,
        brokerage_percent=number("brokerage_percent", optional=True),
        brokerage_cap=number("brokerage_cap", optional=True),
        brokerage_flat=number("brokerage_flat", optional=True),
        **{k: v for k, v in required.items() if v is not None},
    )


@dataclass(frozen=True, slots=True)
class ContractNoteDifference:
    order_id: str
    component: str
    ledger: Decimal
    broker: Decimal


def compare_contract_note(
    ledger_charges: dict[str, Charges],
    contract_note: Iterable[dict[str, Any]],
    tolerance: Decimal = Decimal("0.05"),
) -> list[ContractNoteDifference]:
    """Differences between the ledger's charges per broker order id and Kite's virtual
    contract note (`get_virtual_contract_note`), beyond `tolerance` rupees a component.

    An order on one side only is an "order" difference of its whole total: one the note
    bills that the ledger does not know (0 against the broker's total), and one the
    ledger charged that the note does not list (the ledger's total against 0): Kite not
    billing an order the ledger holds as executed is as much a disagreement as the other
    way round, and walking only the note let it pass as clean."""
    differences: list[ContractNoteDifference] = []
    listed: set[str] = set()
    for note in contract_note:
        order_id = str(note.get("order_id", ""))
        listed.add(order_id)
        charges = note.get("charges") or {}
        ours = ledger_charges.get(order_id)
        if ours is None:
            differences.append(
                ContractNoteDifference(
                    order_id, "order", Decimal(0), Decimal(str(charges.get("total", 0)))
                )
            )
            continue
        theirs = {
            "brokerage": charges.get("brokerage", 0),
            "stt": charges.get("transaction_tax", 0),
            "exchange_txn": charges.get("exchange_turnover_charge", 0),
            "sebi": charges.get("sebi_turnover_charge", 0),
            "stamp": charges.get("stamp_duty", 0),
            "gst": (charges.get("gst") or {}).get("total", 0),
        }
        for component, value in theirs.items():
            broker = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
            mine = getattr(ours, component)
            if abs(broker - mine) > tolerance:
                differences.append(ContractNoteDifference(order_id, component, mine, broker))
    for order_id, ours in ledger_charges.items():
        if order_id not in listed:
            differences.append(ContractNoteDifference(order_id, "order", ours.total, Decimal(0)))
    return differences
