"""Execution reports and statistics, folded from whole orders."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from ledger.domain.values import Side, Source
from projections.reports import ExecutionReportsProjection, fills_for, report_for
from projections.statistics import StatisticsProjection, statistics
from tests.unit.dsl import (
    accepted,
    at,
    cancel_requested,
    cancelled,
    expired,
    filled,
    modified,
    modify_requested,
    rejected,
    submitted,
    triggered,
)
from tests.unit.projection_dsl import fold, order_events, order_uuid

D = Decimal


def test_report_of_a_filled_buy_with_slippage() -> None:
    events = order_events(
        1,
        submitted(),
        accepted(),
        triggered(),
        filled("T1", 40, "812.35"),
        filled("T2", 60, "812.45"),
    )
    view = fold(ExecutionReportsProjection(), events)
    report = report_for(view, order_uuid(1))
    assert report is not None
    assert (report.quantity, report.filled_quantity, report.remaining_quantity) == (100, 100, 0)
    assert report.average_price == D("812.41")
    assert report.status == "FILLED"
    assert report.submitted_at == at(1)
    assert report.first_fill_at == at(4)
    assert report.completed_at == at(5)
    assert report.broker_order_id == "B-1"
    assert report.fill_count == 2
    # Paid 0.31 a share more than the 812.10 decision price: worse, so positive.
    assert report.slippage == D("31")
    assert report.slippage_bps == D("3.8172638838")
    assert [f.trade_id for f in fills_for(view, order_uuid(1))] == ["T1", "T2"]


def test_sell_slippage_is_positive_when_it_receives_less() -> None:
    events = order_events(
        2,
        submitted(side=Side.SELL, trigger_price=D("812.40"), reference_price=D("812.50")),
        accepted(),
        filled("T1", 100, "812.35"),
    )
    report = report_for(fold(ExecutionReportsProjection(), events), order_uuid(2))
    assert report is not None
    assert report.slippage == D("15")
    better = order_events(
        3,
        submitted(side=Side.SELL, trigger_price=D("812.40"), reference_price=D("812.20")),
        accepted(),
        filled("T1", 100, "812.35"),
    )
    report = report_for(fold(ExecutionReportsProjection(), better), order_uuid(3))
    assert report is not None
    assert report.slippage == D("-15")
    assert report.slippage_bps is not None
    assert report.slippage_bps < 0


def test_slippage_in_rupees_counts_the_contract_multiplier() -> None:
    """On MCX, CDS and BCD Kite's quantity counts contracts: 0.31 a unit over the decision
    price on 100 contracts of 10 units each is 310 rupees, not 31; basis points are per
    unit and do not change."""
    events = order_events(
        5,
        submitted(multiplier=10),
        accepted(),
        triggered(),
        filled("T1", 40, "812.35"),
        filled("T2", 60, "812.45"),
    )
    report = report_for(fold(ExecutionReportsProjection(), events), order_uuid(5))
    assert report is not None
    assert report.multiplier == 10
    assert report.average_price == D("812.41")
    assert report.slippage == D("310")
    assert report.slippage_bps == D("3.8172638838")


def test_report_follows_modifications_pending_requests_and_late_fills() -> None:
    events = order_events(
        4,
        submitted(),
        accepted(),
        modify_requested(quantity=150),
        modified(quantity=150),
        filled("T1", 50),
        cancel_requested(),
    )
    view = fold(ExecutionReportsProjection(), events)
    report = report_for(view, order_uuid(4))
    assert report is not None
    assert report.status == "PENDING_CANCEL"
    assert (report.quantity, report.remaining_quantity) == (150, 100)
    later = order_events(4, submitted(), accepted(), cancelled(), filled("T1", 30))
    report = report_for(fold(ExecutionReportsProjection(), later), order_uuid(4))
    assert report is not None
    assert report.status == "CANCELLED"
    assert report.filled_quantity == 30
    assert report.completed_at == at(3)  # the late fill does not move the end


def test_statistics_counters() -> None:
    t = timedelta
    orders = [
        order_events(1, submitted(), accepted(), filled("T1", 100, "812.35")),
        order_events(2, submitted(), accepted(), filled("T1", 40, "812.00"), cancelled()),
        order_events(3, submitted(), rejected()),
        order_events(4, submitted()),  # still in the placement queue
        order_events(5, submitted(), accepted(), filled("T1", 10, "812.00")),
        order_events(6, submitted(), accepted(), expired()),
    ]
    events = [e for order in orders for e in order]
    failed = order_events(7, submitted())[0]
    from ledger.domain.order import Order

    make: Any = Order.Rejected
    ledger_reject = make(
        originator_id=failed.originator_id,
        originator_version=2,
        timestamp=at(2),
        previous_hash=None,
        reason="no margin",
        source=Source.LEDGER,
        broker_timestamp=None,
    )
    events += [failed, ledger_reject]
    stats = statistics(fold(StatisticsProjection(), events))
    assert stats.total_orders == stats.total_submitted == 7
    assert stats.total_completed == 1
    assert stats.total_cancelled == 1
    assert stats.total_rejected == 2
    assert stats.total_failed == 1
    assert stats.total_expired == 1
    assert stats.total_fills == 3
    assert stats.total_volume == 150
    assert stats.total_turnover == D("100") * D("812.35") + D("50") * D("812.00")
    assert stats.total_commission == 0
    assert stats.pending_count == 2
    assert stats.queue_size == 1
    assert stats.monitored_positions == 1
    # ended orders: 1 (100/100), 2 (40/100), 3, 6, 7 (0/100 each)
    assert stats.fill_rate == D("0.28")
    assert stats.average_time_to_fill == t(seconds=2)
    assert stats.counts_by_status == {
        "CANCELLED": 1,
        "EXPIRED": 1,
        "FILLED": 1,
        "PARTIALLY_FILLED": 1,
        "REJECTED": 2,
        "SUBMITTED": 1,
    }


@pytest.mark.parametrize("charges", ["0", "12.5"])
def test_commission_counts_charges_on_fills(charges: str) -> None:
    from tests.unit.projection_dsl import fill_event

    events = [
        *order_events(1, submitted()),
        fill_event("T1", Side.BUY, 10, "812.35", order=1, charges=charges),
    ]
    assert statistics(fold(StatisticsProjection(), events)).total_commission == D(charges)
