"""Polling alone converges a modification made at Kite (its web app, another tool) to an
order the ledger already has: found by the kill-point tests, where no postback prompts it."""

from __future__ import annotations

from decimal import Decimal

from ledger.application import OrderLedger
from ledger.kite.sandbox import KiteSandbox
from tests.kite_support import client, gateway_for, place_at_kite, submit


def test_poll_records_a_price_changed_at_kite(ledger: OrderLedger) -> None:
    with KiteSandbox(seed=11) as sandbox:
        kite = client(sandbox)
        gateway = gateway_for(ledger, sandbox)
        outside = place_at_kite(kite, quantity=5, price="800.00", tag="outside")
        own = submit(ledger, "own", quantity=5, price="800.00")
        gateway.dispatch()
        gateway.poll()  # adopts the outside order
        adopted = ledger.find_order("ZD1234", f"kite-{outside}")
        broker_id = ledger.get_order(own.id).broker_order_id
        assert broker_id is not None
        assert adopted.price == Decimal("800.00")

        kite.modify_order(variety="regular", order_id=outside, price="801.00")
        kite.modify_order(variety="regular", order_id=broker_id, price="799.50")
        gateway.poll()  # no postback, no WebSocket: polling must see it

        assert ledger.get_order(adopted.id).price == Decimal("801.00")
        assert ledger.get_order(own.id).price == Decimal("799.50")
        before = ledger.count_events()
        gateway.poll()
        assert ledger.count_events() == before  # and then nothing more
