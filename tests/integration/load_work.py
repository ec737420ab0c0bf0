"""The load test's unit of work, shared by writer threads and writer processes."""

from __future__ import annotations

from ledger.application import OrderLedger
from tests.support import accepted, fill, submit_command


def issue(ledger: OrderLedger, tag: str, commands: int) -> list[str]:
    """Issue `commands` commands (4 per order) and return the client order ids of the
    orders whose four commands were all acknowledged."""
    acknowledged = []
    for n in range(max(commands // 4, 1)):
        client_order_id = f"{tag}-{n}"
        order = ledger.submit(submit_command(client_order_id=client_order_id, quantity=100))
        ledger.record(accepted(order, f"B-{client_order_id}"))
        ledger.record(fill(order, f"T-{client_order_id}-a", 40, "812.30"))
        ledger.record(fill(order, f"T-{client_order_id}-b", 60, "812.35"))
        acknowledged.append(client_order_id)
    return acknowledged
