"""The audit trail's filters and exports; reconciliation against Kite's positions."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger.domain.values import IST, Exchange, InstrumentRef, Product, Side
from projections.audit import AuditTrailProjection, details_json, to_csv, to_jsonl, trail
from projections.positions import PositionsProjection, positions_of
from projections.reconciliation import BrokerPayloadError, ledger_positions, reconcile
from tests.support import START
from tests.unit.dsl import accepted, at, cancel_requested, cancelled, filled, submitted
from tests.unit.projection_dsl import fill_event, fold, order_events, order_uuid

D = Decimal


def _trail_view() -> Any:
    events = order_events(1, submitted(), accepted(), filled("T1", 40)) + order_events(
        2,
        submitted(instrument=InstrumentRef(Exchange.NSE, "INFY"), account="ZZ9"),
        cancel_requested(),
        cancelled(),
    )
    return fold(AuditTrailProjection(), events)


def test_every_event_in_log_order_with_actor_and_source() -> None:
    entries = trail(_trail_view())
    assert [e.log_position for e in entries] == [1, 2, 3, 4, 5, 6]
    assert [e.event_type for e in entries] == [
        "Submitted",
        "Accepted",
        "Filled",
        "Submitted",
        "CancelRequested",
        "Cancelled",
    ]
    assert entries[0].actor == "test"
    assert entries[0].source == "ledger"
    assert entries[1].actor == "broker"
    assert entries[1].source == "broker"
    assert entries[2].source == "postback"
    assert json.loads(entries[2].details)["trade_id"] == "T1"
    assert entries[5].tradingsymbol == "INFY"  # labelled from the order's Submitted


def test_filters() -> None:
    view = _trail_view()
    assert len(trail(view, order_id=order_uuid(1))) == 3
    assert len(trail(view, instrument=InstrumentRef(Exchange.NSE, "INFY"))) == 3
    assert len(trail(view, account="ZZ9")) == 3
    assert [e.event_type for e in trail(view, event_types=["Filled", "Cancelled"])] == [
        "Filled",
        "Cancelled",
    ]
    assert [e.log_position for e in trail(view, since=at(2), until=at(3))] == [2, 5]


def test_csv_and_jsonl_exports() -> None:
    entries = trail(_trail_view())
    rows = list(csv.DictReader(io.StringIO(to_csv(entries))))
    assert len(rows) == 6
    assert rows[2]["event_type"] == "Filled"
    assert rows[2]["recorded_at"] == at(3).isoformat()
    lines = [json.loads(line) for line in to_jsonl(entries)]
    assert lines[2]["details"]["quantity"] == 40
    assert lines[2]["details"]["price"] == "812.35"


# ----------------------------------------------------------------- reconciliation


def _positions() -> list[Any]:
    view = fold(
        PositionsProjection(),
        [
            fill_event("T1", Side.BUY, 10, "420.65", order=1),
            fill_event("T2", Side.BUY, 5, "421.00", order=2),
        ],
    )
    return positions_of(view)


def _broker(**overrides: Any) -> dict[str, Any]:
    entry = {
        "tradingsymbol": "SBIN",
        "exchange": "NSE",
        "product": "CNC",
        "quantity": 15,
        "average_price": 420.7666,
        "buy_quantity": 15,
        "sell_quantity": 0,
    }
    entry.update(overrides)
    # A position opened today: Kite's net and day entries for it alike.
    return {"status": "success", "data": {"net": [entry], "day": [entry]}}


def test_matching_positions_reconcile_clean() -> None:
    report = reconcile("AB1234", _positions(), _broker(), day_positions=_positions())
    assert report.clean, report.differences
    assert report.matched == 1


def test_every_difference_is_reported() -> None:
    """Bought and sold quantities and the average are today's (`day`) since positions are
    compared day by day: they were compared over the whole log with `net`."""
    today = _positions()
    report = reconcile(
        "AB1234", _positions(), _broker(quantity=14, buy_quantity=14), day_positions=today
    )
    assert {d.field for d in report.differences} == {"quantity", "day_buy_quantity"}
    report = reconcile("AB1234", _positions(), _broker(average_price=421.5), day_positions=today)
    assert [str(d) for d in report.differences] == [
        "NSE:SBIN CNC: day_average_price ledger=420.7666666667 broker=421.5"
    ]
    extra = _broker()
    extra["data"]["net"].append(
        {"tradingsymbol": "INFY", "exchange": "NSE", "product": "CNC", "quantity": 3}
    )
    report = reconcile("AB1234", _positions(), extra, day_positions=today)
    assert [(d.tradingsymbol, d.ledger, d.broker) for d in report.differences] == [
        ("INFY", "missing", "3")
    ]
    report = reconcile("AB1234", _positions(), {"net": [], "day": []}, day_positions=today)
    assert [(d.field, d.ledger, d.broker) for d in report.differences] == [
        ("position", "15", "missing"),
        ("day_buy_quantity", "15", "0"),
        ("day_buy_value", "6311.5", "0"),
    ]


@pytest.mark.parametrize(
    ("broker_average", "differs"),
    [
        ("812.35", False),
        ("812.36", True),  # a paisa more on 100 shares is a rupee: a difference
        ("812.34", True),
        ("812.3550", False),  # Kite's rounding: at most half a paisa
        ("812.3451", False),
        ("812.3551", True),
    ],
)
def test_an_average_price_a_paisa_off_is_a_difference(broker_average: str, differs: bool) -> None:
    """The tolerance was `> 0.01`: a broker average a whole paisa off (Rs 1 on 100 shares)
    reconciled clean. Rounding to the paisa explains at most half of one."""
    view = fold(PositionsProjection(), [fill_event("T1", Side.BUY, 100, "812.35", order=1)])
    broker = _broker(quantity=100, buy_quantity=100, average_price=float(broker_average))
    positions = positions_of(view)
    report = reconcile("AB1234", positions, broker, day_positions=positions)
    assert [d.field for d in report.differences] == (["day_average_price"] if differs else [])


def _kite_net(fills: list[tuple[str, int, str]], product: str = "MIS") -> dict[str, Any]:
    """Kite's net position for these fills, as Kite (and the sandbox) define it: values are
    sums of price x quantity; the average is the buy side's average while the position is
    long, the sell side's while it is short."""
    buys = [(q, Decimal(p)) for side, q, p in fills if side == "BUY"]
    sells = [(q, Decimal(p)) for side, q, p in fills if side == "SELL"]
    bought, sold = sum(q for q, _ in buys), sum(q for q, _ in sells)
    buy_value, sell_value = sum(q * p for q, p in buys), sum(q * p for q, p in sells)
    net = bought - sold
    average = buy_value / bought if net > 0 else sell_value / sold if net < 0 else 0
    entry = {
        "tradingsymbol": "SBIN",
        "exchange": "NSE",
        "product": product,
        "quantity": net,
        "average_price": float(round(Decimal(average), 4)),
        "buy_quantity": bought,
        "sell_quantity": sold,
        "buy_value": float(buy_value),
        "sell_value": float(sell_value),
    }
    return {"status": "success", "data": {"net": [entry], "day": [entry]}}


@pytest.mark.parametrize(
    "fills",
    [
        [("BUY", 10, "800"), ("SELL", 5, "820"), ("BUY", 10, "840")],
        [("SELL", 10, "800"), ("BUY", 5, "780"), ("SELL", 10, "760")],
        [("BUY", 10, "800"), ("SELL", 15, "820"), ("SELL", 5, "790")],  # flipped short
    ],
)
def test_the_average_price_is_compared_as_kite_defines_it(
    fills: list[tuple[str, int, str]],
) -> None:
    """Kite's average price of a position reduced and added to is its buy (or sell) side's
    average, not the average cost the ledger's positions carry (826.67 after buying 10 at
    800, selling 5 at 820, buying 10 at 840; Kite says 820): the two were compared and
    every such position was reported as a difference."""
    events = [
        fill_event(f"T{n}", Side(side), quantity, price, order=n, product=Product.MIS)
        for n, (side, quantity, price) in enumerate(fills, start=1)
    ]
    positions = positions_of(fold(PositionsProjection(), events))
    report = reconcile("AB1234", positions, _kite_net(fills), day_positions=positions)
    assert report.differences == []


def test_bought_and_sold_values_are_compared_to_half_a_paisa() -> None:
    fills = [("BUY", 10, "800"), ("SELL", 5, "820"), ("BUY", 10, "840")]
    events = [
        fill_event(f"T{n}", Side(side), quantity, price, order=n, product=Product.MIS)
        for n, (side, quantity, price) in enumerate(fills, start=1)
    ]
    positions = positions_of(fold(PositionsProjection(), events))
    broker = _kite_net(fills)
    broker["data"]["day"][0]["sell_value"] = 4100.01
    broker["data"]["day"][0]["buy_value"] = 16400.004  # a float's noise, not a difference
    report = reconcile("AB1234", positions, broker, day_positions=positions)
    assert [str(d) for d in report.differences] == [
        "NSE:SBIN MIS: day_sell_value ledger=4100 broker=4100.01"
    ]


Trade = tuple[int, str, int, str, Product]  # day, side, quantity, price, product


def _ledger_on(day: int, trades: list[Trade]) -> tuple[list[Any], list[Any]]:
    """The ledger's positions over all of `trades`, and over those of `day` (the sides
    `reconcile` compares with Kite's net and day lists)."""
    events = [
        fill_event(f"T{n}", Side(side), quantity, price, order=n, product=product, day=d)
        for n, (d, side, quantity, price, product) in enumerate(trades, start=1)
    ]
    today = (START + timedelta(days=day)).astimezone(IST).date()
    return ledger_positions(list(enumerate(events, start=1)), today)


def _kite(net: list[dict[str, Any]], day: list[dict[str, Any]]) -> dict[str, Any]:
    def entry(fields: dict[str, Any]) -> dict[str, Any]:
        return {"tradingsymbol": "SBIN", "exchange": "NSE", **fields}

    return {"net": [entry(e) for e in net], "day": [entry(e) for e in day]}


def test_a_position_closed_on_an_earlier_day_is_not_missing_today() -> None:
    """From the second trading day on, Kite no longer lists yesterday's closed intraday
    position; the ledger's flat position was reported missing at the broker."""
    trades: list[Trade] = [(0, "BUY", 10, "800", Product.MIS), (0, "SELL", 10, "810", Product.MIS)]
    positions, today = _ledger_on(1, trades)
    report = reconcile("AB1234", positions, _kite([], []), day_positions=today)
    assert report.differences == []


def test_todays_buying_and_selling_is_compared_with_kites_day() -> None:
    """Bought and sold quantities and values are the day's on both sides (they were the
    whole log's against Kite's day: 15 bought against Kite's 5)."""
    trades: list[Trade] = [
        (0, "BUY", 10, "800", Product.MIS),
        (0, "SELL", 10, "810", Product.MIS),
        (1, "BUY", 5, "810", Product.MIS),
    ]
    positions, today = _ledger_on(1, trades)
    bought = {
        "product": "MIS",
        "quantity": 5,
        "average_price": 810,
        "buy_quantity": 5,
        "sell_quantity": 0,
        "buy_value": 4050,
        "sell_value": 0,
    }
    report = reconcile("AB1234", positions, _kite([bought], [bought]), day_positions=today)
    assert report.differences == []
    assert report.matched == 1
    more = {**bought, "quantity": 6, "buy_quantity": 6, "buy_value": 4860}
    report = reconcile("AB1234", positions, _kite([more], [more]), day_positions=today)
    assert [str(d) for d in report.differences] == [
        "NSE:SBIN MIS: quantity ledger=5 broker=6",
        "NSE:SBIN MIS: day_buy_quantity ledger=5 broker=6",
        "NSE:SBIN MIS: day_buy_value ledger=4050 broker=4860",
    ]


def test_a_carried_position_is_compared_by_its_net_quantity() -> None:
    """A carry-forward (NRML) position is in Kite's net, with what was bought yesterday
    in it: only the net quantity compares like with like."""
    trades: list[Trade] = [
        (0, "BUY", 50, "800", Product.NRML),
        (1, "SELL", 20, "805", Product.NRML),
    ]
    positions, today = _ledger_on(1, trades)
    net = {"product": "NRML", "quantity": 30, "overnight_quantity": 50, "buy_quantity": 50}
    day = {"product": "NRML", "quantity": -20, "sell_quantity": 20, "sell_value": 16100}
    day["average_price"] = 805
    report = reconcile("AB1234", positions, _kite([net], [day]), day_positions=today)
    assert report.differences == []
    report = reconcile("AB1234", positions, _kite([], [day]), day_positions=today)
    assert [str(d) for d in report.differences] == [
        "NSE:SBIN NRML: position ledger=30 broker=missing"
    ]


def test_delivery_positions_of_earlier_days_are_in_holdings_not_positions() -> None:
    """Kite moves a CNC position to holdings after its trading day: its positions() lists
    only today's CNC trades, and the ledger's CNC positions are compared with their part
    of today."""
    trades: list[Trade] = [(0, "BUY", 7, "805", Product.CNC), (1, "BUY", 3, "812", Product.CNC)]
    positions, today = _ledger_on(0, trades[:1])
    assert reconcile("AB1234", positions, _kite([], []), day_positions=[]).differences == []
    positions, today = _ledger_on(1, trades)
    bought = {"product": "CNC", "quantity": 3, "average_price": 812, "buy_quantity": 3}
    bought["buy_value"] = 2436
    report = reconcile("AB1234", positions, _kite([bought], [bought]), day_positions=today)
    assert report.differences == []
    report = reconcile("AB1234", positions, _kite([], []), day_positions=today)
    assert [(d.field, d.ledger, d.broker) for d in report.differences] == [
        ("position", "3", "missing"),
        ("day_buy_quantity", "3", "0"),
        ("day_buy_value", "2436", "0"),
    ]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"data": {}}, "'net' list"),
        ({"net": ["x"]}, r"net\[0\]: expected an object"),
        ({"net": [{"exchange": "NSE"}]}, "missing field"),
        (
            {
                "net": [
                    {"exchange": "NSE", "tradingsymbol": "SBIN", "product": "CNC", "quantity": "x"}
                ],
                "day": [],
            },
            "not a whole number",
        ),
        ({"net": []}, "'day' list"),
        ({"net": [], "day": [{"exchange": "NSE"}]}, r"day\[0\]: missing field"),
    ],
)
def test_malformed_broker_payloads_are_named(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(BrokerPayloadError, match=message):
        reconcile("AB1234", _positions(), payload, day_positions=[])


def test_kite_sample_positions_shape_parses() -> None:
    sample = Path(__file__).resolve().parents[3] / "shared" / "kite" / "trades.json"
    if not sample.exists():
        pytest.skip(f"Kite samples NOT FOUND at {sample.parent}")
    trades = json.loads(sample.read_text())["data"]
    net = [
        {
            "tradingsymbol": t["tradingsymbol"],
            "exchange": t["exchange"],
            "product": t["product"],
            "quantity": t["quantity"],
            "average_price": t["average_price"],
            "buy_quantity": t["quantity"],
            "sell_quantity": 0,
        }
        for t in trades
        if t["tradingsymbol"] == "SBIN"
    ]
    report = reconcile("AB1234", [], {"net": net, "day": net}, day_positions=[])
    assert report.differences


def test_audit_details_of_a_state_of_another_shape_keep_every_field() -> None:
    """Details are laid out once per kind and shape of state; a state of the same kind
    and size with other fields (foreign or damaged data) must not borrow that layout."""
    common = {"timestamp": "2026-11-24T04:00:00+00:00", "class_version": 2}
    first = {**common, "reason": "r", "hash": "h1", "source": "broker"}
    second = {**common, "reason": "r", "note": "kept", "source": "broker"}
    assert json.loads(details_json(first, "Rejected")) == {"reason": "r", "source": "broker"}
    assert json.loads(details_json(second, "Rejected")) == {
        "note": "kept",
        "reason": "r",
        "source": "broker",
    }
