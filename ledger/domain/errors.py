"""Domain errors. Every refusal says what was wrong in words a trader can act on.

All of them derive from `LedgerError`, so a caller can catch the whole family; the ones that
are about bad input also derive from `ValueError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID


class LedgerError(Exception):
    """Base class of every error the ledger raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a command: the field it concerns and the rule it broke."""

    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class InvalidCommand(LedgerError, ValueError):
    """A command was refused before anything was written. Names every field and rule."""

    def __init__(self, command: str, problems: Sequence[Problem]) -> None:
        self.command = command
        self.problems = tuple(problems)
        details = "; ".join(str(p) for p in self.problems)
        super().__init__(f"{command} refused: {details}")

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(p.field for p in self.problems)


class UnknownInstrument(LedgerError, ValueError):
    """The instrument is not in the reference data the ledger was given."""

    def __init__(self, instrument: str) -> None:
        self.instrument = instrument
        super().__init__(
            f"instrument: unknown instrument {instrument!r} (not in the instruments reference data)"
        )


class OrderNotFound(LedgerError, LookupError):
    """No order with that id exists (or existed at the instant asked about)."""

    def __init__(self, order_id: UUID | str, detail: str = "") -> None:
        self.order_id = order_id
        suffix = f" {detail}" if detail else ""
        super().__init__(f"order {order_id}: no such order{suffix}")


class TransitionRefused(LedgerError):
    """The state machine does not admit this event in the order's current state."""

    def __init__(self, order_id: UUID, status: str, event: str, why: str = "") -> None:
        self.order_id = order_id
        self.status = status
        self.event = event
        reason = f": {why}" if why else ""
        super().__init__(
            f"order {order_id}: {event} is not allowed when status is {status}{reason}"
        )


class Overfill(LedgerError, ValueError):
    """A fill would take the filled quantity past the order quantity."""

    def __init__(
        self, order_id: UUID, trade_id: str, quantity: int, filled: int, ordered: int
    ) -> None:
        self.order_id = order_id
        self.trade_id = trade_id
        super().__init__(
            f"order {order_id}: quantity: fill {trade_id} of {quantity} would overfill the order"
            f" ({filled} of {ordered} already filled, {ordered - filled} remaining)"
        )


class InstrumentMismatch(LedgerError, ValueError):
    """A broker update names a different instrument from the order's."""

    def __init__(self, order_id: UUID, expected: str, got: str) -> None:
        super().__init__(
            f"order {order_id}: instrument: update is for {got}, the order is for {expected}"
        )


class ClientOrderIdReused(LedgerError, ValueError):
    """The same (account, client order id) was submitted again with different terms."""

    def __init__(self, account: str, client_order_id: str, differences: Sequence[str]) -> None:
        super().__init__(
            f"client_order_id: {client_order_id!r} of account {account!r} already names an order"
            f" with different terms ({', '.join(differences)})"
        )


class BrokerIdMismatch(LedgerError, ValueError):
    """The broker reported a different order id for an order that already has one."""

    def __init__(self, order_id: UUID, known: str, got: str) -> None:
        super().__init__(
            f"order {order_id}: broker_order_id: already accepted as {known!r}, update says {got!r}"
        )


class ConcurrencyConflict(LedgerError):
    """Other writers kept changing the order; the command was retried and gave up."""

    def __init__(self, order_id: UUID, attempts: int) -> None:
        super().__init__(
            f"order {order_id}: gave up after {attempts} attempts: other writers kept changing it"
        )


class TransitionNotAdmitted(LedgerError, KeyError):
    """A stored event the lifecycle table does not admit where it stands: the log was
    altered, or written past the ledger's rules. Raised while replaying (commands check
    the table first and refuse with `TransitionRefused`); `kite-ledger verify` names the
    event. A KeyError too, as the table's own lookup raised before."""

    def __init__(self, status: str, kind: str) -> None:
        super().__init__(status, kind)
        self.message = (
            f"a {kind} event is not admitted after {status}: the stored events do not"
            " replay (altered, or written past the ledger's rules);"
            " `kite-ledger verify` names the event"
        )

    def __str__(self) -> str:
        return self.message
