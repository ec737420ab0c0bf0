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


def contract_note_request(orders: Iterable[Any]) -> list[dict[str, Any]]:
    """The `get_virtual_contract_note` request for the ledger's executed orders (each with
    a broker order id and at least one fill): one entry per order, in the given order.

    Kite answers with one entry per request entry, in the same order, and without the
    order id, so the request is what ties each answer to its order: pass it to
    `compare_contract_note` as `requested`."""
    request = []
    for order in orders:
        if not order.broker_order_id or not order.filled_quantity:
            continue
        request.append(
            {
                "order_id": order.broker_order_id,
                "exchange": order.instrument.exchange.value,
                "tradingsymbol": order.instrument.tradingsymbol,
                "transaction_type": order.side.value,
                "variety": order.variety.value,
                "product": order.product.value,
                "order_type": order.order_type.value,
                "quantity": order.filled_quantity,
                "average_price": float(order.average_price),
            }
        )
    return request


def compare_contract_note(
    ledger_charges: dict[str, Charges],
    contract_note: Iterable[dict[str, Any]],
    tolerance: Decimal = Decimal("0.05"),
    requested: Sequence[dict[str, Any]] | None = None,
) -> list[ContractNoteDifference]:
    """Differences between the ledger's charges per broker order id and Kite's virtual
    contract note (`get_virtual_contract_note`), beyond `tolerance` rupees a component.

    Kite's answer does not name the orders: its entries follow the request's, one for
    one. With `requested` (the request sent, as `contract_note_request` makes it), each
    entry is the charges of the request's order at the same place, and an entry whose
    exchange, symbol or side is not its request's, or an answer of another length, is a
    difference ("entry"), since pairing them further would compare the wrong orders. An
    entry that carries an `order_id` of its own is taken by it.

    An order on one side only is an "order" difference of its whole total: one the note
    bills that the ledger does not know (0 against the broker's total), and one the
    ledger charged that the note does not list (the ledger's total against 0): Kite not
    billing an order the ledger holds as executed is as much a disagreement as the other
    way round, and walking only the note let it pass as clean."""
    differences: list[ContractNoteDifference] = []
    listed: set[str] = set()
    entries = list(contract_note)
    if requested is not None and len(entries) != len(requested):
        differences.append(
            ContractNoteDifference("", "entry", Decimal(len(requested)), Decimal(len(entries)))
        )
        requested = None  # answers cannot be paired with the orders asked about
    for index, note in enumerate(entries):
        charges = note.get("charges") or {}
        order_id = str(note.get("order_id") or "")
        if not order_id and requested is not None:
            asked = requested[index]
            order_id = str(asked.get("order_id", ""))
            if any(
                str(note.get(field, asked.get(field))) != str(asked.get(field))
                for field in ("exchange", "tradingsymbol", "transaction_type")
            ):
                listed.add(order_id)
                differences.append(
                    ContractNoteDifference(
                        order_id,
                        "entry",
                        Decimal(0),
                        _decimal(charges.get("total", 0)),
                    )
                )
                continue
        listed.add(order_id)
        ours = ledger_charges.get(order_id)
        if ours is None:
            differences.append(
                ContractNoteDifference(
                    order_id, "order", Decimal(0), _decimal(charges.get("total", 0))
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
            broker = _decimal(value)
            mine = getattr(ours, component)
            if abs(broker - mine) > tolerance:
                differences.append(ContractNoteDifference(order_id, component, mine, broker))
    for order_id, ours in ledger_charges.items():
        if order_id not in listed:
            differences.append(ContractNoteDifference(order_id, "order", ours.total, Decimal(0)))
    return differences


def _decimal(value: Any) -> Decimal:
    """A JSON number as Kite sent it: a float by its shortest text (0.1, not 0.1000...)."""
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
