"""Stateful properties: many orders, random valid and invalid commands and broker updates
(duplicates, late fills and all), on SQLite and on PostgreSQL.

After every step:
* a fresh application instance on the same store rebuilds every order equal to the live one;
* an order read at version N equals the fold of its first N events;
* a refused command never grows the log;
* filled quantity never exceeds the order quantity and equals the sum of distinct fills.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from psycopg import sql

from ledger.application import open_ledger
from ledger.commands import (
    CancelOrder,
    ModifyOrder,
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
from ledger.domain.errors import LedgerError
from ledger.domain.order import Order
from ledger.domain.values import Exchange, Source
from tests.support import FakeClock, submit_command

TICK = Decimal("0.05")
prices = st.integers(min_value=16000, max_value=16500).map(lambda n: n * TICK)
off_tick_prices = st.integers(min_value=1, max_value=4).map(
    lambda n: Decimal("812.35") + n * Decimal("0.01")
)
sources = st.sampled_from([Source.POSTBACK, Source.WEBSOCKET, Source.POLL, Source.RECONCILIATION])


def state(order: Order) -> dict[str, Any]:
    return {k: v for k, v in vars(order).items() if k != "_pending_events"}


class OrderLogMachine(RuleBasedStateMachine):
    """Drives one ledger; `make_url` gives each run a new, empty database."""

    make_url: Callable[[], tuple[str, Callable[[], None]]]

    orders = Bundle("orders")

    def __init__(self) -> None:
        super().__init__()
        self.url, self._drop = type(self).make_url()
        self.ledger = open_ledger(self.url, clock=FakeClock())
        # A second application on the same store: it keeps no aggregate cache, so every
        # read below rebuilds the order from the stored events, as a fresh process would.
        self.reader = open_ledger(self.url)
        self.live: dict[uuid.UUID, Order] = {}

    def teardown(self) -> None:
        self.ledger.close()
        self.reader.close()
        self._drop()

    def _attempt(self, action: Callable[[], Order]) -> None:
        before = self.ledger.count_events()
        try:
            order = action()
        except LedgerError as error:
            refusal = error
        else:
            event("recorded" if self.ledger.count_events() > before else "nothing to record")
            self.live[order.id] = order
            return
        assert str(refusal), "a refusal must say why"
        assert self.ledger.count_events() == before, f"refused but wrote: {refusal}"
        event(f"refused: {type(refusal).__name__}")

    @initialize(target=orders)
    def first_order(self) -> uuid.UUID:
        order = self.ledger.submit(self._submit("c-0", quantity=100, price=Decimal("812.35")))
        self.live[order.id] = order
        return order.id

    @staticmethod
    def _submit(client_order_id: str, **overrides: Any) -> SubmitOrder:
        return submit_command(client_order_id=client_order_id, strategy=None, **overrides)

    @rule(
        target=orders,
        client_order_id=st.sampled_from(["c-0", "c-1", "c-2", "c-3"]),
        quantity=st.integers(min_value=-5, max_value=120),
        price=st.one_of(prices, off_tick_prices),
        stop=st.booleans(),
    )
    def submit(self, client_order_id: str, quantity: int, price: Decimal, stop: bool) -> Any:
        try:
            command = self._submit(
                client_order_id,
                quantity=quantity,
                price=price,
                order_type="SL" if stop else "LIMIT",
                trigger_price=price - TICK if stop else None,
            )
        except LedgerError:
            return uuid.uuid4()  # refused at the boundary: an id no order has
        self._attempt(lambda: self.ledger.submit(command))
        from ledger.domain.identity import order_id_for

        return order_id_for("AB1234", client_order_id)

    @rule(order_id=orders, broker=st.sampled_from(["B1", "B2"]))
    def accept(self, order_id: uuid.UUID, broker: str) -> None:
        self._attempt(
            lambda: self.ledger.record(RecordAccepted(order_id=order_id, broker_order_id=broker))
        )

    @rule(
        order_id=orders,
        trade=st.sampled_from(["T1", "T2", "T3", "T4", "T5"]),
        quantity=st.integers(min_value=1, max_value=40),
        price=prices,
        source=sources,
        symbol=st.sampled_from(["SBIN", "SBIN", "SBIN", "INFY"]),
    )
    def fill(
        self,
        order_id: uuid.UUID,
        trade: str,
        quantity: int,
        price: Decimal,
        source: Source,
        symbol: str,
    ) -> None:
        update = RecordFill(
            order_id=order_id,
            trade_id=trade,
            exchange=Exchange.NSE,
            tradingsymbol=symbol,
            quantity=quantity,
            price=price,
            source=source,
        )
        self._attempt(lambda: self.ledger.record(update))

    @rule(order_id=orders, quantity=st.integers(min_value=1, max_value=150), price=prices)
    def request_modify(self, order_id: uuid.UUID, quantity: int, price: Decimal) -> None:
        self._attempt(
            lambda: self.ledger.request_modify(
                ModifyOrder(order_id=order_id, quantity=quantity, price=price)
            )
        )

    @rule(order_id=orders, price=prices)
    def modified(self, order_id: uuid.UUID, price: Decimal) -> None:
        self._attempt(lambda: self.ledger.record(RecordModified(order_id=order_id, price=price)))

    @rule(order_id=orders)
    def modify_rejected(self, order_id: uuid.UUID) -> None:
        self._attempt(
            lambda: self.ledger.record(RecordModifyRejected(order_id=order_id, reason="no"))
        )

    @rule(order_id=orders)
    def request_cancel(self, order_id: uuid.UUID) -> None:
        self._attempt(lambda: self.ledger.request_cancel(CancelOrder(order_id=order_id)))

    @rule(order_id=orders)
    def cancelled(self, order_id: uuid.UUID) -> None:
        self._attempt(lambda: self.ledger.record(RecordCancelled(order_id=order_id)))

    @rule(order_id=orders)
    def cancel_rejected(self, order_id: uuid.UUID) -> None:
        self._attempt(
            lambda: self.ledger.record(RecordCancelRejected(order_id=order_id, reason="no"))
        )

    @rule(order_id=orders)
    def triggered(self, order_id: uuid.UUID) -> None:
        at = self.ledger.clock()
        self._attempt(
            lambda: self.ledger.record(RecordTriggered(order_id=order_id, triggered_at=at))
        )

    @rule(order_id=orders)
    def expired(self, order_id: uuid.UUID) -> None:
        self._attempt(lambda: self.ledger.record(RecordExpired(order_id=order_id, reason="eod")))

    @rule(order_id=orders)
    def rejected(self, order_id: uuid.UUID) -> None:
        self._attempt(lambda: self.ledger.record(RecordRejected(order_id=order_id, reason="rms")))

    @invariant()
    def a_fresh_instance_rebuilds_every_order(self) -> None:
        assert self.reader.repository.cache is None
        for order_id, live in self.live.items():
            assert state(self.reader.get_order(order_id)) == state(live)
        assert self.reader.count_events() == sum(o.version for o in self.live.values())

    @invariant()
    def order_at_version_n_is_the_fold_of_its_first_n_events(self) -> None:
        for order_id, live in self.live.items():
            history = self.ledger.history(order_id)
            assert len(history) == live.version
            folded: Order | None = None
            for n, order_event in enumerate(history, start=1):
                folded = order_event.mutate(folded)
                assert folded is not None
                assert state(self.ledger.get_order(order_id, at_version=n)) == state(folded)

    @invariant()
    def fills_add_up_and_never_overfill(self) -> None:
        for live in self.live.values():
            assert live.filled_quantity <= live.quantity
            assert live.filled_quantity == sum(f.quantity for f in live.fills)
            assert len(live.trade_ids) == len(live.fills)
            assert live.filled_value == sum((f.value for f in live.fills), Decimal(0))


def _sqlite_url() -> tuple[str, Callable[[], None]]:
    directory = tempfile.TemporaryDirectory()
    return str(Path(directory.name) / "ledger.db"), directory.cleanup


RUN_SETTINGS = settings(max_examples=25, stateful_step_count=40, deadline=None)


def test_order_log_on_sqlite() -> None:
    machine = type("SQLiteOrderLog", (OrderLogMachine,), {"make_url": staticmethod(_sqlite_url)})
    run_state_machine_as_test(machine, settings=RUN_SETTINGS)


@pytest.mark.postgres
def test_order_log_on_postgres(postgres_database: str) -> None:
    def make_url() -> tuple[str, Callable[[], None]]:
        schema = f"p_{uuid.uuid4().hex[:12]}"

        def drop() -> None:
            with psycopg.connect(postgres_database, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )

        return f"{postgres_database}?schema={schema}", drop

    machine = type("PostgresOrderLog", (OrderLogMachine,), {"make_url": staticmethod(make_url)})
    run_state_machine_as_test(machine, settings=RUN_SETTINGS)
