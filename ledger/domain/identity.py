"""Deterministic identities.

An order's id is derived from (account, client order id), so a strategy that retries a
submission after a timeout finds the order it already made instead of making a second one.
The Kite `tag` (at most 20 characters) carries a short form of that id to the broker, so the
dispatcher can find an order at Kite after a crash without knowing Kite's order id.
"""

from __future__ import annotations

from typing import Final
from uuid import UUID, uuid5

#: Fixed forever: changing it would change every order id.
ORDER_NAMESPACE: Final = UUID("8f1d5c1e-52b4-4b0e-9a43-6c2b8f0e7d31")
TAG_PREFIX: Final = "KL"


def order_id_for(account: str, client_order_id: str) -> UUID:
    """The order id for a strategy's client order id within an account."""
    return uuid5(ORDER_NAMESPACE, f"order/{account}/{client_order_id}")


def tag_for(order_id: UUID) -> str:
    """The 20-character Kite tag derived from an order id ("KL" + 18 hex digits, 72 bits)."""
    return TAG_PREFIX + order_id.hex[:18]
