"""Given events / when command / then events or error: every transition of the order."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from ledger.domain.errors import (
    BrokerIdMismatch,
    InstrumentMismatch,
    InvalidCommand,
    Overfill,
    TransitionRefused,
)
from ledger.domain.order import Order
from ledger.domain.status import TRANSITIONS, EventKind, OrderStatus
from ledger.domain.values import Exchange, InstrumentRef, OrderChanges, OrderType, Source
from tests.unit.dsl import (
    ACTIONS,
    NOW,
    EventSpec,
    accepted,
    cancel_rejected,
    cancel_requested,
    cancelled,
    expired,
    fill_action,
    filled,
    given,
    modified,
    modify_rejected,
    modify_requested,
    rejected,
    submitted,
    triggered,
    when,
)

D = Decimal
S = OrderStatus

# One way to reach each lifecycle status. Terminal ones are reached without an acceptance,
# so that a late acceptance (the broker's ids learnt after the end) can be tried on them.
PATHS: dict[OrderStatus, list[EventSpec]] = {
    S.SUBMITTED: [submitted()],
    S.ACCEPTED: [submitted(), accepted()],
    S.TRIGGERED: [submitted(), accepted(), triggered()],
    S.PARTIALLY_FILLED: [submitted(), accepted(), filled("T1", 40)],
    S.FILLED: [submitted(), filled("T1", 100)],
    S.CANCELLED: [submitted(), cancelled()],
    S.REJECTED: [submitted(), rejected()],
    S.EXPIRED: [submitted(), expired()],
}

# The status each admitted (status, event) pair leads to, with the ACTIONS decision.
EXPECTED: dict[tuple[OrderStatus, str], OrderStatus] = {
    (S.SUBMITTED, "Accepted"): S.ACCEPTED,
    (S.SUBMITTED, "Rejected"): S.REJECTED,
    (S.SUBMITTED, "Triggered"): S.TRIGGERED,
    (S.SUBMITTED, "Filled"): S.PARTIALLY_FILLED,
    (S.SUBMITTED, "CancelRequested"): S.PENDING_CANCEL,
    (S.SUBMITTED, "Cancelled"): S.CANCELLED,
    (S.SUBMITTED, "Expired"): S.EXPIRED,
    (S.ACCEPTED, "ModifyRequested"): S.PENDING_MODIFY,
    (S.ACCEPTED, "Modified"): S.ACCEPTED,
    (S.ACCEPTED, "Triggered"): S.TRIGGERED,
    (S.ACCEPTED, "Filled"): S.PARTIALLY_FILLED,
    (S.ACCEPTED, "CancelRequested"): S.PENDING_CANCEL,
    (S.ACCEPTED, "Cancelled"): S.CANCELLED,
    (S.ACCEPTED, "Expired"): S.EXPIRED,
    (S.ACCEPTED, "Rejected"): S.REJECTED,
    (S.TRIGGERED, "ModifyRequested"): S.PENDING_MODIFY,
    (S.TRIGGERED, "Modified"): S.TRIGGERED,
    (S.TRIGGERED, "Filled"): S.PARTIALLY_FILLED,
    (S.TRIGGERED, "CancelRequested"): S.PENDING_CANCEL,
    (S.TRIGGERED, "Cancelled"): S.CANCELLED,
    (S.TRIGGERED, "Expired"): S.EXPIRED,
    (S.TRIGGERED, "Rejected"): S.REJECTED,
    (S.PARTIALLY_FILLED, "ModifyRequested"): S.PENDING_MODIFY,
    (S.PARTIALLY_FILLED, "Modified"): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, "Filled"): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, "CancelRequested"): S.PENDING_CANCEL,
    (S.PARTIALLY_FILLED, "Cancelled"): S.CANCELLED,
    (S.PARTIALLY_FILLED, "Expired"): S.EXPIRED,
    (S.FILLED, "Accepted"): S.FILLED,
    (S.CANCELLED, "Accepted"): S.CANCELLED,
    (S.CANCELLED, "Filled"): S.CANCELLED,
    (S.EXPIRED, "Accepted"): S.EXPIRED,
    (S.EXPIRED, "Filled"): S.EXPIRED,
    (S.REJECTED, "Accepted"): S.REJECTED,
}

# Admitted by the table, but with nothing to record from these paths: the update is one the
# order already reflects (idempotence), so the decision writes no event.
NOTHING_TO_RECORD = {
    (S.ACCEPTED, "Accepted"),  # same broker id again
    (S.TRIGGERED, "Accepted"),
    (S.PARTIALLY_FILLED, "Accepted"),
    (S.SUBMITTED, "CancelRejected"),  # no cancel pending
    (S.ACCEPTED, "ModifyRejected"),
    (S.ACCEPTED, "CancelRejected"),
    (S.TRIGGERED, "ModifyRejected"),
    (S.TRIGGERED, "CancelRejected"),
    (S.PARTIALLY_FILLED, "ModifyRejected"),
    (S.PARTIALLY_FILLED, "CancelRejected"),
}


def status_of(order: Order) -> OrderStatus:
    """A call, so that the type checker does not narrow `order.status` across decisions."""
    return order.status


def test_every_admitted_transition_has_an_expectation() -> None:
    admitted = {(status, kind.value) for status, row in TRANSITIONS.items() for kind in row}
    assert admitted == set(EXPECTED) | NOTHING_TO_RECORD


@pytest.mark.parametrize(("status", "kind"), sorted(EXPECTED, key=str))
def test_admitted_transition(status: OrderStatus, kind: str) -> None:
    order = given(*PATHS[status])
    assert order.status is status
    events = when(order, ACTIONS[kind])
    assert isinstance(events, list), events
    assert [type(e).__name__ for e in events] == [kind]
    assert order.status is EXPECTED[(status, kind)]
    assert order.version == len(PATHS[status]) + 1


@pytest.mark.parametrize(("status", "kind"), sorted(NOTHING_TO_RECORD, key=str))
def test_update_already_reflected_records_nothing(status: OrderStatus, kind: str) -> None:
    order = given(*PATHS[status])
    assert when(order, ACTIONS[kind]) == []
    assert order.status is status


REFUSED = [
    (status, kind.value)
    for status in PATHS
    for kind in EventKind
    if kind is not EventKind.SUBMITTED and kind not in TRANSITIONS[status]
]


@pytest.mark.parametrize(("status", "kind"), REFUSED)
def test_transition_not_in_table_writes_nothing(status: OrderStatus, kind: str) -> None:
    """Anything the table does not admit is refused with a domain error, or (a repeated
    notice of what already happened, such as a second Cancelled) records nothing. It is
    never applied."""
    order = given(*PATHS[status])
    result = when(order, ACTIONS[kind])
    if isinstance(result, list):
        assert result == [], f"{kind} applied in {status}"
        assert (status.value, kind) in {
            ("TRIGGERED", "Triggered"),
            ("PARTIALLY_FILLED", "Triggered"),  # a stop with fills has obviously triggered
            ("CANCELLED", "Cancelled"),
            ("REJECTED", "Rejected"),
            ("EXPIRED", "Expired"),
            ("FILLED", "ModifyRejected"),
            ("FILLED", "CancelRejected"),
            ("CANCELLED", "ModifyRejected"),
            ("CANCELLED", "CancelRejected"),
            ("REJECTED", "ModifyRejected"),
            ("REJECTED", "CancelRejected"),
            ("EXPIRED", "ModifyRejected"),
            ("EXPIRED", "CancelRejected"),
            ("SUBMITTED", "ModifyRejected"),
        }
    elif (status, kind) == (S.FILLED, "Filled"):
        assert isinstance(result, Overfill), result  # the more telling refusal here
    else:
        assert isinstance(result, TransitionRefused), result
        assert status.value in str(result)
        assert kind in str(result)


# ----------------------------------------------------------------- the real-world cases


def test_fill_after_cancel_is_recorded_and_stays_cancelled() -> None:
    order = given(submitted(), accepted(), cancel_requested(), cancelled())
    events = when(order, ACTIONS["Filled"])
    assert [type(e) for e in events] == [Order.Filled]  # type: ignore[union-attr]
    assert order.status is S.CANCELLED
    assert order.filled_quantity == 10
    assert order.remaining_quantity == 0


def test_late_fills_that_complete_a_cancelled_order_make_it_filled() -> None:
    """If everything traded, the cancel never took effect."""
    order = given(submitted(), accepted(), filled("T1", 90), cancelled())
    when(order, ACTIONS["Filled"])
    assert order.status is S.FILLED


def test_rejected_cancel_goes_back_to_the_previous_state() -> None:
    order = given(submitted(), accepted(), filled("T1", 40), cancel_requested())
    assert status_of(order) is S.PENDING_CANCEL
    assert [type(e) for e in when(order, ACTIONS["CancelRejected"])] == [Order.CancelRejected]  # type: ignore[union-attr]
    assert order.status is S.PARTIALLY_FILLED


def test_rejected_modify_goes_back_and_keeps_the_old_terms() -> None:
    order = given(submitted(), accepted(), modify_requested(price=D("812.50")))
    assert status_of(order) is S.PENDING_MODIFY
    when(order, ACTIONS["ModifyRejected"])
    assert order.status is S.ACCEPTED
    assert order.price == D("812.35")


def test_repeated_cancel_request_is_recorded_again() -> None:
    order = given(submitted(), accepted(), cancel_requested())
    assert [type(e) for e in when(order, ACTIONS["CancelRequested"])] == [Order.CancelRequested]  # type: ignore[union-attr]
    assert order.status is S.PENDING_CANCEL


def test_ioc_from_submitted_straight_to_cancelled() -> None:
    order = given(submitted())
    when(order, ACTIONS["Cancelled"])
    assert order.status is S.CANCELLED


def test_fill_while_cancel_pending_moves_the_lifecycle_on() -> None:
    order = given(submitted(), accepted(), cancel_requested(), filled("T1", 100))
    assert order.status is S.FILLED
    assert when(order, ACTIONS["CancelRejected"]) == []  # nothing pending any more


def test_modified_applies_the_new_terms_and_clears_the_request() -> None:
    order = given(submitted(), accepted(), modify_requested(quantity=150), modified(quantity=150))
    assert order.status is S.ACCEPTED
    assert order.quantity == 150


def test_modified_from_outside_without_a_request() -> None:
    order = given(submitted(), accepted(), modified(price=D("812.40")))
    assert order.price == D("812.40")


def test_a_market_order_modified_to_limit_drops_its_market_protection() -> None:
    """Given a MARKET order modified to LIMIT, the same notice again decides nothing: the
    replayed order kept its market protection, so its terms never equalled the notice's
    and every repeat of it was written as another Modified event."""
    order = given(
        submitted(
            order_type=OrderType.MARKET, price=None, trigger_price=None, market_protection=D(-1)
        ),
        accepted(),
        modified(order_type=OrderType.LIMIT, price=D("812.40")),
    )
    assert (order.order_type, order.price, order.market_protection) == (
        OrderType.LIMIT,
        D("812.40"),
        None,
    )
    notice = OrderChanges(order_type=OrderType.LIMIT, price=D("812.40"))
    again = when(
        order,
        lambda o: o.record_modified(notice, source=Source.BROKER, broker_timestamp=None, at=NOW),
    )
    assert again == []


def test_modify_before_acceptance_is_refused_with_the_reason() -> None:
    result = when(given(submitted()), ACTIONS["ModifyRequested"])
    assert isinstance(result, TransitionRefused)
    assert "not accepted" in str(result)


def test_modify_while_cancel_pending_is_refused() -> None:
    result = when(given(submitted(), accepted(), cancel_requested()), ACTIONS["ModifyRequested"])
    assert isinstance(result, TransitionRefused)
    assert "cancellation is pending" in str(result)


def test_a_modify_asked_for_while_another_is_pending_carries_both() -> None:
    """The pending request may not have reached Kite yet, and only the latest is sent: a
    second request replaced the first, and the first's change was never sent, refused or
    recorded. It now takes the first in, its own fields over the first's."""
    order = given(submitted(), accepted(), modify_requested(price=D("813.00")))
    result = when(order, lambda o: o.request_modify(OrderChanges(quantity=200), actor="t", at=NOW))
    assert isinstance(result, list)
    assert [e.changes for e in result if isinstance(e, Order.ModifyRequested)] == [
        OrderChanges(quantity=200, price=D("813.00"))
    ]
    over = when(
        given(submitted(), accepted(), modify_requested(price=D("813.00"), quantity=200)),
        lambda o: o.request_modify(OrderChanges(price=D("813.05")), actor="t", at=NOW),
    )
    assert isinstance(over, list)
    assert [e.changes for e in over if isinstance(e, Order.ModifyRequested)] == [
        OrderChanges(quantity=200, price=D("813.05"))
    ]


def test_a_new_order_type_asked_for_while_a_modify_is_pending_names_its_own_prices() -> None:
    """A new type decides which prices exist: the pending request's price and trigger go,
    its quantity stays."""
    order = given(
        submitted(),
        accepted(),
        modify_requested(price=D("813.00"), trigger_price=D("812.50"), quantity=200),
    )
    result = when(
        order,
        lambda o: o.request_modify(
            OrderChanges(order_type=OrderType.LIMIT, price=D("812.00")), actor="t", at=NOW
        ),
    )
    assert isinstance(result, list)
    assert [e.changes for e in result if isinstance(e, Order.ModifyRequested)] == [
        OrderChanges(quantity=200, order_type=OrderType.LIMIT, price=D("812.00"))
    ]


def test_a_broker_change_that_does_not_carry_the_open_request_leaves_it_open() -> None:
    """Kite's own change (its web app) while the strategy's request is open: recorded,
    and the request still open; a change that carries it closes it."""
    order = given(submitted(), accepted(), modify_requested(price=D("813.00")))
    outside = when(
        order,
        lambda o: o.record_modified(
            OrderChanges(quantity=200), source=Source.BROKER, broker_timestamp=None, at=NOW
        ),
    )
    assert isinstance(outside, list)
    assert [e.closes_request for e in outside if isinstance(e, Order.Modified)] == [False]
    assert (order.quantity, order.status) == (200, S.PENDING_MODIFY)
    made = when(
        order,
        lambda o: o.record_modified(
            OrderChanges(price=D("813.00")), source=Source.BROKER, broker_timestamp=None, at=NOW
        ),
    )
    assert isinstance(made, list)
    assert [e.closes_request for e in made if isinstance(e, Order.Modified)] == [True]
    assert order.status is S.ACCEPTED


def test_a_version_2_modified_closes_the_open_request_as_it_always_did() -> None:
    state: dict[str, object] = {}
    Order.Modified.upcast_v2_v3(state)
    assert state == {"closes_request": True}


def test_modify_to_less_than_filled_is_refused() -> None:
    order = given(submitted(), accepted(), filled("T1", 40))
    result = when(order, lambda o: o.request_modify(OrderChanges(quantity=40), actor="t", at=NOW))
    assert isinstance(result, InvalidCommand)
    assert result.fields == ("quantity",)
    assert "40 already filled" in str(result)


def test_the_broker_cutting_the_quantity_to_what_has_filled_completes_the_order() -> None:
    """Kite reports an order cut to what has filled as COMPLETE; below that is impossible."""
    order = given(submitted(), accepted(), filled("T1", 40))
    below = when(
        order,
        lambda o: o.record_modified(
            OrderChanges(quantity=39), source=Source.BROKER, broker_timestamp=None, at=NOW
        ),
    )
    assert isinstance(below, InvalidCommand)
    assert "must not be less than the 40 already filled" in str(below)
    cut = when(
        order,
        lambda o: o.record_modified(
            OrderChanges(quantity=40), source=Source.BROKER, broker_timestamp=None, at=NOW
        ),
    )
    assert isinstance(cut, list)
    assert [type(e).__name__ for e in cut] == ["Modified"]
    assert (order.status, order.quantity, order.remaining_quantity) == (S.FILLED, 40, 0)
    replayed = given(
        submitted(), accepted(), cancel_requested(), filled("T1", 40), modified(quantity=40)
    )
    assert (replayed.status, replayed.pending) == (S.FILLED, None)


def test_modify_that_changes_nothing_is_refused() -> None:
    order = given(submitted(), accepted())
    result = when(
        order, lambda o: o.request_modify(OrderChanges(price=D("812.35")), actor="t", at=NOW)
    )
    assert isinstance(result, InvalidCommand)
    assert "already has these terms" in str(result)


def test_modify_to_a_price_off_the_tick_is_refused() -> None:
    order = given(submitted(), accepted())
    result = when(
        order, lambda o: o.request_modify(OrderChanges(price=D("812.33")), actor="t", at=NOW)
    )
    assert isinstance(result, InvalidCommand)
    assert "tick size 0.05" in str(result)


def test_modify_to_market_without_protection_is_refused() -> None:
    order = given(submitted(), accepted())
    result = when(
        order,
        lambda o: o.request_modify(OrderChanges(order_type=OrderType.MARKET), actor="t", at=NOW),
    )
    assert isinstance(result, InvalidCommand)
    assert "market protection" in str(result)


def test_a_stop_order_the_broker_turned_market_is_recorded_without_market_protection() -> None:
    """Market protection is the ledger's rule for the MARKET orders it sends; a stop order
    changed to MARKET at Kite carries none, and what the broker did is recorded."""
    order = given(submitted(), accepted())
    notice = OrderChanges(order_type=OrderType.MARKET)
    result = when(
        order,
        lambda o: o.record_modified(notice, source=Source.BROKER, broker_timestamp=None, at=NOW),
    )
    assert isinstance(result, list), result
    assert [type(e).__name__ for e in result] == ["Modified"]
    assert (order.order_type, order.price, order.trigger_price, order.market_protection) == (
        OrderType.MARKET,
        None,
        None,
        None,
    )


def test_an_order_the_broker_turned_market_can_still_be_modified() -> None:
    """A modification cannot carry market protection, so an order the broker turned MARKET
    (or SL-M) without any would refuse every modification for good; a request that keeps
    the type is not asked for what the order lacks. Changing to MARKET still is."""
    for broker_type, trigger in ((OrderType.MARKET, None), (OrderType.SL_M, D("812.00"))):
        order = given(submitted(), accepted())
        order.record_modified(
            OrderChanges(order_type=broker_type, trigger_price=trigger),
            source=Source.BROKER,
            broker_timestamp=None,
            at=NOW,
        )
        order.collect_events()
        for request in (
            OrderChanges(quantity=200),
            OrderChanges(quantity=300, order_type=broker_type, trigger_price=trigger),
        ):
            result = when(order, _requesting(request))
            assert isinstance(result, list), result
            assert [type(e).__name__ for e in result] == ["ModifyRequested"]
            order.record_modified(request, source=Source.BROKER, broker_timestamp=None, at=NOW)
            order.collect_events()
    limit = given(submitted(order_type=OrderType.LIMIT, trigger_price=None), accepted())
    refused = when(
        limit,
        lambda o: o.request_modify(
            OrderChanges(order_type=OrderType.MARKET), actor="strategy", at=NOW
        ),
    )
    assert isinstance(refused, InvalidCommand)
    assert "carries no market protection" in str(refused)


def _requesting(changes: OrderChanges) -> Callable[[Order], object]:
    return lambda order: order.request_modify(changes, actor="strategy", at=NOW)


def test_trigger_of_a_limit_order_is_refused() -> None:
    order = given(submitted(order_type=OrderType.LIMIT, trigger_price=None), accepted())
    result = when(order, ACTIONS["Triggered"])
    assert isinstance(result, TransitionRefused)
    assert "only SL and SL-M" in str(result)


def test_trigger_twice_records_once() -> None:
    order = given(submitted(), accepted(), triggered())
    assert when(order, ACTIONS["Triggered"]) == []


# ----------------------------------------------------------------- fills


def test_duplicate_trade_id_from_another_source_is_applied_once() -> None:
    order = given(submitted(), accepted(), filled("T1", 40))
    result = when(order, fill_action("T1", 40, source=Source.RECONCILIATION))
    assert result == []
    assert order.filled_quantity == 40


def test_overfill_is_refused_and_names_the_quantities() -> None:
    order = given(submitted(), accepted(), filled("T1", 95))
    result = when(order, fill_action("T2", 10))
    assert isinstance(result, Overfill)
    assert "95 of 100 already filled, 5 remaining" in str(result)
    assert order.filled_quantity == 95


def test_fill_for_another_instrument_is_refused() -> None:
    order = given(submitted(), accepted())
    result = when(order, fill_action("T1", 10, instrument=InstrumentRef(Exchange.BSE, "SBIN")))
    assert isinstance(result, InstrumentMismatch)
    assert "BSE:SBIN" in str(result)
    assert "NSE:SBIN" in str(result)


@pytest.mark.parametrize(
    ("quantity", "price"), [(0, "812.35"), (-5, "812.35"), (5, "0"), (5, "-1")]
)
def test_fill_with_bad_numbers_is_refused(quantity: int, price: str) -> None:
    order = given(submitted(), accepted())
    result = when(order, fill_action("T1", quantity, price))
    assert isinstance(result, InvalidCommand)


def test_average_price_is_the_exact_weighted_mean() -> None:
    order = given(submitted(), accepted(), filled("T1", 40, "2500"), filled("T2", 60, "2505"))
    assert order.average_price == D("2503")
    order = given(submitted(quantity=3), accepted(), filled("T1", 1, "1"), filled("T2", 2, "2"))
    assert order.filled_value == D("5")
    # A mean that does not terminate is exact to 34 significant digits; the notional is exact.
    assert order.average_price == D("1.666666666666666666666666666666667")


def test_fill_on_a_rejected_order_is_refused() -> None:
    result = when(given(submitted(), rejected()), ACTIONS["Filled"])
    assert isinstance(result, TransitionRefused)


def test_reject_after_fills_is_refused() -> None:
    result = when(given(submitted(), accepted(), filled("T1", 10)), ACTIONS["Rejected"])
    assert isinstance(result, TransitionRefused)
    assert "it has fills" in str(result)


def test_a_different_broker_order_id_is_refused() -> None:
    order = given(submitted(), accepted("B-1"))
    result = when(
        order,
        lambda o: o.accept(
            "B-2", exchange_order_id=None, broker_timestamp=None, source=Source.POLL, at=NOW
        ),
    )
    assert isinstance(result, BrokerIdMismatch)


def test_pending_states_are_cleared_by_terminal_events() -> None:
    order = given(submitted(), accepted(), modify_requested(price=D("812.5")), cancelled())
    assert order.status is S.CANCELLED
    assert order.pending is None
    order = given(submitted(), accepted(), cancel_requested(), cancel_rejected(), expired())
    assert order.status is S.EXPIRED
    order = given(submitted(), accepted(), modify_requested(price=D("812.5")), modify_rejected())
    assert order.status is S.ACCEPTED
