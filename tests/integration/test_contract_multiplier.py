"""Where Kite's quantity counts contracts (CDS, BCD, MCX), a price move is worth the
contract's multiplier per unit of quantity (MCX GOLDM: 10). Kite's instruments dump does not
carry it: the catalog takes it from a `multiplier` column, the order and each fill record it,
and positions, P&L and statistics are in rupees. Without it, such an order is refused."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from ledger.application import OrderLedger
from ledger.domain.errors import InvalidCommand
from ledger.domain.order import Order
from ledger.instruments import InstrumentCatalog
from projections import all_projections
from projections.offline import export_log, offline_rebuild
from projections.pnl import pnl_report
from projections.pointintime import fold_all
from projections.positions import PositionsProjection, positions_of
from projections.rebuild import rebuild
from projections.runner import LedgerLog
from projections.statistics import statistics
from projections.store import store_for_file, store_for_ledger_url
from projections.verify import verify
from tests.conftest import LedgerFactory
from tests.support import accepted, fill, log_events, submit_command

D = Decimal
HEADER = "tradingsymbol,exchange,tick_size,lot_size,instrument_type,multiplier"
GOLDM = "GOLDM26DECFUT"


def gold_order(ledger: OrderLedger, client_order_id: str, side: str, quantity: int) -> Order:
    return ledger.submit(
        submit_command(
            client_order_id=client_order_id,
            exchange="MCX",
            tradingsymbol=GOLDM,
            side=side,
            quantity=quantity,
            product="NRML",
            price=D("72000"),
        )
    )


def test_an_order_whose_contract_multiplier_is_unknown_is_refused(
    make_ledger: LedgerFactory,
) -> None:
    catalog = InstrumentCatalog.from_csv_text(f"{HEADER}\n{GOLDM},MCX,1,1,FUT,\n")
    ledger = make_ledger(instruments=catalog)
    with pytest.raises(InvalidCommand, match=f"MCX:{GOLDM} has no contract multiplier"):
        gold_order(ledger, "g-1", "BUY", 1)
    assert ledger.count_events() == 0


def test_fills_carry_the_multiplier_into_positions_pnl_and_statistics(
    make_ledger: LedgerFactory, tmp_path: Path
) -> None:
    catalog = InstrumentCatalog.from_csv_text(f"{HEADER}\n{GOLDM},MCX,1,1,FUT,10\n")
    ledger = make_ledger(instruments=catalog)
    buy = gold_order(ledger, "g-1", "BUY", 3)
    ledger.record(accepted(buy, "B-1"))
    ledger.record(fill(buy, "T1", 3, "72000"))
    sell = gold_order(ledger, "g-2", "SELL", 1)
    ledger.record(accepted(sell, "B-2"))
    ledger.record(fill(sell, "T2", 1, "72100"))

    events = [event for _, event in log_events(ledger)]
    assert {e.multiplier for e in events if isinstance(e, Order.Submitted)} == {10}
    assert {e.multiplier for e in events if isinstance(e, Order.Filled)} == {10}
    assert ledger.get_order(buy.id).multiplier == 10

    views = fold_all(log_events(ledger), all_projections())
    (position,) = positions_of(views["positions"])
    assert position.net_quantity == 2
    assert position.average_price == D("72000")
    assert position.realised_pnl == D("1000")  # 100 a unit x 1 contract x 10
    assert (position.buy_value, position.sell_value) == (D("2160000"), D("721000"))
    assert position.unrealised_pnl(D("72050")) == D("1000")  # 50 x 2 contracts x 10
    (line,) = pnl_report(views["pnl"], marks={position.instrument: D("72050")})
    assert (line.realised_pnl, line.unrealised_pnl) == (D("1000"), D("1000"))
    assert statistics(views["statistics"]).total_turnover == D("2881000")

    # The store (live) and an offline rebuild of an export agree with the fold.
    positions_projection = PositionsProjection()
    store = store_for_ledger_url(ledger.storage)
    try:
        rebuild(LedgerLog(ledger), store, all_projections())
        result = verify(ledger, store, all_projections())
        assert result.ok, result.problems
        assert positions_of(store.load_view(positions_projection)) == [position]
    finally:
        store.close()
    export = tmp_path / "log.jsonl"
    export_log(ledger, export)
    offline_rebuild(export, tmp_path / "offline.db", all_projections())
    offline = store_for_file(tmp_path / "offline.db")
    try:
        assert positions_of(offline.load_view(positions_projection)) == [position]
    finally:
        offline.close()
