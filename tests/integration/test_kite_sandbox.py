"""The sandbox's API through the official client: envelopes, statuses, quotes, faults;
and the gateway's handling of a modify Kite refuses and of a sandbox that went away."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal

import pytest
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors

from ledger.application import OrderLedger
from ledger.commands import ModifyOrder
from ledger.domain.status import OrderStatus
from ledger.kite.sandbox import KiteSandbox
from tests.kite_support import client, gateway_for, place_at_kite, submit


@pytest.fixture
def sandbox() -> Iterator[KiteSandbox]:
    with KiteSandbox(seed=13) as box:
        yield box


def test_envelopes_and_statuses(sandbox: KiteSandbox) -> None:
    kite = client(sandbox)
    with pytest.raises(kite_errors.TokenException) as token:
        KiteConnect("wrong", "keys", root=sandbox.root).orders()
    assert token.value.code == 403
    with pytest.raises(kite_errors.InputException, match="Missing quantity") as bad:
        place_at_kite(kite, quantity=None)
    assert bad.value.code == 400
    with pytest.raises(kite_errors.InputException, match="tick size"):
        place_at_kite(kite, quantity=1, price="812.33")
    sandbox.faults.rate_limit_next = 1
    with pytest.raises(kite_errors.NetworkException) as limited:
        kite.orders()
    assert limited.value.code == 429
    assert kite.ltp("NSE:SBIN") == {"NSE:SBIN": {"instrument_token": 779521, "last_price": 812.35}}
    quote = kite.quote("NSE:SBIN")["NSE:SBIN"]
    assert quote["lower_circuit_limit"] < 812.35 < quote["upper_circuit_limit"]


def test_order_history_shows_kites_transient_statuses(sandbox: KiteSandbox) -> None:
    kite = client(sandbox)
    order_id = place_at_kite(
        kite, quantity=10, order_type="SL", price="820.0", trigger_price="819.0"
    )
    kite.modify_order(variety="regular", order_id=order_id, price="821.0")
    kite.cancel_order(variety="regular", order_id=order_id)
    statuses = [h["status"] for h in kite.order_history(order_id)]
    assert statuses == [
        "PUT ORDER REQ RECEIVED",
        "VALIDATION PENDING",
        "OPEN PENDING",
        "TRIGGER PENDING",
        "MODIFY VALIDATION PENDING",
        "MODIFY PENDING",
        "MODIFIED",
        "TRIGGER PENDING",
        "CANCEL PENDING",
        "CANCELLED",
    ]
    with pytest.raises(kite_errors.OrderException, match="cannot be cancelled"):
        kite.cancel_order(variety="regular", order_id=order_id)


def test_a_modify_kite_refuses_is_recorded(ledger: OrderLedger, sandbox: KiteSandbox) -> None:
    gateway = gateway_for(ledger, sandbox)
    order = submit(ledger, "m", quantity=10, price="800.00")
    gateway.dispatch()
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("801.00")))
    # Kite refuses prices off its tick: give the sandbox's copy of the order a coarser one.
    sim = sandbox.orders[ledger.get_order(order.id).broker_order_id or ""]
    sim.instrument = replace(sim.instrument, tick_size=Decimal("5"))
    gateway.dispatch()
    refused = ledger.get_order(order.id)
    assert refused.status is OrderStatus.ACCEPTED
    assert refused.price == Decimal("800.00")
    assert [type(e).__name__ for e in ledger.history(order.id)][-1] == "ModifyRejected"


def test_a_modify_the_exchange_refuses_after_kite_took_it_is_recorded_refused(
    ledger: OrderLedger, sandbox: KiteSandbox
) -> None:
    """Over HTTP, through the official client: Kite answers the modify call with success,
    then the exchange refuses the change. One ModifyRejected with the exchange's reason;
    no Modified, the price as it was, and the strategy may modify again."""
    gateway = gateway_for(ledger, sandbox)
    order = submit(ledger, "m-x", quantity=10, price="800.00")
    gateway.dispatch()
    sandbox.faults.refuse_modifications = 1
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("801.00")))
    gateway.dispatch()
    refused = ledger.get_order(order.id)
    assert (refused.price, refused.pending) == (Decimal("800.00"), None)
    events = list(ledger.history(order.id))
    assert [type(e).__name__ for e in events][-2:] == ["ModifyRequested", "ModifyRejected"]
    assert "rejected by the exchange" in getattr(events[-1], "reason", "")
    ledger.request_modify(ModifyOrder(order_id=order.id, price=Decimal("801.00")))
    gateway.dispatch()
    assert ledger.get_order(order.id).price == Decimal("801.00")
    assert [type(e).__name__ for e in ledger.history(order.id)][-1] == "Modified"


def test_a_placement_refused_for_margin_is_rejected_and_not_sent_again(
    ledger: OrderLedger, sandbox: KiteSandbox
) -> None:
    """Kite refuses for margin with error type MarginException, for which the official
    client has no class: it raises GeneralException with the HTTP status, 400. Taken for an
    unknown outcome, the order stayed SUBMITTED and was placed again every grace, to go
    through whenever margin freed up, hours later. A 4xx is Kite's refusal."""
    now = [1_800_000_000.0]
    gateway = gateway_for(ledger, sandbox, clock=lambda: now[0], unknown_outcome_grace=3.0)
    sandbox.faults.short_of_margin = 1
    order = submit(ledger, "margin", quantity=10, price="800.00")
    report = gateway.dispatch()
    assert report.rejected == [order.id]
    refused = ledger.get_order(order.id)
    assert refused.status is OrderStatus.REJECTED
    assert refused.reason is not None
    assert "Insufficient funds" in refused.reason
    for _ in range(3):
        now[0] += 10
        gateway.dispatch()
    assert sandbox.orders == {}


def test_a_sandbox_that_went_away_is_an_unknown_outcome(
    ledger: OrderLedger, sandbox: KiteSandbox
) -> None:
    gateway = gateway_for(ledger, sandbox)
    order = submit(ledger, "away", quantity=10, price="800.00")
    sandbox.faults.down_until = time.monotonic() + 0.5
    assert gateway.dispatch().unknown_outcome == [order.id]
    time.sleep(0.6)
    gateway.dispatch()  # looks the tag up: not there (it never arrived), so it sends
    time.sleep(0.3)
    gateway.dispatch()
    assert len(sandbox.orders) == 1
    assert ledger.get_order(order.id).status is OrderStatus.ACCEPTED


def test_a_websocket_client_gone_without_closing_is_no_error(
    sandbox: KiteSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that went away without the closing handshake (a killed `serve`, a cut
    network) printed two tracebacks ('connection handler failed') from the sandbox."""
    import logging
    import socket

    from websockets.sync.client import connect

    caplog.set_level(logging.DEBUG)
    url = f"{sandbox.ws_root}/?api_key={sandbox.api_key}&access_token={sandbox.access_token}"
    connection = connect(url)
    connection.socket.shutdown(socket.SHUT_RDWR)  # no close frame, as a killed process
    connection.socket.close()
    time.sleep(0.5)
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert failed == [], [r.getMessage() for r in failed]
