"""Order statuses and the explicit state transition table.

The table admits what happens in the real world, not only the happy path:

* a fill on an order already cancelled or expired (the trade happened at the exchange
  before the cancel took effect; Kite reports it afterwards);
* a cancel or modify request that the broker rejects: the order goes back to where it was;
* repeated cancel and modify requests (a retry after a timeout);
* an IOC order going from submitted straight to cancelled, or a market order from submitted
  straight to filled when the acceptance notice is overtaken by the fill;
* the broker's acceptance (with its order id) arriving after a fill or even after the order
  ended, because the placement reply lost the race against a postback;
* the broker cutting a partly filled order's quantity to what has filled, which completes
  it (a modification made at Kite).

A pending modify or cancel request is not a status of its own in the table: it is a flag
beside the lifecycle status, so that a fill while a cancel is pending moves the lifecycle on
and a rejected request simply clears the flag ("back to the previous state"). `Order.status`
shows PENDING_MODIFY / PENDING_CANCEL while a request is open.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from ledger.domain.errors import TransitionNotAdmitted


class OrderStatus(Enum):
    """Where an order stands. The first eight are lifecycle states; the PENDING_* two are
    shown while a modify or cancel request is open on an open order."""

    SUBMITTED = "SUBMITTED"
    ACCEPTED = "ACCEPTED"
    TRIGGERED = "TRIGGERED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    PENDING_MODIFY = "PENDING_MODIFY"
    PENDING_CANCEL = "PENDING_CANCEL"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_open(self) -> bool:
        return not self.is_terminal


class EventKind(Enum):
    """The kinds of order event, as the transition table names them."""

    SUBMITTED = "Submitted"
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    MODIFY_REQUESTED = "ModifyRequested"
    MODIFIED = "Modified"
    MODIFY_REJECTED = "ModifyRejected"
    TRIGGERED = "Triggered"
    FILLED = "Filled"
    CANCEL_REQUESTED = "CancelRequested"
    CANCELLED = "Cancelled"
    CANCEL_REJECTED = "CancelRejected"
    EXPIRED = "Expired"


class Target(Enum):
    """Targets the table gives that depend on the event's data rather than being fixed."""

    SAME = "same"  # the lifecycle status does not change
    BY_FILLED_QUANTITY = "by filled quantity"  # PARTIALLY_FILLED, or FILLED when complete
    LATE_FILL = "late fill"  # stays where it is, or FILLED if the late fill completes it
    #: stays where it is, or FILLED if the broker cut the quantity to what has filled
    CUT_TO_FILLED = "cut to filled"


S = OrderStatus
K = EventKind

OPEN: Final = frozenset({S.SUBMITTED, S.ACCEPTED, S.TRIGGERED, S.PARTIALLY_FILLED})
TERMINAL: Final = frozenset({S.FILLED, S.CANCELLED, S.REJECTED, S.EXPIRED})

_WORKING_ORDER: Final[dict[EventKind, OrderStatus | Target]] = {
    K.ACCEPTED: Target.SAME,  # acceptance notice overtaken by a trigger or fill
    K.MODIFY_REQUESTED: Target.SAME,
    K.MODIFIED: Target.SAME,
    K.MODIFY_REJECTED: Target.SAME,
    K.FILLED: Target.BY_FILLED_QUANTITY,
    K.CANCEL_REQUESTED: Target.SAME,
    K.CANCELLED: S.CANCELLED,
    K.CANCEL_REJECTED: Target.SAME,
    K.EXPIRED: S.EXPIRED,
}

#: (lifecycle status, event kind) -> next lifecycle status. Anything absent is refused.
TRANSITIONS: Final[dict[OrderStatus, dict[EventKind, OrderStatus | Target]]] = {
    S.SUBMITTED: {
        K.ACCEPTED: S.ACCEPTED,
        K.REJECTED: S.REJECTED,
        K.TRIGGERED: S.TRIGGERED,
        K.FILLED: Target.BY_FILLED_QUANTITY,
        K.CANCEL_REQUESTED: Target.SAME,  # sent once the broker has the order
        K.CANCEL_REJECTED: Target.SAME,
        K.CANCELLED: S.CANCELLED,  # IOC straight to cancelled
        K.EXPIRED: S.EXPIRED,
    },
    S.ACCEPTED: {
        **_WORKING_ORDER,
        K.ACCEPTED: Target.SAME,
        K.TRIGGERED: S.TRIGGERED,
        K.REJECTED: S.REJECTED,  # exchange or RMS reject after the broker took it
    },
    S.TRIGGERED: {
        **_WORKING_ORDER,
        K.REJECTED: S.REJECTED,
    },
    S.PARTIALLY_FILLED: {
        **_WORKING_ORDER,
        # Kite cuts an order's quantity to what has filled, and the order is complete.
        K.MODIFIED: Target.CUT_TO_FILLED,
    },
    S.FILLED: {
        K.ACCEPTED: Target.SAME,  # the broker's ids, learnt after the order ended
    },
    S.CANCELLED: {
        K.ACCEPTED: Target.SAME,
        K.FILLED: Target.LATE_FILL,
    },
    S.EXPIRED: {
        K.ACCEPTED: Target.SAME,
        K.FILLED: Target.LATE_FILL,
    },
    S.REJECTED: {
        K.ACCEPTED: Target.SAME,
    },
}


def admits(status: OrderStatus, kind: EventKind) -> bool:
    """Whether the table admits an event of `kind` in lifecycle `status`."""
    return kind in TRANSITIONS.get(status, {})


def next_status(
    status: OrderStatus, kind: EventKind, *, filled_quantity: int, quantity: int
) -> OrderStatus:
    """The lifecycle status after an event of `kind`, given the quantities *after* it.

    Raises `TransitionNotAdmitted` (a `KeyError`) for a transition the table does not
    admit: commands check `admits` first and raise a domain error that names the order,
    so only a replay of stored events meets it.
    """
    target = TRANSITIONS.get(status, {}).get(kind)
    if target is None:
        raise TransitionNotAdmitted(status.value, kind.value)
    if target is Target.SAME:
        return status
    if target is Target.BY_FILLED_QUANTITY:
        return S.FILLED if filled_quantity >= quantity else S.PARTIALLY_FILLED
    if target is Target.LATE_FILL or target is Target.CUT_TO_FILLED:
        return S.FILLED if filled_quantity >= quantity else status
    assert isinstance(target, OrderStatus)
    return target
