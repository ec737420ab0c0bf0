"""Positions and P&L: the examples that must hold exactly, and the average-cost rules."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.values import Exchange, InstrumentRef, Product, Side
from projections.pnl import PnlProjection, pnl_report
from projections.positions import PositionsProjection, fills_position, positions_of
from tests.unit.dsl import SBIN, at
from tests.unit.projection_dsl import fill_event, fold

D = Decimal
B, S = Side.BUY, Side.SELL


def test_buy_then_sell_all_realises_and_goes_flat() -> None:
    p = fills_position([(B, 100, D(1000)), (S, 100, D(1100))])
    assert p.realised_pnl == D(10000)
    assert p.net_quantity == 0
    assert p.average_price == 0


def test_reducing_keeps_the_average() -> None:
    p = fills_position([(B, 100, D(1600)), (S, 60, D(1650))])
    assert p.net_quantity == 40
    assert p.average_price == D(1600)
    assert p.realised_pnl == D(3000)


def test_average_is_the_weighted_mean() -> None:
    p = fills_position([(B, 40, D(2500)), (B, 60, D(2505))])
    assert p.average_price == D(2503)
    assert p.realised_pnl == 0


def test_flip_closes_the_old_side_and_opens_the_rest_at_the_fill_price() -> None:
    p = fills_position([(B, 100, D(1000)), (S, 150, D(1010))])
    assert p.realised_pnl == D(1000)
    assert p.net_quantity == -50
    assert p.average_price == D(1010)


def test_short_positions_realise_when_bought_back_cheaper() -> None:
    p = fills_position([(S, 10, D("200.50")), (S, 10, D("201.50")), (B, 5, D(199))])
    assert p.average_price == D(201)
    assert p.realised_pnl == D(10)
    assert p.net_quantity == -15


def test_multiplier_scales_pnl() -> None:
    p = fills_position([(B, 2, D(100)), (S, 2, D(101))], multiplier=25)
    assert p.realised_pnl == D(50)
    q = fills_position([(B, 2, D(100))], multiplier=25)
    assert q.unrealised_pnl(D(103)) == D(150)
    assert (p.buy_value, p.sell_value) == (D(5000), D(5050))  # rupees, as Kite reports them


def test_a_fill_realises_at_the_multiplier_it_carries() -> None:
    """Fills recorded before orders kept their multiplier read as 1; a later fill of the
    same contract carries the real one, and what it closes is realised at it."""
    mcx = InstrumentRef(Exchange.MCX, "GOLDM26DECFUT")
    view = fold(
        PositionsProjection(),
        [
            fill_event("T1", B, 2, "72000", order=1, instrument=mcx, multiplier=1),
            fill_event("T2", S, 1, "72100", order=2, instrument=mcx, multiplier=10),
        ],
    )
    (position,) = positions_of(view)
    assert position.realised_pnl == D(1000)
    assert position.multiplier == 10
    assert (position.buy_value, position.sell_value) == (D(144000), D(721000))


def test_unrealised_against_marks() -> None:
    p = fills_position([(B, 40, D(1600))])
    assert p.unrealised_pnl(D("1612.35")) == D(494)
    assert p.unrealised_pnl(None) == 0


def test_positions_projection_keys_by_account_instrument_product() -> None:
    view = fold(
        PositionsProjection(),
        [
            fill_event("T1", B, 100, "1000", order=1),
            fill_event("T2", S, 100, "1100", order=2),
            fill_event("T3", B, 10, "1000", order=3, product=Product.MIS),
            fill_event("T4", B, 5, "500", order=4, account="ZZ1"),
        ],
    )
    rows = {(p.account, p.product): p for p in positions_of(view)}
    assert rows[("AB1234", "CNC")].realised_pnl == D(10000)
    assert rows[("AB1234", "CNC")].net_quantity == 0
    assert rows[("AB1234", "MIS")].net_quantity == 10
    assert rows[("ZZ1", "CNC")].net_quantity == 5


def test_pnl_by_instrument_strategy_and_day() -> None:
    view = fold(
        PnlProjection(),
        [
            fill_event("T1", B, 100, "1000", order=1, strategy="alpha", charges="20"),
            fill_event("T2", S, 100, "1100", order=2, strategy="alpha", charges="22", day=1),
            fill_event("T3", B, 10, "1000", order=3, strategy="beta"),
        ],
    )
    marks = {SBIN: D(1005)}
    by_instrument = {line.group: line for line in pnl_report(view, "instrument", marks)}
    line = by_instrument["NSE:SBIN"]
    assert line.realised_pnl == D(10000)
    assert line.unrealised_pnl == D(50)
    assert line.charges == D(42)
    assert line.net_pnl == D(10008)
    by_strategy = {line.group: line for line in pnl_report(view, "strategy", marks)}
    assert by_strategy["alpha"].realised_pnl == D(10000)
    assert by_strategy["alpha"].unrealised_pnl == 0
    assert by_strategy["beta"].unrealised_pnl == D(50)
    by_day = {line.group: line for line in pnl_report(view, "day", marks)}
    first = at(0).date().isoformat()
    second = (at(0) + timedelta(days=1)).date().isoformat()
    assert by_day[first].realised_pnl == 0
    assert by_day[first].charges == D(20)
    assert by_day[second].realised_pnl == D(10000)
    assert by_day[second].unrealised_pnl == D(50)  # the report's day is the latest seen
    assert pnl_report(view, "day", marks, day=date(2030, 1, 1))[-1].group == "2030-01-01"


@given(
    st.lists(
        st.tuples(
            st.sampled_from([B, S]),
            st.integers(min_value=1, max_value=500),
            st.integers(min_value=1, max_value=400000).map(lambda n: D(n) * D("0.05")),
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(min_value=1, max_value=400000).map(lambda n: D(n) * D("0.05")),
)
def test_realised_plus_unrealised_is_the_mark_to_market_of_the_fills(
    fills: list[tuple[Side, int, Decimal]], mark: Decimal
) -> None:
    """Whatever the sequence of fills, realised + unrealised P&L equals the fills'
    mark-to-market: sum of (mark - price) x signed quantity, to the paisa."""
    p = fills_position(fills)
    mtm = sum((mark - price) * qty * side.sign for side, qty, price in fills)
    assert abs(p.realised_pnl + p.unrealised_pnl(mark) - mtm) < D("0.01")
    assert p.net_quantity == sum(qty * side.sign for side, qty, _ in fills)


def test_instrument_ref_of_a_position() -> None:
    p = fold(PositionsProjection(), [fill_event("T1", B, 1, "10", order=1)])
    assert positions_of(p)[0].instrument == InstrumentRef(Exchange.NSE, "SBIN")
