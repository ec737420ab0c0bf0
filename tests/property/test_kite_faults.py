"""Whatever faults hit the update channels (hypothesis picks how many postbacks and
WebSocket updates are dropped, duplicated or reordered), the ledger ends where it ends with
clean delivery, and equal to the broker's books. SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.application import OrderLedger
from ledger.kite.sandbox import Faults, KiteSandbox
from tests.kite_support import (
    assert_matches_sandbox,
    gateway_for,
    ledger_state,
    running_service,
    settle,
    trading_session,
)


def run(ledger: OrderLedger, prefix: str, faults: Faults) -> dict[str, Any]:
    with KiteSandbox(seed=5) as sandbox:
        gateway = gateway_for(ledger, sandbox)
        sandbox.faults = faults
        with running_service(gateway, sandbox) as service:
            trading_session(ledger, sandbox, gateway, prefix)
            sandbox.wait_for_updates()
            service.worker.drain()
            settle(sandbox, gateway)
            assert_matches_sandbox_for(ledger, sandbox, prefix)
            return ledger_state(ledger, prefix)


def assert_matches_sandbox_for(ledger: OrderLedger, sandbox: KiteSandbox, prefix: str) -> None:
    """The broker's books against this run's orders (the ledger holds other runs too)."""
    mine = [o for o in ledger.all_orders() if o.client_order_id.startswith(prefix)]
    assert {o.broker_order_id for o in mine} == set(sandbox.orders)

    class OnlyMine:
        def all_orders(self) -> list[Any]:
            return mine

    assert_matches_sandbox(OnlyMine(), sandbox)  # type: ignore[arg-type]


def test_faulty_delivery_converges_like_clean_delivery(make_ledger: Any) -> None:
    ledger = make_ledger()
    clean = run(ledger, "clean-", Faults())
    runs = itertools.count()

    @settings(max_examples=4, deadline=None)
    @given(
        drop=st.floats(min_value=0.0, max_value=0.7),
        duplicate=st.floats(min_value=0.0, max_value=0.7),
        reorder=st.booleans(),
    )
    def with_faults(drop: float, duplicate: float, reorder: bool) -> None:
        faults = Faults(drop_updates=drop, duplicate_updates=duplicate, reorder_updates=reorder)
        assert run(ledger, f"f{next(runs)}-", faults) == clean

    with_faults()
