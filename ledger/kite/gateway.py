"""The Kite gateway: places orders exactly once and converges the ledger to what Kite says.

Placement is a transactional outbox. `Submitted` is durable in the log first; the
dispatcher then notes in the outbox that it is about to send (durably), sends through the
official `kiteconnect` client with the order's tag, and records the reply as `Accepted` or
`Rejected`. After a timeout, an error whose outcome is unknown, or a crash, the next pass
finds the outbox note and looks the tag up at Kite before it would ever send again. The
note is a lease, renewed while the send lasts: another dispatcher waits while a send may
still reach Kite, and takes over from one that died once its lease has run out.

Every update, whatever the channel (postback, WebSocket, polling, reconciliation), is only
a prompt: the gateway fetches the order's history and trades and records what the ledger
does not have yet. The order aggregate ignores what it already knows (the same trade id,
the same acceptance), so duplicates, repeats and updates out of order change nothing twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

from kiteconnect import exceptions as kite_errors

from ledger.application import OrderLedger
from ledger.charges import ChargesDataError, ChargesSchedule
from ledger.commands import (
    RecordAccepted,
    RecordCancelled,
    RecordCancelRejected,
    RecordExpired,
    RecordFill,
    RecordModified,
    RecordModifyRejected,
    RecordRejected,
    RecordTriggered,
    SubmitOrder,
)
from ledger.domain.errors import LedgerError, OrderNotFound
from ledger.domain.order import Order
from ledger.domain.status import EventKind, OrderStatus
from ledger.domain.values import (
    IST,
    Exchange,
    InstrumentRef,
    OrderChanges,
    OrderType,
    Source,
    Validity,
    Variety,
)
from ledger.kite.limiter import RateLimiter
from ledger.kite.outbox import Attempt, Outbox
from ledger.kite.payloads import (
    KiteOrder,
    KitePayloadError,
    KiteTrade,
    parse_each_order,
    parse_each_trade,
    parse_orders,
    parse_trades,
)

log = logging.getLogger(__name__)

#: Errors after which Kite may or may not have acted: look before acting again.
UNKNOWN_OUTCOME: tuple[type[BaseException], ...] = (
    OSError,  # requests' ConnectionError and Timeout derive from it
    kite_errors.NetworkException,
    kite_errors.GeneralException,
    kite_errors.DataException,
)
#: Seconds a send's lease adds to the client's own timeout (one try of one request).
LEASE_MARGIN = 5.0
#: Sends of a request that Kite refuses as "being processed" before the refusal stands.
BUSY_TRIES = 6


def _same_instrument_and_side(order: Order, broker_order: KiteOrder) -> bool:
    """Whether a broker order could be this ledger order's placement by what it trades."""
    return (
        broker_order.exchange == order.instrument.exchange.value
        and broker_order.tradingsymbol == order.instrument.tradingsymbol
        and broker_order.transaction_type == order.side.value
    )


class LeaseLost(Exception):
    """A send's claim ran out while it waited (for the rate limiter) and another
    dispatcher claimed the request: this one must not send it."""


class _Lease:
    """The claim on sending one request, renewed before each try (after any wait for the
    rate limiter) so that it always outlasts the try in flight: nobody else sends the
    request while this send may still reach Kite, and a dispatcher that dies mid-send
    holds it only until its lease runs out."""

    def __init__(self, gateway: KiteGateway, key: str, request: str, version: int) -> None:
        self.gateway, self.key, self.request, self.version = gateway, key, request, version
        self.until = gateway.clock() + gateway.send_lease

    def renew(self) -> None:
        until = self.gateway.clock() + self.gateway.send_lease
        if not self.gateway.outbox.extend(self.key, self.request, self.version, self.until, until):
            raise LeaseLost(f"{self.request} of {self.key}: claimed by another dispatcher")
        self.until = until

    def release(self) -> None:
        self.gateway.outbox.release(
            self.key, self.request, self.version, self.until, self.gateway.clock()
        )

    @contextmanager
    def kept(self) -> Iterator[None]:
        """Renewed every third of its length while a try is in flight: the client's
        timeout bounds each wait on the socket, not the whole request, so a try may
        outlast it."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.gateway.send_lease / 3):
                try:
                    self.renew()
                except Exception:
                    log.exception(
                        "%s of %s: its lease could not be renewed", self.request, self.key
                    )
                    return

        keeper = threading.Thread(target=beat, name="outbox-lease", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join()


class KiteRefusal(kite_errors.KiteException):  # type: ignore[misc]
    """Kite refused the request with an error type the official client has no class for
    (MarginException, HoldingException, UserException...): it raises those as
    `GeneralException` with the HTTP status, and a 4xx one is a refusal, not an unknown
    outcome. `call` raises this in its place, with Kite's message."""


#: Errors that say Kite refused the request itself.
REFUSED: tuple[type[BaseException], ...] = (
    kite_errors.InputException,
    kite_errors.OrderException,
    KiteRefusal,
)


#: Kite's statuses whose records show the order's terms as they stand. A record in any
#: other status is written while a request is in flight and shows the terms from before it:
#: after modify_order, MODIFY VALIDATION PENDING / MODIFY PENDING / MODIFIED still carry the
#: old terms until the exchange confirms (Kite's sample order_info.json); the pre-open ones
#: (PUT ORDER REQ RECEIVED, VALIDATION PENDING, OPEN PENDING) the terms submitted. A converge
#: whose history ends in one of those records no terms: the next record will say them.
SETTLED_STATUSES: Final = frozenset(
    {"OPEN", "TRIGGER PENDING", "AMO REQ RECEIVED", "COMPLETE", "CANCELLED", "REJECTED"}
)

#: Kite's statuses before it (and the exchange) have taken an order.
PRE_OPEN_STATUSES: Final = frozenset(
    {"PUT ORDER REQ RECEIVED", "VALIDATION PENDING", "OPEN PENDING"}
)

#: Kite's order types that wait for a trigger.
STOP_TYPES: Final = frozenset(t.value for t in OrderType if t.needs_trigger_price)

#: Settled statuses of an order that still works at the exchange.
WORKING_STATUSES: Final = frozenset({"OPEN", "TRIGGER PENDING", "AMO REQ RECEIVED"})

#: The records Kite's history gains when it takes a cancellation, and a modification.
CANCEL_RECORDS: Final = frozenset({"CANCEL PENDING"})
MODIFY_RECORDS: Final = frozenset({"MODIFY VALIDATION PENDING", "MODIFY PENDING"})

#: Orders placed outside the ledger and adopted from Kite's book are named `kite-<order id>`.
ADOPTED_PREFIX = "kite-"
ADOPTED_ACTOR = "external"


def adopted_from(order: Order) -> str | None:
    """The Kite order id an adopted order was adopted from; None for the ledger's own."""
    if order.actor == ADOPTED_ACTOR and order.client_order_id.startswith(ADOPTED_PREFIX):
        return order.client_order_id.removeprefix(ADOPTED_PREFIX)
    return None


class GatewayError(LedgerError):
    """The gateway cannot go on (credentials refused, rate limited beyond retries)."""


@dataclass
class ConvergeResult:
    broker_order_id: str
    order_id: UUID | None
    recorded: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class DispatchReport:
    placed: list[UUID] = field(default_factory=list)
    found_at_broker: list[UUID] = field(default_factory=list)
    rejected: list[UUID] = field(default_factory=list)
    unknown_outcome: list[UUID] = field(default_factory=list)
    cancels_sent: list[UUID] = field(default_factory=list)
    modifies_sent: list[UUID] = field(default_factory=list)
    #: Orders whose dispatch raised (logged), each with the error.
    failed: list[str] = field(default_factory=list)


@dataclass
class OrdersReconciliation:
    """What a reconciliation of orders and trades found and did."""

    broker_orders: int = 0
    adopted: list[str] = field(default_factory=list)
    recorded: int = 0
    problems: list[str] = field(default_factory=list)
    #: Where the ledger and Kite still disagree on an order after converging.
    differences: list[str] = field(default_factory=list)
    #: Orders recorded Expired: working in the ledger when their trading day ended (the
    #: gateway missed their end), and gone from Kite's order book since.
    expired: list[str] = field(default_factory=list)


class KiteGateway:
    """Between one ledger and one Kite account."""

    def __init__(
        self,
        ledger: OrderLedger,
        kite: Any,
        *,
        outbox: Outbox,
        account: str,
        limiter: RateLimiter | None = None,
        charges: ChargesSchedule | None = None,
        unknown_outcome_grace: float = 10.0,
        request_timeout: float = 60.0,
        send_lease: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.kite = kite
        self.outbox = outbox
        self.account = account
        self.limiter = limiter or RateLimiter()
        self.charges = charges if charges is not None else ChargesSchedule.bundled()
        # How long after a send of unknown outcome Kite's book is trusted to show the
        # order if the send reached it: a placement Kite books later than that is sent
        # again (a duplicate, reported when it turns up), so it errs long.
        self.grace = unknown_outcome_grace
        # How long a modification Kite took may go unseen in its order history before it
        # is taken as not made (ModifyRejected), so that the order's terms converge again.
        self.request_timeout = request_timeout
        # A send's lease: the client's timeout (kiteconnect's default is 7 s; requests also
        # takes a (connect, read) pair) and a margin; renewed while the send lasts.
        timeout = getattr(kite, "timeout", None) or 7
        if isinstance(timeout, tuple | list):
            timeout = sum(t for t in timeout if t)
        self.send_lease = send_lease if send_lease is not None else float(timeout) + LEASE_MARGIN
        self.clock = clock
        self._lock = threading.RLock()
        self._dispatching = threading.Lock()
        # A tag's orders: one each since tags are the ledger's own; orders written before
        # may share a label.
        self._by_tag: dict[str, set[UUID]] = {}
        self._by_broker_id: dict[str, UUID] = {}
        self._broker_by_order: dict[UUID, str] = {}
        self._open: dict[UUID, Order] = {}
        self._position = 0
        # Reads of Kite's order history are numbered as they start; per order, the number
        # of the read whose terms the ledger took last (or, for the ledger's own
        # modification, a number taken once Kite had taken it). See `_converge`.
        self._fetches = 0
        self._terms_as_of: dict[UUID, int] = {}
        #: When each sent cancellation's or modification's outcome was last looked up at
        #: Kite (the count of its records before the send is kept in the outbox).
        self._outcome_checked: dict[UUID, float] = {}
        self.refresh_index()

    # ------------------------------------------------------------------ plumbing

    def refresh_index(self) -> None:
        """Read the log from where the gateway last read it: learn new orders' tags and
        broker ids, and keep the orders that are still open (what dispatch looks at).
        Incremental, so the dispatcher's frequent passes cost only what is new."""
        with self._lock:
            after = self._position
            while True:
                notifications = self.ledger.recorder.select_notifications(
                    start=after, limit=1000, inclusive_of_start=False
                )
                if not notifications:
                    break
                for notification in notifications:
                    event = self.ledger.mapper.to_domain_event(notification)
                    if not isinstance(event, Order.Event):
                        continue
                    current = self._open.get(event.originator_id)
                    if current is None and not isinstance(event, Order.Submitted):
                        continue  # an order that had ended: its ids are already known
                    order = event.mutate(current)
                    assert isinstance(order, Order)
                    self._remember(order)
                    if order.lifecycle.is_terminal:
                        self._open.pop(order.id, None)
                    else:
                        self._open[order.id] = order
                after = notifications[-1].id
            self._position = after

    def open_orders(self) -> list[Order]:
        """Orders still working, as of the log's latest event, oldest first."""
        self.refresh_index()
        with self._lock:
            return list(self._open.values())

    def _remember(self, order: Order) -> None:
        self._by_tag.setdefault(order.tag, set()).add(order.id)
        if order.broker_order_id:
            self._by_broker_id[order.broker_order_id] = order.id
            self._broker_by_order[order.id] = order.broker_order_id

    def call(self, method: str, *args: Any, lease: _Lease | None = None, **kwargs: Any) -> Any:
        """A rate-limited call through the official client; backs off and retries on 429.
        A send's `lease` is renewed before each try (`LeaseLost` if it ran out meanwhile)."""
        family = self.limiter.family_of(method)
        for attempt in range(6):
            self.limiter.acquire(family)
            if lease is not None:
                lease.renew()
            try:
                with lease.kept() if lease is not None else nullcontext():
                    return getattr(self.kite, method)(*args, **kwargs)
            except kite_errors.NetworkException as error:
                if getattr(error, "code", None) != 429:
                    raise
                self.limiter.back_off(family, min(0.5 * 2**attempt, 8.0))
            except (kite_errors.TokenException, kite_errors.PermissionException) as error:
                raise GatewayError(f"Kite refused the credentials: {error}") from None
            except kite_errors.GeneralException as error:
                code = getattr(error, "code", 500)
                if isinstance(code, int) and 400 <= code < 500 and code != 429:
                    raise KiteRefusal(str(error), code=code) from error
                raise
        raise GatewayError(f"{method}: still rate limited (429) after 6 tries")

    def _fetch_number(self) -> int:
        """The next number in the order in which reads of Kite's order history start."""
        with self._lock:
            self._fetches += 1
            return self._fetches

    def _record(
        self,
        update: Any,
        problems: list[str],
        charges_for: Callable[[Order], Decimal | None] | None = None,
    ) -> int:
        """Record one update (or the update a callable makes: building it from Kite's
        data can itself be refused, and that refusal belongs in `problems` too, not in an
        exception that stops the rest of the converge)."""
        try:
            if callable(update):
                update = update()
            before = self.ledger.get_order(update.order_id).version
            after = self.ledger.record(update, charges_for=charges_for).version
        except (LedgerError, ValueError) as error:
            problems.append(" ".join(str(error).split()))
            return 0
        return after - before

    # ------------------------------------------------------------------ dispatch

    def dispatch(self) -> DispatchReport:
        """Send what the log asks for: new orders, cancellations, modifications."""
        with self._dispatching:
            return self._dispatch()

    def _dispatch(self) -> DispatchReport:
        report = DispatchReport()
        broker_orders: list[KiteOrder] | None = None
        for order in self.open_orders():  # (their tags are indexed before anything is sent)
            try:
                broker_orders = self._dispatch_one(order, broker_orders, report)
            except GatewayError:
                raise
            except Exception as error:  # one order's failure must not hold up the others'
                log.exception("dispatch of order %s failed; the others go on", order.id)
                report.failed.append(f"{order.id}: {' '.join(str(error).split())}")
        return report

    def _dispatch_one(
        self, order: Order, broker_orders: list[KiteOrder] | None, report: DispatchReport
    ) -> list[KiteOrder] | None:
        """Send what `order` asks for; returns Kite's order book if it had to be read."""
        outside = adopted_from(order)
        if order.broker_order_id is None and outside is not None:
            # Adopted from Kite's book, its acceptance not recorded yet (a crash in
            # between): it is at Kite already. Never place it; converge it instead.
            self.converge(outside, Source.RECONCILIATION)
        elif order.broker_order_id is None:
            if broker_orders is None and self.outbox.attempt(str(order.id), "place", 1):
                broker_orders = parse_orders(self.call("orders"))
            self._place(order, broker_orders or [], report)
        elif order.pending is EventKind.CANCEL_REQUESTED:
            self._send_cancel(order, report)
        elif order.pending is EventKind.MODIFY_REQUESTED:
            self._send_modify(order, report)
        return broker_orders

    def _place(self, order: Order, broker_orders: list[KiteOrder], report: DispatchReport) -> None:
        key = str(order.id)
        previous = self.outbox.attempt(key, "place", 1)
        if previous is not None:
            found = self._found_at_broker(order, broker_orders)
            if found is not None:
                self._accept(order, found.order_id, Source.RECONCILIATION)
                report.found_at_broker.append(order.id)
                self.converge(found.order_id, Source.RECONCILIATION)
                return
            if self.clock() - previous.last_attempt < self.grace:
                return  # the earlier attempt may still show up at Kite: look again later
        if order.pending is EventKind.CANCEL_REQUESTED:
            self._record(
                RecordCancelled(
                    order_id=order.id, reason="cancelled before it was sent", source=Source.LEDGER
                ),
                [],
            )
            return
        with self._claimed(key, "place", 1, previous) as lease:
            if lease is None:
                return  # another dispatcher is sending it
            try:
                broker_id = self.call("place_order", lease=lease, **placement_params(order))
            except LeaseLost:
                return  # never sent: another dispatcher has it now
            except REFUSED as error:
                self._record(
                    RecordRejected(
                        order_id=order.id,
                        reason=_reason(str(error), "refused by Kite"),
                        source=Source.BROKER,
                    ),
                    [],
                )
                report.rejected.append(order.id)
                return
            except UNKNOWN_OUTCOME as error:
                log.warning(
                    "placement of %s: outcome unknown (%s); will look it up", order.id, error
                )
                report.unknown_outcome.append(order.id)
                return
            self._accept(order, str(broker_id), Source.BROKER)
            report.placed.append(order.id)

    @contextmanager
    def _claimed(
        self, key: str, request: str, version: int, previous: Attempt | None
    ) -> Iterator[_Lease | None]:
        """The lease on sending this request (None if another dispatcher holds it),
        released when the block ends, whatever the outcome."""
        lease = _Lease(self, key, request, version)
        if not self.outbox.claim(key, request, version, previous, lease.until):
            yield None
            return
        try:
            yield lease
        finally:
            lease.release()

    def _found_at_broker(self, order: Order, broker_orders: list[KiteOrder]) -> KiteOrder | None:
        """The broker order an earlier placement of `order` made, if Kite has it: one with
        the order's tag, instrument and side that no other ledger order holds. (Tags are
        the ledger's own, one per order; an order written before that rule may carry a
        label several orders share, and must not take another order's broker order.)"""
        with self._lock:
            held = self._by_broker_id
            found = [
                b
                for b in broker_orders
                if b.tag == order.tag
                and _same_instrument_and_side(order, b)
                and held.get(b.order_id, order.id) == order.id
            ]
        if len(found) > 1:
            log.error(
                "order %s: %d broker orders carry its tag %s (%s); following the first",
                order.id,
                len(found),
                order.tag,
                ", ".join(b.order_id for b in found),
            )
        return found[0] if found else None

    def _accept(self, order: Order, broker_id: str, source: Source) -> None:
        with self._lock:
            self._by_broker_id[broker_id] = order.id
            self._broker_by_order[order.id] = broker_id
        self._record(
            RecordAccepted(order_id=order.id, broker_order_id=broker_id, source=source), []
        )

    def _request_version(self, order: Order, kind: type[Order.Event]) -> int:
        versions = [
            e.originator_version for e in self.ledger.history(order.id) if isinstance(e, kind)
        ]
        return versions[-1] if versions else 0

    def _busy(self, error: BaseException, previous: Attempt | None) -> bool:
        """Whether Kite refused a request only because another on the order is still in
        its hands ("being processed": a modification in flight when a cancellation is
        sent, say). That is no answer to the request, which is sent again after the
        grace, up to `BUSY_TRIES` sends; after that the refusal stands."""
        tries = (previous.attempts if previous is not None else 0) + 1
        return "being processed" in str(error).lower() and tries < BUSY_TRIES

    def _earlier_request_in_flight(self, order: Order, version: int) -> bool:
        """Whether the request this one took in (a modification asked for while another
        was pending) was sent and Kite is still working on it: sent now, Kite would
        refuse this one as "being processed", and that refusal be recorded as its answer.
        It is sent once Kite has answered the earlier one (looked up once per grace)."""
        earlier = [
            event.originator_version
            for event in self.ledger.history(order.id)
            if isinstance(event, Order.ModifyRequested) and event.originator_version < version
        ]
        if not earlier:
            return False
        sent = self.outbox.attempt(str(order.id), "modify", earlier[-1])
        if sent is None or not sent.sent:
            return False
        if not self._outcome_check_due(order.id):
            return True
        assert order.broker_order_id is not None
        history = parse_orders(self.call("order_history", order_id=order.broker_order_id))
        return bool(history) and history[-1].status not in SETTLED_STATUSES

    def _latest_request(self, order: Order) -> Order.ModifyRequested | None:
        """The order's latest modification request (its changes are what is pending)."""
        return next(
            (
                event
                for event in reversed(self.ledger.history(order.id))
                if isinstance(event, Order.ModifyRequested)
            ),
            None,
        )

    def _cancel_requests(self, order: Order) -> tuple[list[int], int]:
        """The versions of the CancelRequested events since the last cancellation was
        answered (CancelRejected), and how many were answered before them."""
        run: list[int] = []
        refused = 0
        for event in self.ledger.history(order.id):
            if isinstance(event, Order.CancelRequested):
                run.append(event.originator_version)
            elif isinstance(event, Order.CancelRejected):
                run = []
                refused += 1
        return run, refused

    def _cancel_version(self, order: Order, run: list[int]) -> int:
        """The version of the cancellation request now pending: the latest of `run` that
        was ever sent (claimed in the outbox), else its first. A strategy that asks again
        while one is at Kite repeats that request; sent again, Kite refuses it ("being
        processed"), which is no answer to the first. (A repeat becomes the request when
        the one before it is refused: `_send_cancel`.)"""
        for version in reversed(run):
            if self.outbox.attempt(str(order.id), "cancel", version) is not None:
                return version
        return run[0] if run else 0

    def _send_cancel(self, order: Order, report: DispatchReport) -> None:
        order = self.ledger.get_order(order.id)  # (as `_send_modify`)
        assert order.broker_order_id is not None
        if order.pending is not EventKind.CANCEL_REQUESTED:
            return
        run, refused_before = self._cancel_requests(order)
        version = self._cancel_version(order, run)
        previous = self.outbox.attempt(str(order.id), "cancel", version)
        if previous is not None and self.clock() - previous.last_attempt < self.grace:
            return
        if self._took_it_after_all(order, "cancel", version, previous, CANCEL_RECORDS):
            previous = self.outbox.attempt(str(order.id), "cancel", version)
            if previous is None or not previous.sent:
                return  # not looked at yet: not sent again before a look
        if previous is not None and previous.sent:
            # Kite took it: sent again while the exchange works on it, it is refused
            # ("being processed"), and the order's history says the outcome. One that
            # shows the order working again after a CANCEL PENDING record is the
            # exchange's refusal: recorded (at most one look per grace), not sent again,
            # unless the strategy asked again meanwhile: then the repeat is sent.
            if not (
                self._outcome_check_due(order.id)
                and self._cancel_refused_at_kite(order, previous, refused_before)
            ):
                return
            repeats = [v for v in run if v > version]
            if repeats:
                log.info("order %s: a cancellation was refused; sending the repeat", order.id)
                version, previous = repeats[-1], None
            else:
                self._record(
                    RecordCancelRejected(
                        order_id=order.id,
                        reason="the exchange did not cancel it: Kite shows the order"
                        " working again after taking the cancellation",
                    ),
                    [],
                )
                return
        with self._claimed(str(order.id), "cancel", version, previous) as lease:
            if lease is None:
                return
            pending_before, _ = self._request_records(order, CANCEL_RECORDS)
            self.outbox.set_baseline(str(order.id), "cancel", version, pending_before)
            try:
                self.call(
                    "cancel_order",
                    lease=lease,
                    variety=order.variety.value,
                    order_id=order.broker_order_id,
                )
            except LeaseLost:
                return
            except REFUSED as error:
                self.converge(order.broker_order_id, Source.BROKER)
                if self._busy(error, previous):
                    return  # no answer to this request: sent again after the grace
                if self.ledger.get_order(order.id).pending is EventKind.CANCEL_REQUESTED:
                    self._record(
                        RecordCancelRejected(
                            order_id=order.id, reason=_reason(str(error), "refused by Kite")
                        ),
                        [],
                    )
                return
            except UNKNOWN_OUTCOME:
                return
            self.outbox.mark_sent(str(order.id), "cancel", version)
            report.cancels_sent.append(order.id)
            self.converge(order.broker_order_id, Source.BROKER)

    def _took_it_after_all(
        self,
        order: Order,
        request: str,
        version: int,
        previous: Attempt | None,
        statuses: frozenset[str],
        changes: OrderChanges | None = None,
    ) -> bool:
        """Whether a send whose outcome was unknown (a lost reply) reached Kite after all:
        its history holds more of the request's records than before the send. Sent again,
        Kite would refuse the repeat ("being processed") and that refusal be recorded as
        the request's; instead the row is marked sent and the outcome is looked for."""
        if previous is None or previous.sent or previous.baseline is None:
            return False
        if not self._outcome_check_due(order.id):
            return True  # looked less than a grace ago: not sent again before a look
        assert order.broker_order_id is not None
        history = parse_orders(self.call("order_history", order_id=order.broker_order_id))
        if _count_records(history, statuses) <= previous.baseline:
            return False
        if changes is not None and not any(
            _shows_changes(order, record, changes)
            for record in _after_request(history, statuses, previous.baseline)
        ):
            # A modification record newer than the send may be another's (Kite's web
            # app); ours is known by a record that shows it. Not shown: looked at again
            # until the time limit, then sent again (a repeat of a change Kite has is
            # refused, and that refusal is the answer).
            return self.clock() - previous.last_attempt < self.request_timeout
        self.outbox.mark_sent(str(order.id), request, version)
        self.converge(order.broker_order_id, Source.BROKER)  # its outcome, if Kite has it
        return True

    def _outcome_check_due(self, order_id: UUID) -> bool:
        """Whether a sent request's outcome may be looked up at Kite again: once per
        grace, so that an exchange slow to confirm costs few history calls."""
        now = self.clock()
        with self._lock:
            if now - self._outcome_checked.get(order_id, float("-inf")) < self.grace:
                return False
            self._outcome_checked[order_id] = now
            return True

    def _request_records(self, order: Order, statuses: frozenset[str]) -> tuple[int, bool]:
        """Kite's history of the order: how many records in `statuses` (a kind of
        request's) it holds, and whether the newest of them was answered with the order
        working on (`_answered`)."""
        assert order.broker_order_id is not None
        history = parse_orders(self.call("order_history", order_id=order.broker_order_id))
        return _count_records(history, statuses), _answered(history, statuses)

    def _cancel_refused_at_kite(self, order: Order, sent: Attempt, refused_before: int) -> bool:
        """Whether Kite's history shows this cancellation refused by the exchange: a CANCEL
        PENDING record newer than the send (earlier ones are other cancellations'),
        answered by a record that is no trade's with the order working. A row written before the
        outbox kept that count stands on the cancellations answered before it instead
        (each had at least one CANCEL PENDING record)."""
        baseline = sent.baseline if sent.baseline is not None else refused_before
        pending, answered = self._request_records(order, CANCEL_RECORDS)
        return answered and pending > baseline

    def _send_modify(self, order: Order, report: DispatchReport) -> None:
        # Read again: the dispatch pass's view may predate a request merged since, and the
        # changes sent must be those of the version the outbox row is for.
        order = self.ledger.get_order(order.id)
        assert order.broker_order_id is not None
        if order.pending is not EventKind.MODIFY_REQUESTED:
            return
        # The version and the changes from one read of the history: read apart, a request
        # merged in between sent the older changes under the newer version's row.
        requested = self._latest_request(order)
        if requested is None:
            return
        version, changes = requested.originator_version, requested.changes
        previous = self.outbox.attempt(str(order.id), "modify", version)
        if previous is not None and self.clock() - previous.last_attempt < self.grace:
            return
        if self._took_it_after_all(order, "modify", version, previous, MODIFY_RECORDS, changes):
            return
        if previous is None and self._earlier_request_in_flight(order, version):
            return
        if previous is not None and previous.sent:
            # Kite took it: the order's history says whether the exchange made the change
            # (`_converge` records Modified, or ModifyRejected). A refused change leaves
            # the terms as they were, which a poll does not look at again, so the outcome
            # is looked up here, at most once per grace.
            if self._outcome_check_due(order.id):
                self.converge(order.broker_order_id, Source.BROKER)
            return
        params: dict[str, Any] = {"variety": order.variety.value, "order_id": order.broker_order_id}
        for name in ("quantity", "price", "trigger_price", "disclosed_quantity"):
            value = getattr(changes, name)
            if value is not None:
                params[name] = str(value) if isinstance(value, Decimal) else value
        if changes.order_type is not None:
            params["order_type"] = changes.order_type.value
        if changes.validity is not None:
            params["validity"] = changes.validity.value
        with self._claimed(str(order.id), "modify", version, previous) as lease:
            if lease is None:
                return
            pending_before, _ = self._request_records(order, MODIFY_RECORDS)
            self.outbox.set_baseline(str(order.id), "modify", version, pending_before)
            try:
                self.call("modify_order", lease=lease, **params)
            except LeaseLost:
                return
            except REFUSED as error:
                self.converge(order.broker_order_id, Source.BROKER)
                if self._busy(error, previous):
                    return  # no answer to this request: sent again after the grace
                now = self.ledger.get_order(order.id)
                latest = self._latest_request(now)
                # Only this request is refused: one asked for while the call was in flight
                # is sent on the next pass.
                if (
                    now.pending is EventKind.MODIFY_REQUESTED
                    and latest is not None
                    and latest.originator_version == version
                ):
                    self._record(
                        RecordModifyRejected(
                            order_id=order.id, reason=_reason(str(error), "refused by Kite")
                        ),
                        [],
                    )
                return
            except UNKNOWN_OUTCOME:
                return
            self.outbox.mark_sent(str(order.id), "modify", version)
            report.modifies_sent.append(order.id)
            # A history read before now may show the terms from before this change. The
            # change is recorded when Kite's history shows it made (or refused): Kite
            # taking the call is not the exchange taking the change.
            with self._lock:
                self._terms_as_of[order.id] = self._fetch_number()
            self.converge(order.broker_order_id, Source.BROKER)

    # ------------------------------------------------------------------ converge

    def order_for(self, broker_order: KiteOrder, *, refresh: bool = False) -> UUID | None:
        """The ledger's order for a broker order, by broker id or tag (None if external).
        With `refresh`, an unknown one is looked for in the log before giving up."""
        with self._lock:
            known = self._by_broker_id.get(broker_order.order_id)
            if known is None and broker_order.tag:
                candidates = self._tag_candidates(broker_order)
                known = candidates[0] if len(candidates) == 1 else None
        if known is None and refresh:
            self.refresh_index()
            return self.order_for(broker_order)
        return known

    def _tag_candidates(self, broker_order: KiteOrder) -> list[UUID]:
        """The ledger orders that may have made `broker_order`, by its tag: those carrying
        it that hold no other broker order (our tag on another broker order id is not the
        order we placed) and, where still open, have its instrument and side. (Called
        with the lock held.)"""
        found = []
        for order_id in self._by_tag.get(broker_order.tag or "", ()):
            if self._broker_by_order.get(order_id) not in (None, broker_order.order_id):
                continue
            order = self._open.get(order_id)
            if order is not None and not _same_instrument_and_side(order, broker_order):
                continue
            found.append(order_id)
        return sorted(found)

    def converge(self, broker_order_id: str, source: Source) -> ConvergeResult:
        """Fetch one order's history (and its trades, when Kite reports more filled than the
        ledger has) and record what the ledger lacks."""
        fetch = self._fetch_number()
        history = parse_orders(self.call("order_history", order_id=broker_order_id))
        result = ConvergeResult(broker_order_id, None)
        if not history:
            result.problems.append(f"Kite has no history for order {broker_order_id}")
            return result
        known = self.order_for(history[-1])
        filled = self.ledger.get_order(known).filled_quantity if known is not None else -1
        trades: list[KiteTrade] = []
        if history[-1].filled_quantity != filled:  # saves a call (rate limits) when nothing filled
            trades = parse_trades(self.call("order_trades", order_id=broker_order_id))
        with self._lock:
            self._converge(history, trades, source, result, fetch)
        if result.order_id is not None and history[-1].status in WORKING_STATUSES:
            self._cancel_stray(result.order_id, broker_order_id, result)
        return result

    def _cancel_stray(self, order_id: UUID, broker_order_id: str, result: ConvergeResult) -> None:
        """An order the ledger cancelled before it was sent (its placement's outcome was
        unknown and Kite's book did not show it in time) that Kite shows working after all:
        the placement reached Kite late. The strategy asked for it cancelled, so it is
        cancelled at Kite too (once; the ledger keeps it CANCELLED and records its fills)."""
        cancelled = next(
            (
                event
                for event in reversed(self.ledger.history(order_id))
                if isinstance(event, Order.Cancelled)
            ),
            None,
        )
        if cancelled is None or cancelled.source is not Source.LEDGER:
            return
        key, version = str(order_id), cancelled.originator_version
        previous = self.outbox.attempt(key, "stray-cancel", version)
        if previous is not None and (
            previous.sent or self.clock() - previous.last_attempt < self.grace
        ):
            return
        order = self.ledger.get_order(order_id)
        with self._claimed(key, "stray-cancel", version, previous) as lease:
            if lease is None:
                return
            log.error(
                "order %s was cancelled before it was sent, but Kite works it as %s:"
                " cancelling it at Kite",
                order_id,
                broker_order_id,
            )
            try:
                self.call(
                    "cancel_order",
                    lease=lease,
                    variety=order.variety.value,
                    order_id=broker_order_id,
                )
            except LeaseLost:
                return
            except (*REFUSED, *UNKNOWN_OUTCOME) as error:
                result.problems.append(
                    f"{_described(order)} was cancelled before it was sent, but Kite works"
                    f" it as {broker_order_id}; cancelling it there failed: {error}"
                )
                return
            self.outbox.mark_sent(key, "stray-cancel", version)
            result.problems.append(
                f"{_described(order)} was cancelled before it was sent, but Kite works it"
                f" as {broker_order_id}: cancelled it there"
            )

    def _converge(
        self,
        history: list[KiteOrder],
        trades: list[KiteTrade],
        source: Source,
        result: ConvergeResult,
        fetch: int,
    ) -> None:
        """Record what `history` (`fetch` numbers the read that returned it) and `trades`
        say that the ledger lacks. Fills (by trade id) and status events are applied once and only
        forward, whatever the order in which converges run; terms are not: a converge that
        read Kite before the terms the ledger has were read (by a converge that recorded
        first) or made (by the ledger's own modification) holds older terms, and records
        none."""
        latest = history[-1]
        # Looked for in the log too before it is taken for an outside order: another
        # process (`serve` beside a `reconcile`) may have placed it since this one read.
        order_id = self.order_for(latest, refresh=True)
        if order_id is None:
            order_id = self._adopt(history, result)
            if order_id is None:
                return
        result.order_id = order_id
        record = result.problems
        count = 0
        count += self._record(
            lambda: RecordAccepted(
                order_id=order_id,
                broker_order_id=latest.order_id,
                exchange_order_id=next(
                    (h.exchange_order_id for h in reversed(history) if h.exchange_order_id), None
                ),
                broker_timestamp=_accepted_at(history),
                source=source,
            ),
            record,
        )
        self._by_broker_id[latest.order_id] = order_id
        order = self.ledger.get_order(order_id)
        triggered_at = _trigger_time(history)
        if triggered_at is not None and order.order_type.needs_trigger_price:
            count += self._record(
                lambda: RecordTriggered(
                    order_id=order_id, triggered_at=triggered_at, source=source
                ),
                record,
            )
        fresh = fetch > self._terms_as_of.get(order_id, 0)
        if fresh and latest.status not in SETTLED_STATUSES and not latest.is_terminal:
            # Kite's history ends on a request in flight: a modification of the ledger's
            # that has been in flight past the time limit is closed all the same.
            count += self._modification_timed_out(order, source, record)
            order = self.ledger.get_order(order_id)
        if latest.status in SETTLED_STATUSES and fresh:
            self._terms_as_of[order_id] = fetch
            if latest.status in WORKING_STATUSES:
                count += self._settle_modification(order, history, source, record)
                order = self.ledger.get_order(order_id)
            # Kite's terms as they stand (a change made in Kite's web app, or a part of the
            # ledger's own): one that does not carry all the open request asks for leaves
            # it open (`Modified.closes_request`), so fills count against the right
            # quantity and the request is still sent and answered.
            count += self._record_modification(order, latest, source, record)
        for trade in sorted(trades, key=_trade_order):
            count += self._record_fill(order_id, trade, source, record)
        if latest.status == "CANCELLED":
            count += self._record(
                lambda: RecordCancelled(
                    order_id=order_id,
                    reason=_reason(latest.status_message, "cancelled"),
                    source=source,
                    broker_timestamp=latest.exchange_update_timestamp,
                ),
                record,
            )
        elif latest.status == "REJECTED":
            count += self._record(
                lambda: RecordRejected(
                    order_id=order_id,
                    reason=_reason(latest.status_message, "rejected"),
                    source=Source.BROKER,
                    broker_timestamp=latest.exchange_update_timestamp,
                ),
                record,
            )
        result.recorded += count
        order = self.ledger.get_order(order_id)
        self._remember(order)
        if order.lifecycle.is_terminal:
            self._terms_as_of.pop(order_id, None)
            self._outcome_checked.pop(order_id, None)

    def _settle_modification(
        self, order: Order, history: list[KiteOrder], source: Source, problems: list[str]
    ) -> int:
        """The outcome of the ledger's open modification, by the order's history, whose
        latest record is settled and working and read after the send:
        * Modified, with the changes asked for, where it shows them all (sent or not: a
          converge may come between Kite's reply and the mark);
        * ModifyRejected where Kite took it (sent) and shows a MODIFY (VALIDATION) PENDING
          record newer than the send, answered by a record that is no trade's (the order
          works on without the change), or where the change has not shown for
          `request_timeout` seconds since the send;
        * otherwise Kite has not got to it yet, and nothing is recorded."""
        changes = order.pending_changes
        if order.pending is not EventKind.MODIFY_REQUESTED or changes is None:
            return 0
        latest = history[-1]
        version = self._request_version(order, Order.ModifyRequested)
        sent = self.outbox.attempt(str(order.id), "modify", version)
        taken = sent is not None and sent.sent
        # The records that can show it made: the latest; for a request Kite took, any
        # working one after its first MODIFY record (a later outside change may have
        # moved the terms on since).
        candidates = [latest]
        if taken and sent is not None and sent.baseline is not None:
            candidates = _after_request(history, MODIFY_RECORDS, sent.baseline) or candidates
        # A request that takes a pending change back asks for terms the order has: an
        # older record shows them too, so only a record after Kite took it can say.
        shown = (
            None
            if not taken and _asks_for_current_terms(order, changes)
            else next((r for r in reversed(candidates) if _shows_changes(order, r, changes)), None)
        )
        if shown is not None:
            return self._record(
                lambda: RecordModified(
                    order_id=order.id,
                    quantity=changes.quantity,
                    price=changes.price,
                    trigger_price=changes.trigger_price,
                    order_type=changes.order_type,
                    validity=changes.validity,
                    disclosed_quantity=changes.disclosed_quantity,
                    source=source,
                    broker_timestamp=shown.exchange_update_timestamp,
                ),
                problems,
            )
        if sent is None or not sent.sent:
            return 0  # not sent, or its outcome unknown: `_send_modify` has it
        refused = (
            sent.baseline is not None
            and _count_records(history, MODIFY_RECORDS) > sent.baseline
            and _answered(history, MODIFY_RECORDS)
        )
        if not refused:
            return self._modification_timed_out(order, source, problems)
        return self._record(
            lambda: RecordModifyRejected(
                order_id=order.id,
                reason=_reason(
                    latest.status_message,
                    "the exchange did not modify it: Kite shows the order working on its"
                    " earlier terms after taking the modification",
                ),
                source=source,
            ),
            problems,
        )

    def _modification_timed_out(self, order: Order, source: Source, problems: list[str]) -> int:
        """ModifyRejected for the ledger's open modification that Kite took more than
        `request_timeout` seconds ago and has not shown made."""
        if order.pending is not EventKind.MODIFY_REQUESTED:
            return 0
        version = self._request_version(order, Order.ModifyRequested)
        sent = self.outbox.attempt(str(order.id), "modify", version)
        if sent is None or not sent.sent:
            return 0
        if self.clock() - sent.last_attempt <= self.request_timeout:
            return 0
        return self._record(
            lambda: RecordModifyRejected(
                order_id=order.id,
                reason=f"Kite did not show the change within {self.request_timeout:g} s of"
                " taking it",
                source=source,
            ),
            problems,
        )

    def _record_modification(
        self, order: Order, latest: KiteOrder, source: Source, problems: list[str]
    ) -> int:
        """Record the terms of `latest`, a settled record (see `SETTLED_STATUSES`), where
        they differ from the ledger's."""
        if latest.status == "REJECTED" or order.lifecycle.is_terminal:
            return 0  # nothing is modified after the end
        changes: dict[str, Any] = {}
        if latest.quantity != order.quantity:
            changes["quantity"] = latest.quantity
        if latest.disclosed_quantity != order.disclosed_quantity:
            changes["disclosed_quantity"] = latest.disclosed_quantity
        if latest.validity != order.validity.value:
            try:
                changes["validity"] = Validity(latest.validity)
            except ValueError:
                problems.append(
                    f"Kite reports a validity the ledger does not know: {latest.validity!r}"
                )
        try:
            broker_type = OrderType(_booked_type(order, latest))
        except ValueError:
            problems.append(
                f"Kite reports an order type the ledger does not know: {latest.order_type!r}"
            )
            return 0
        # A new type decides which prices exist: a type change names the new type's
        # prices, changed or not (`Modified` keeps none of the old type's).
        new_type = broker_type is not order.order_type
        if new_type:
            changes["order_type"] = broker_type
        price, trigger = latest.price, latest.trigger_price
        if broker_type.needs_price and price is not None and (new_type or price != order.price):
            changes["price"] = price
        if (
            broker_type.needs_trigger_price
            and trigger is not None
            and (new_type or trigger != order.trigger_price)
        ):
            changes["trigger_price"] = trigger
        if not changes:
            return 0
        return self._record(
            lambda: RecordModified(
                order_id=order.id,
                source=source,
                broker_timestamp=latest.exchange_update_timestamp,
                **changes,
            ),
            problems,
        )

    def _record_fill(
        self, order_id: UUID, trade: KiteTrade, source: Source, problems: list[str]
    ) -> int:
        order = self.ledger.get_order(order_id)
        if trade.trade_id in order.trade_ids:
            return 0
        return self._record(
            lambda: RecordFill(
                order_id=order_id,
                trade_id=trade.trade_id,
                exchange=Exchange(trade.exchange),
                tradingsymbol=trade.tradingsymbol,
                quantity=trade.quantity,
                price=trade.average_price,
                exchange_timestamp=trade.fill_timestamp or trade.exchange_timestamp,
                source=source,
            ),
            problems,
            # The share is worked out on the order the fill is recorded on, not the one
            # read above: another process (a `reconcile` beside `serve`) may record a fill
            # of this order in between, and a flat brokerage would be charged twice.
            charges_for=lambda current: self._charges_for(current, trade),
        )

    def _charges_for(self, order: Order, trade: KiteTrade) -> Decimal | None:
        try:
            instrument = self.ledger.instruments.get(order.instrument)
            # The day the fill is dated (as `_record_fill` dates it), whose schedule applies.
            at = trade.fill_timestamp or trade.exchange_timestamp or self.ledger.clock()
            day = at.astimezone(IST).date()
            earlier = [(f.quantity, f.price) for f in order.fills]
            return self.charges.fill_charges(
                instrument,
                order.product,
                order.side,
                earlier,
                (trade.quantity, trade.average_price),
                day,
            )
        except (LedgerError, ChargesDataError) as error:
            log.warning("no charges for trade %s: %s", trade.trade_id, error)
            return None

    def _adopt(self, history: list[KiteOrder], result: ConvergeResult) -> UUID | None:
        """An order placed outside the ledger (Kite's web app, another tool): record it."""
        first, latest = history[0], history[-1]
        with self._lock:
            candidates = self._tag_candidates(latest) if latest.tag else []
        if candidates:
            # Several ledger orders written before tags were the ledger's own share this
            # one's: it is one of ours, but which is unknown. Adopted, it would be taken
            # for an outside order, and the one that made it would be placed again.
            result.problems.append(
                f"broker order {latest.order_id} carries the tag {latest.tag!r} of"
                f" {len(candidates)} ledger orders ({', '.join(map(str, candidates))});"
                " not adopted: record its acceptance on the right one"
            )
            return None
        try:
            order_type = OrderType(latest.order_type)
        except ValueError:
            result.problems.append(
                f"cannot adopt external order {latest.order_id}: unknown order type"
                f" {latest.order_type!r}"
            )
            return None
        with self._lock:
            owners = sorted(self._by_tag.get(latest.tag or "", ()))
        strategy: str | None = "external"
        if owners:
            # The tag is the ledger's own, held by an order that has another broker order:
            # this one is a second placement of it (a send whose outcome was unknown went
            # through after all). Its fills are real: adopted, under that order's
            # strategy, and reported.
            owner = self.ledger.get_order(owners[0])
            strategy = owner.strategy
            log.error(
                "broker order %s carries the tag %s of %s: a duplicate placement",
                latest.order_id,
                latest.tag,
                _described(owner),
            )
            result.problems.append(
                f"broker order {latest.order_id} is a duplicate placement of"
                f" {_described(owner)} (it carries its tag {latest.tag!r}); adopted as"
                f" {ADOPTED_PREFIX}{latest.order_id} under strategy {strategy!r}"
            )
        fields: dict[str, Any] = {
            "account": self.account,
            "client_order_id": f"{ADOPTED_PREFIX}{latest.order_id}",
            "exchange": latest.exchange,
            "tradingsymbol": latest.tradingsymbol,
            "side": latest.transaction_type,
            "quantity": first.quantity,
            "order_type": order_type,
            "product": latest.product,
            "variety": latest.variety,
            "validity": latest.validity,
            # Kite's orders carry it; the ledger requires it of a TTL order.
            "validity_ttl": latest.validity_ttl if latest.validity == "TTL" else None,
            "strategy": strategy,
            "actor": ADOPTED_ACTOR,
        }
        if order_type.needs_price:
            fields["price"] = latest.price
        if order_type.needs_trigger_price:
            fields["trigger_price"] = latest.trigger_price
        if order_type.needs_market_protection:
            protection = latest.market_protection
            fields["market_protection"] = (
                protection if protection and protection != 0 else Decimal(-1)
            )
        try:
            # Adopted before (a crash came before its acceptance was recorded): that order,
            # whatever Kite changed since; converging records the changes.
            order = self.ledger.find_order(self.account, fields["client_order_id"])
        except OrderNotFound:
            try:
                order = self.ledger.submit(SubmitOrder.parse(fields))
            except LedgerError as error:
                result.problems.append(f"cannot adopt external order {latest.order_id}: {error}")
                return None
        self._by_broker_id[latest.order_id] = order.id
        self._by_tag.setdefault(order.tag, set()).add(order.id)
        return order.id

    def already_reflects(self, update: KiteOrder) -> bool:
        """Whether the ledger already knows everything this order update says."""
        order_id = self.order_for(update)
        if order_id is None:
            return False
        order = self.ledger.get_order(order_id)
        if (
            order.broker_order_id != update.order_id
            or order.filled_quantity != update.filled_quantity
        ):
            return False
        if order.quantity != update.quantity or not _same_terms(order, update):
            return False
        expected = {
            "COMPLETE": {"FILLED"},
            "CANCELLED": {"CANCELLED", "FILLED"},
            "REJECTED": {"REJECTED"},
            "OPEN": {"ACCEPTED", "TRIGGERED", "PARTIALLY_FILLED"},
            "TRIGGER PENDING": {"ACCEPTED"},
        }.get(update.status)
        if expected is None or order.lifecycle.value not in expected:
            return False
        return not _trigger_unrecorded(order, update)

    # ------------------------------------------------------------------ polling and reconciliation

    def poll(self, source: Source = Source.POLL) -> OrdersReconciliation:
        """Compare Kite's order book and trade book with the ledger; converge what differs,
        and report what still differs (`differences`): Kite's status against the ledger's,
        and the ledger's working orders that Kite's book does not list. A difference is
        only reported: the ledger records only what Kite reports."""
        result = OrdersReconciliation()
        # Taken before Kite's book is read: an order accepted after this may be missing
        # from the book only because the book was read first.
        unlisted = {
            order.broker_order_id: order
            for order in self.open_orders()
            if order.broker_order_id is not None and order.account == self.account
        }
        book, trade_book = (
            parse_each_order(self.call("orders")),
            parse_each_trade(self.call("trades")),
        )
        broker_orders, trades = book.parsed, trade_book.parsed
        result.problems += book.problems + trade_book.problems
        for unread in book.unread_ids:  # listed, though not read: not missing from the book
            if unlisted.pop(unread, None) is not None:
                try:  # its history may read where the book's copy did not
                    converged = self.converge(unread, source)
                except KitePayloadError as error:
                    result.problems.append(f"order {unread}: {error}")
                    continue
                result.recorded += converged.recorded
                result.problems.extend(converged.problems)
        trade_ids: dict[str, set[str]] = {}
        for trade in trades:
            trade_ids.setdefault(trade.order_id, set()).add(trade.trade_id)
        result.broker_orders = len(broker_orders)
        for broker_order in broker_orders:
            unlisted.pop(broker_order.order_id, None)
            order_id = self.order_for(broker_order, refresh=True)
            if order_id is None or not self._up_to_date(order_id, broker_order, trade_ids):
                try:
                    converged = self.converge(broker_order.order_id, source)
                except KitePayloadError as error:  # one order's bad record; the rest go on
                    result.problems.append(f"order {broker_order.order_id}: {error}")
                    continue
                if order_id is None and converged.order_id is not None:
                    result.adopted.append(broker_order.order_id)
                result.recorded += converged.recorded
                result.problems.extend(converged.problems)
                order_id = converged.order_id
            if order_id is not None:
                order = self.ledger.get_order(order_id)
                if order.broker_order_id == broker_order.order_id and not _status_agrees(
                    order, broker_order
                ):
                    result.differences.append(
                        f"{_described(order)}: the ledger has it {order.status.value},"
                        f" Kite {broker_order.status}"
                    )
        for order in unlisted.values():
            if self._its_day_has_ended(order):
                self._expire_unlisted(order, source, result)
                continue
            result.differences.append(
                f"{_described(order)}: the ledger has it {order.status.value},"
                " Kite's order book does not list it"
            )
        return result

    def _its_day_has_ended(self, order: Order) -> bool:
        """Whether the trading day a working order was placed for has ended: Kite's order
        book holds one day's orders, and none of Kite's validities (DAY, IOC, TTL) outlives
        it. An after-market order is for the next session, so it is given one more day."""
        placed = order.accepted_at or order.created_on
        days = (self.ledger.clock().astimezone(IST).date() - placed.astimezone(IST).date()).days
        return days >= (2 if order.variety is Variety.AMO else 1)

    def _expire_unlisted(self, order: Order, source: Source, result: OrdersReconciliation) -> None:
        """A working order from an earlier trading day that Kite's book no longer lists:
        what Kite's history still says of it is recorded (fills, its end); if that leaves
        it working, it is recorded Expired, and reported, since fills Kite no longer
        reports would be missing."""
        assert order.broker_order_id is not None
        try:
            converged = self.converge(order.broker_order_id, source)
            result.recorded += converged.recorded
            result.problems.extend(
                p for p in converged.problems if not p.startswith("Kite has no history")
            )
        except REFUSED as error:  # what Kite answers for an order it no longer holds
            log.info("order %s: Kite has no history of it any more (%s)", order.id, error)
        except KitePayloadError as error:  # Kite has it, and says something: look again
            result.problems.append(f"{_described(order)}: {error}")
            return
        except UNKNOWN_OUTCOME as error:
            result.differences.append(
                f"{_described(order)}: Kite's order book does not list it, and its history"
                f" could not be read ({error})"
            )
            return
        if self.ledger.get_order(order.id).lifecycle.is_terminal:
            return
        recorded = self._record(
            RecordExpired(
                order_id=order.id,
                reason="its trading day ended; Kite's order book no longer lists it",
                source=source,
            ),
            result.problems,
        )
        if recorded:
            result.recorded += recorded
            result.expired.append(
                f"{_described(order)}: expired with its trading day (Kite's order book no"
                " longer lists it); check its fills against the contract note"
            )

    def _up_to_date(
        self, order_id: UUID, broker_order: KiteOrder, trade_ids: dict[str, set[str]]
    ) -> bool:
        """Whether the ledger's order already has all that Kite's book says of it."""
        order = self.ledger.get_order(order_id)
        return (
            order.broker_order_id == broker_order.order_id
            and trade_ids.get(broker_order.order_id, set()) <= order.trade_ids
            and (order.lifecycle.is_terminal or not broker_order.is_terminal)
            and order.quantity == broker_order.quantity
            # a modification made at Kite (its web app, another tool) with no prompt
            and (order.lifecycle.is_terminal or _same_terms(order, broker_order))
            and not _trigger_unrecorded(order, broker_order)
        )

    def reconcile(self) -> OrdersReconciliation:
        """At start-up and on demand: every broker order and trade against the ledger."""
        return self.poll(Source.RECONCILIATION)


def placement_params(order: Order) -> dict[str, Any]:
    """The place_order arguments for an order (prices as exact decimal text)."""
    params: dict[str, Any] = {
        "variety": order.variety.value,
        "exchange": order.instrument.exchange.value,
        "tradingsymbol": order.instrument.tradingsymbol,
        "transaction_type": order.side.value,
        "quantity": order.quantity,
        "product": order.product.value,
        "order_type": order.order_type.value,
        "validity": order.validity.value,
        "tag": order.tag,
    }
    if order.price is not None:
        params["price"] = str(order.price)
    if order.trigger_price is not None:
        params["trigger_price"] = str(order.trigger_price)
    if order.disclosed_quantity:
        params["disclosed_quantity"] = order.disclosed_quantity
    if order.market_protection is not None:
        params["market_protection"] = str(order.market_protection)
    if order.validity_ttl is not None:
        params["validity_ttl"] = order.validity_ttl
    return params


def _same_terms(order: Order, broker_order: KiteOrder) -> bool:
    """Whether the ledger has the order type, prices, validity and disclosed quantity Kite
    shows for a working order."""
    if _booked_type(order, broker_order) != order.order_type.value:
        return False
    if (
        broker_order.validity != order.validity.value
        or broker_order.disclosed_quantity != order.disclosed_quantity
    ):
        return False
    kind = order.order_type
    if kind.needs_price and broker_order.price is not None and broker_order.price != order.price:
        return False
    return not (
        kind.needs_trigger_price
        and broker_order.trigger_price is not None
        and broker_order.trigger_price != order.trigger_price
    )


#: The ledger's statuses that agree with each of Kite's final statuses (Kite shows an order
#: that lapsed, IOC or day end, as CANCELLED). Kite's other statuses are of a working order.
_AGREEING: Final = {
    "COMPLETE": frozenset({OrderStatus.FILLED}),
    "CANCELLED": frozenset({OrderStatus.CANCELLED, OrderStatus.EXPIRED}),
    "REJECTED": frozenset({OrderStatus.REJECTED}),
}


def _status_agrees(order: Order, broker_order: KiteOrder) -> bool:
    """Whether the ledger's status of an order agrees with the status Kite shows."""
    agreeing = _AGREEING.get(broker_order.status)
    if agreeing is None:
        return order.lifecycle.is_open
    return order.lifecycle in agreeing


def _trade_order(trade: KiteTrade) -> tuple[int, str]:
    """Kite's trade ids are numbers in text, and grow: "9" comes before "10". (The order
    of an order's fills decides which fill carries which part of its charges.)"""
    return len(trade.trade_id), trade.trade_id


def _described(order: Order) -> str:
    return f"order {order.id} ({order.client_order_id}, Kite {order.broker_order_id})"


def _accepted_at(history: list[KiteOrder]) -> datetime | None:
    """When Kite took the order: the time on its first record past the pre-open ones (OPEN,
    TRIGGER PENDING, AMO REQ RECEIVED, or an end). Not the latest record's: Kite moves
    order_timestamp on each modification."""
    taken = next((h for h in history if h.status not in PRE_OPEN_STATUSES), history[0])
    return taken.order_timestamp or taken.exchange_timestamp


#: What Kite books a market order with market protection as: a limit order (SL-M: SL) at
#: the protection price.
_PROTECTED_BOOKING: Final = {OrderType.MARKET: "LIMIT", OrderType.SL_M: "SL"}


def _count_records(history: Iterable[KiteOrder], statuses: frozenset[str]) -> int:
    return sum(1 for record in history if record.status in statuses)


def _answered(history: list[KiteOrder], statuses: frozenset[str]) -> bool:
    """Whether a record after the newest record in `statuses` (a request's) is the
    exchange's answer to it with the order working on: one that shows the order working
    with nothing more filled than the record before it. A record that adds to the filled
    quantity is a trade's, and a stop order's first OPEN record after TRIGGER PENDING is
    its trigger's: either can come while the request is on its way, before the answer."""
    marks = [i for i, record in enumerate(history) if record.status in statuses]
    if not marks:
        return False
    working = [r.status for r in history[: marks[-1]] if r.status in WORKING_STATUSES]
    waiting_for_trigger = bool(working) and working[-1] == "TRIGGER PENDING"
    for i in range(marks[-1] + 1, len(history)):
        record = history[i]
        if record.status not in WORKING_STATUSES:
            continue
        if waiting_for_trigger and record.status == "OPEN":
            waiting_for_trigger = False  # the trigger, not the answer
            continue
        if record.filled_quantity == history[i - 1].filled_quantity:
            return True
    return False


def _after_request(
    history: list[KiteOrder], statuses: frozenset[str], baseline: int
) -> list[KiteOrder]:
    """The working records after the first of a request's records newer than `baseline`
    (how many the history held before the send)."""
    seen = 0
    for i, record in enumerate(history):
        if record.status in statuses:
            seen += 1
            if seen > baseline:
                return [r for r in history[i + 1 :] if r.status in WORKING_STATUSES]
    return []


def _asks_for_current_terms(order: Order, changes: OrderChanges) -> bool:
    """Whether every term `changes` names is one the order has now."""
    current: list[tuple[object, object]] = [
        (changes.quantity, order.quantity),
        (changes.price, order.price),
        (changes.trigger_price, order.trigger_price),
        (changes.order_type, order.order_type),
        (changes.validity, order.validity),
        (changes.disclosed_quantity, order.disclosed_quantity),
    ]
    return all(asked is None or asked == has for asked, has in current)


def _shows_changes(order: Order, broker_order: KiteOrder, changes: OrderChanges) -> bool:
    """Whether Kite's record of `order` has every term `changes` asks for."""
    asked_and_shown: list[tuple[object, object]] = [
        (changes.quantity, broker_order.quantity),
        (changes.price, broker_order.price),
        (changes.trigger_price, broker_order.trigger_price),
        (changes.disclosed_quantity, broker_order.disclosed_quantity),
    ]
    if changes.order_type is not None:
        # As Kite shows it: a protected market order asked to become a limit one keeps
        # Kite's "mktp" tags, which `_booked_type` would read as still a market order.
        asked_and_shown.append((changes.order_type.value, broker_order.order_type))
    if changes.validity is not None:
        asked_and_shown.append((changes.validity.value, broker_order.validity))
    return all(asked is None or asked == shown for asked, shown in asked_and_shown)


def _booked_type(order: Order, broker_order: KiteOrder) -> str:
    """The order type Kite shows for `order`; the ledger's own where Kite booked its
    market order with protection as a limit one (that is the same order, as placed, not
    a modification: its price is the protection's limit, not a term of the order)."""
    if (
        broker_order.booked_with_market_protection
        and _PROTECTED_BOOKING.get(order.order_type) == broker_order.order_type
    ):
        return order.order_type.value
    return broker_order.order_type


def _trigger_unrecorded(order: Order, broker_order: KiteOrder) -> bool:
    """Whether Kite shows a stop order past its trigger (a triggered stop is OPEN at Kite,
    or COMPLETE) that the ledger still has waiting for it."""
    return (
        order.lifecycle is OrderStatus.ACCEPTED
        and order.order_type.needs_trigger_price
        and order.triggered_at is None
        and broker_order.order_type in STOP_TYPES
        and broker_order.status in ("OPEN", "COMPLETE")
    )


def _trigger_time(history: Iterable[KiteOrder]) -> Any:
    """When Kite's history shows the stop order triggered: its first record OPEN or
    COMPLETE as a stop order (Kite shows a stop waiting for its trigger as TRIGGER
    PENDING). A stop changed to LIMIT or MARKET at Kite also leaves TRIGGER PENDING for
    OPEN, but as a LIMIT or MARKET order: that is no trigger."""
    for snapshot in history:
        if snapshot.status in ("OPEN", "COMPLETE") and snapshot.order_type in STOP_TYPES:
            return snapshot.exchange_update_timestamp or snapshot.order_timestamp
    return None


class UpdateWorker:
    """Turns prompts (postbacks, WebSocket updates) into converges, off the caller's thread,
    one order at a time, folding repeated prompts for the same order together."""

    def __init__(self, gateway: KiteGateway) -> None:
        self.gateway = gateway
        self._queue: queue.Queue[tuple[str, Source] | None] = queue.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="kite-updates", daemon=True)
        self.errors: list[str] = []
        self.skipped = 0

    def start(self) -> UpdateWorker:
        self._thread.start()
        return self

    def prompt(self, broker_order_id: str, source: Source, hint: KiteOrder | None = None) -> None:
        """Converge this order soon. With `hint` (the update's own payload), an update that
        tells the ledger nothing new (a repeat, or the other channel's copy) costs no call."""
        if hint is not None and self.gateway.already_reflects(hint):
            self.skipped += 1
            return
        with self._lock:
            if broker_order_id in self._pending:
                return
            self._pending.add(broker_order_id)
        self._queue.put((broker_order_id, source))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            broker_order_id, source = item
            with self._lock:
                self._pending.discard(broker_order_id)
            try:
                self.gateway.converge(broker_order_id, source)
            except Exception as error:  # keep serving; polling will catch up
                self.errors.append(f"{broker_order_id}: {error}")
                log.warning("converge %s failed: %s", broker_order_id, error)
            finally:
                self._queue.task_done()

    def drain(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(5)


__all__ = ["InstrumentRef", "KiteGateway", "UpdateWorker", "placement_params"]


_REASON_LIMIT: Final = 200


def _reason(message: str | None, default: str) -> str:
    """Kite's status message as a reason the ledger accepts (at most 200 characters, no
    control characters)."""
    printable = "".join(c if c.isprintable() else " " for c in message or "")
    text = " ".join(printable.split()) or default
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 1] + "…"
