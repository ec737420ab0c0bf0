"""Random trading flows for property tests: intents driven through the real service."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from ledger.application import OrderLedger
from ledger.commands import (
    CancelOrder,
    ModifyOrder,
    RecordAccepted,
    RecordCancelled,
    RecordFill,
    RecordRejected,
    SubmitOrder,
)
from ledger.domain.errors import LedgerError
from ledger.domain.identity import order_id_for
from ledger.domain.values import Exchange, OrderType, Product

INSTRUMENTS = [
    ("SBIN", Decimal("0.05"), 800),
    ("INFY", Decimal("0.1"), 1900),
    ("RELIANCE", Decimal("0.1"), 1450),
]


@dataclass(frozen=True)
class Intent:
    kind: str
    order: int
    args: tuple[Any, ...] = ()


def intents(max_orders: int = 6) -> st.SearchStrategy[list[Intent]]:
    order = st.integers(min_value=0, max_value=max_orders - 1)
    submit = st.builds(
        lambda o, side, qty, inst, strategy: Intent("submit", o, (side, qty, inst, strategy)),
        order,
        st.sampled_from(["BUY", "SELL"]),
        st.integers(min_value=1, max_value=200),
        st.integers(min_value=0, max_value=len(INSTRUMENTS) - 1),
        st.sampled_from(["alpha", "beta", None]),
    )
    fill = st.builds(
        lambda o, trade, qty, ticks: Intent("fill", o, (trade, qty, ticks)),
        order,
        st.integers(min_value=0, max_value=4),
        st.integers(min_value=1, max_value=120),
        st.integers(min_value=-40, max_value=40),
    )
    simple = st.builds(
        Intent,
        st.sampled_from(["accept", "cancel", "cancelled", "reject", "modify"]),
        order,
    )
    return st.lists(st.one_of(submit, fill, fill, simple), min_size=1, max_size=40)


def drive(ledger: OrderLedger, plan: list[Intent], account: str = "AB1234") -> int:
    """Carry out the intents; refusals are part of the flow. Returns commands recorded."""
    recorded = 0
    for intent in plan:
        client_order_id = f"o{intent.order}"
        order_id = order_id_for(account, client_order_id)
        try:
            if intent.kind == "submit":
                side, qty, inst, strategy = intent.args
                symbol, tick, price = INSTRUMENTS[inst]
                ledger.submit(
                    SubmitOrder(
                        account=account,
                        client_order_id=client_order_id,
                        exchange=Exchange.NSE,
                        tradingsymbol=symbol,
                        side=side,
                        quantity=qty,
                        order_type=OrderType.LIMIT,
                        product=Product.CNC,
                        price=Decimal(price),
                        reference_price=Decimal(price),
                        strategy=strategy,
                    )
                )
            elif intent.kind == "accept":
                ledger.record(RecordAccepted(order_id=order_id, broker_order_id=f"B{intent.order}"))
            elif intent.kind == "fill":
                trade, qty, ticks = intent.args
                order = ledger.get_order(order_id)
                symbol = order.instrument.tradingsymbol
                tick = next(t for s, t, _ in INSTRUMENTS if s == symbol)
                base = next(p for s, _, p in INSTRUMENTS if s == symbol)
                ledger.record(
                    RecordFill(
                        order_id=order_id,
                        trade_id=f"{intent.order}-{trade}",
                        exchange=Exchange.NSE,
                        tradingsymbol=symbol,
                        quantity=qty,
                        price=Decimal(base) + ticks * tick,
                        charges=Decimal("0.01") * qty,
                    )
                )
            elif intent.kind == "cancel":
                ledger.request_cancel(CancelOrder(order_id=order_id))
            elif intent.kind == "cancelled":
                ledger.record(RecordCancelled(order_id=order_id))
            elif intent.kind == "reject":
                ledger.record(RecordRejected(order_id=order_id, reason="rms"))
            elif intent.kind == "modify":
                ledger.request_modify(ModifyOrder(order_id=order_id, quantity=250))
            recorded += 1
        except LedgerError:
            continue
    return recorded
