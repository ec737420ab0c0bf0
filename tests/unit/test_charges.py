"""Zerodha's charges from the versioned schedule."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from ledger.charges import (
    ChargesDataError,
    ChargesSchedule,
    compare_contract_note,
    contract_note_request,
    segment_of,
)
from ledger.domain.values import Exchange, Instrument, InstrumentRef, Product, Side

D = Decimal
SBIN = Instrument(InstrumentRef(Exchange.NSE, "SBIN"), D("0.05"), 1, instrument_type="EQ")
NIFTY_FUT = Instrument(
    InstrumentRef(Exchange.NFO, "NIFTY26DECFUT"), D("0.1"), 65, instrument_type="FUT"
)
NIFTY_CE = Instrument(
    InstrumentRef(Exchange.NFO, "NIFTY26DEC26000CE"), D("0.05"), 65, instrument_type="CE"
)
SCHEDULE = ChargesSchedule.bundled()
DAY = date(2026, 11, 24)


def test_equity_delivery_buy() -> None:
    c = SCHEDULE.order_charges(SBIN, Product.CNC, Side.BUY, [(100, D("812.35"))], DAY)
    assert (c.brokerage, c.stt, c.exchange_txn, c.sebi, c.stamp, c.gst) == (
        D("0.00"),
        D("81.24"),  # 0.1% of 81,235
        D("2.41"),  # 0.00297%
        D("0.08"),  # Rs 10 a crore
        D("12.19"),  # 0.015% on the buy side
        D("0.45"),  # 18% of brokerage + exchange + SEBI
    )
    assert c.total == D("96.37")


def test_intraday_brokerage_is_capped_at_20_per_order() -> None:
    small = SCHEDULE.order_charges(SBIN, Product.MIS, Side.SELL, [(10, D("800"))], DAY)
    assert small.brokerage == D("2.40")
    assert small.stamp == 0
    large = SCHEDULE.order_charges(SBIN, Product.MIS, Side.SELL, [(1000, D("800"))], DAY)
    assert large.brokerage == D("20")
    assert large.stt == D("200.00")  # 0.025% on the sell side


def test_april_2026_stt_change_on_futures_and_options() -> None:
    fills = [(65, D("26000"))]
    before = SCHEDULE.order_charges(NIFTY_FUT, Product.NRML, Side.SELL, fills, date(2026, 3, 31))
    after = SCHEDULE.order_charges(NIFTY_FUT, Product.NRML, Side.SELL, fills, date(2026, 4, 1))
    assert before.stt == D("338.00")  # 0.02% of 16,90,000
    assert after.stt == D("845.00")  # 0.05%
    premium = [(65, D("120"))]
    old = SCHEDULE.order_charges(NIFTY_CE, Product.NRML, Side.SELL, premium, date(2026, 3, 31))
    new = SCHEDULE.order_charges(NIFTY_CE, Product.NRML, Side.SELL, premium, date(2026, 4, 1))
    assert (old.stt, new.stt) == (D("7.80"), D("11.70"))  # 0.1% -> 0.15% of the premium
    assert new.brokerage == D("20")


def test_turnover_is_in_rupees_times_the_contract_multiplier() -> None:
    """Where Kite's quantity counts contracts, a contract is worth its multiplier times the
    price; an instrument whose multiplier is unknown has no charges to compute."""
    per_unit = Instrument(
        InstrumentRef(Exchange.NFO, "X26DECFUT"), D("0.05"), 1, instrument_type="FUT"
    )
    per_contract = Instrument(
        InstrumentRef(Exchange.NFO, "X26DECFUT"), D("0.05"), 1, instrument_type="FUT", multiplier=10
    )
    ten_units = SCHEDULE.order_charges(per_unit, Product.NRML, Side.SELL, [(10, D("500"))], DAY)
    one_contract = SCHEDULE.order_charges(
        per_contract, Product.NRML, Side.SELL, [(1, D("500"))], DAY
    )
    assert one_contract == ten_units
    unknown = Instrument(InstrumentRef(Exchange.MCX, "GOLDM"), D("1"), 1, multiplier=None)
    with pytest.raises(ChargesDataError, match="MCX:GOLDM: no contract multiplier"):
        SCHEDULE.order_charges(unknown, Product.NRML, Side.BUY, [(1, D("72000"))], DAY)


def test_fill_charges_add_up_to_the_order() -> None:
    fills = [(40, D("812.35")), (35, D("812.40")), (25, D("812.30"))]
    per_fill = [
        SCHEDULE.fill_charges(SBIN, Product.MIS, Side.BUY, fills[:i], fills[i], DAY)
        for i in range(len(fills))
    ]
    order = SCHEDULE.order_charges(SBIN, Product.MIS, Side.BUY, fills, DAY)
    assert sum(per_fill, D(0)) == order.total


def test_mtf_pays_brokerage_on_top_of_delivery_charges() -> None:
    """Margin trading: 0.3% or Rs 20 per executed order, whichever is lower; the rest as
    for delivery (it used to be charged as delivery: no brokerage at all)."""
    fills = [(100, D("800"))]
    mtf = SCHEDULE.order_charges(SBIN, Product.MTF, Side.BUY, fills, DAY)
    delivery = SCHEDULE.order_charges(SBIN, Product.CNC, Side.BUY, fills, DAY)
    assert mtf.brokerage == D("20")  # 0.3% of 80,000 is 240: capped
    assert (mtf.stt, mtf.exchange_txn, mtf.sebi, mtf.stamp) == (
        delivery.stt,
        delivery.exchange_txn,
        delivery.sebi,
        delivery.stamp,
    )
    assert mtf.gst == D("4.04")  # 18% of 20 + 2.38 + 0.08
    assert mtf.total == D("118.50")
    small = SCHEDULE.order_charges(SBIN, Product.MTF, Side.SELL, [(1, D("800"))], DAY)
    assert small.brokerage == D("2.40")


def test_segments() -> None:
    assert segment_of(SBIN, Product.CNC) == "equity_delivery"
    assert segment_of(SBIN, Product.MTF) == "equity_mtf"
    assert segment_of(SBIN, Product.MIS) == "equity_intraday"
    assert segment_of(NIFTY_FUT, Product.MIS) == "futures"
    assert segment_of(NIFTY_CE, Product.NRML) == "options"


def test_no_schedule_before_the_first_effective_date() -> None:
    with pytest.raises(ChargesDataError, match="in force on 2020-01-01"):
        SCHEDULE.order_charges(SBIN, Product.CNC, Side.BUY, [(1, D(1))], date(2020, 1, 1))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "'schedules' list"),
        ('{"schedules": [{"effective_from": "x"}]}', "effective_from: not a date"),
        ('{"schedules": [{"effective_from": "2026-01-01"}]}', "stt_buy: missing"),
        ("nope", "not JSON"),
    ],
)
def test_malformed_schedules_are_named(text: str, message: str) -> None:
    with pytest.raises(ChargesDataError, match=message):
        ChargesSchedule.from_json(text)


def test_contract_note_comparison() -> None:
    ours = {"2411": SCHEDULE.order_charges(SBIN, Product.CNC, Side.BUY, [(100, D("812.35"))], DAY)}
    note = {
        "order_id": "2411",
        "charges": {
            "transaction_tax": 81.24,
            "exchange_turnover_charge": 2.41,
            "sebi_turnover_charge": 0.08,
            "brokerage": 0,
            "stamp_duty": 12.0,
            "gst": {"total": 0.45},
        },
    }
    differences = compare_contract_note(ours, [note])
    assert [(d.component, d.ledger, d.broker) for d in differences] == [
        ("stamp", D("12.19"), D("12.0"))
    ]


def test_a_ledger_order_the_contract_note_does_not_list_is_a_difference() -> None:
    """The comparison walked only the broker's note: an order the ledger charged and Kite
    never billed (or billed under another id) passed as clean. Both directions are
    differences of the whole order: ledger total against 0, 0 against broker total."""
    charged = SCHEDULE.order_charges(SBIN, Product.CNC, Side.BUY, [(100, D("812.35"))], DAY)
    billed = {
        "order_id": "2411",
        "charges": {
            "transaction_tax": charged.stt,
            "exchange_turnover_charge": charged.exchange_txn,
            "sebi_turnover_charge": charged.sebi,
            "brokerage": charged.brokerage,
            "stamp_duty": charged.stamp,
            "gst": {"total": charged.gst},
        },
    }
    unknown = {"order_id": "9999", "charges": {"total": 3.5}}
    ours = {"2411": charged, "2412": charged}
    differences = compare_contract_note(ours, [billed, unknown])
    assert [(d.order_id, d.component, d.ledger, d.broker) for d in differences] == [
        ("9999", "order", D(0), D("3.5")),
        ("2412", "order", charged.total, D(0)),
    ]


def _kite_entry(side: str, symbol: str, charges: dict[str, object]) -> dict[str, object]:
    """An entry as Kite's `charges/orders` answers: no order id, unrounded floats."""
    return {
        "transaction_type": side,
        "tradingsymbol": symbol,
        "exchange": "NSE",
        "variety": "regular",
        "product": "CNC",
        "order_type": "LIMIT",
        "quantity": 100,
        "price": 812.35,
        "charges": charges,
    }


_BILLED = {
    "transaction_tax": 81.235,
    "transaction_tax_type": "stt",
    "exchange_turnover_charge": 2.4126795,
    "sebi_turnover_charge": 0.081235,
    "brokerage": 0,
    "stamp_duty": 12.18525,
    "gst": {"igst": 0.44887, "cgst": 0, "sgst": 0, "total": 0.44887},
    "total": 96.36,
}


def _request(*orders: tuple[str, str, str]) -> list[dict[str, object]]:
    return [
        {"order_id": order_id, "exchange": "NSE", "tradingsymbol": symbol, "transaction_type": side}
        for order_id, side, symbol in orders
    ]


def test_kites_contract_note_is_paired_with_the_request_by_place() -> None:
    """Kite's answer names no order (its entries follow the request's): keyed by an
    `order_id` it does not send, every order showed as unbilled and every entry as
    unknown, so no real difference could be seen."""
    charged = SCHEDULE.order_charges(SBIN, Product.CNC, Side.BUY, [(100, D("812.35"))], DAY)
    request = _request(("2411", "BUY", "SBIN"), ("2412", "BUY", "SBIN"))
    note = [
        _kite_entry("BUY", "SBIN", _BILLED),
        _kite_entry("BUY", "SBIN", _BILLED | {"brokerage": 20.0}),
    ]
    differences = compare_contract_note({"2411": charged, "2412": charged}, note, requested=request)
    assert [(d.order_id, d.component, d.ledger, d.broker) for d in differences] == [
        ("2412", "brokerage", D("0.00"), D("20.0"))
    ]


def test_a_contract_note_that_does_not_follow_its_request_is_a_difference() -> None:
    charged = SCHEDULE.order_charges(SBIN, Product.CNC, Side.BUY, [(100, D("812.35"))], DAY)
    request = _request(("2411", "BUY", "SBIN"))
    swapped = compare_contract_note(
        {"2411": charged}, [_kite_entry("SELL", "SBIN", _BILLED)], requested=request
    )
    assert [(d.order_id, d.component) for d in swapped] == [("2411", "entry")]
    short = compare_contract_note({"2411": charged}, [], requested=request)
    assert [(d.order_id, d.component, d.ledger, d.broker) for d in short] == [
        ("", "entry", D(1), D(0)),
        ("2411", "order", charged.total, D(0)),
    ]


def test_the_contract_note_request_lists_executed_orders_with_a_broker_id() -> None:
    from types import SimpleNamespace

    from ledger.domain.values import OrderType, Variety

    def order(broker_id: str | None, filled: int) -> SimpleNamespace:
        return SimpleNamespace(
            broker_order_id=broker_id,
            filled_quantity=filled,
            instrument=SBIN.ref,
            side=Side.SELL,
            variety=Variety.REGULAR,
            product=Product.MIS,
            order_type=OrderType.LIMIT,
            average_price=D("812.325"),
        )

    assert contract_note_request([order("2411", 40), order(None, 40), order("2413", 0)]) == [
        {
            "order_id": "2411",
            "exchange": "NSE",
            "tradingsymbol": "SBIN",
            "transaction_type": "SELL",
            "variety": "regular",
            "product": "MIS",
            "order_type": "LIMIT",
            "quantity": 40,
            "average_price": 812.325,
        }
    ]
