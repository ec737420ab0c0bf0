"""Instrument reference data from Kite's instruments dump."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.domain.errors import UnknownInstrument
from ledger.domain.values import Exchange, InstrumentRef
from ledger.instruments import InstrumentCatalog, InstrumentDataError

KITE_SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "kite"


@pytest.fixture
def samples() -> Path:
    if not (KITE_SAMPLES / "instruments_all.csv").exists():
        pytest.skip(f"Kite sample payloads NOT FOUND at {KITE_SAMPLES}")
    return KITE_SAMPLES


def test_kite_dump_samples_parse(samples: Path) -> None:
    catalog = InstrumentCatalog.from_csv(samples / "instruments_all.csv")
    assert len(catalog) == 99
    option = catalog.get(InstrumentRef(Exchange.NFO, "BANKNIFTY18JAN23500CE"))
    assert option.tick_size == Decimal("0.05")
    assert option.lot_size == 40
    assert option.expiry == date(2018, 1, 25)
    assert option.strike == Decimal("23500")
    assert option.instrument_token == 12073986
    bse = catalog.get(InstrumentRef(Exchange.BSE, "RCL14JUL16B"))
    assert bse.lot_size == 10
    nse = InstrumentCatalog.from_csv(samples / "instruments_nse.csv")
    assert all(i.ref.exchange is Exchange.NSE for i in nse)


def test_unknown_instrument_is_named() -> None:
    catalog = InstrumentCatalog.bundled()
    with pytest.raises(UnknownInstrument, match="NSE:NOSUCH"):
        catalog.get(InstrumentRef(Exchange.NSE, "NOSUCH"))


def test_bundled_sample_has_the_demo_instruments() -> None:
    catalog = InstrumentCatalog.bundled()
    assert catalog.get(InstrumentRef(Exchange.NSE, "SBIN")).tick_size == Decimal("0.05")
    assert catalog.get(InstrumentRef(Exchange.NFO, "NIFTY26DECFUT")).lot_size == 65


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("1,1,X,X,0,,0,abc,1,EQ,NSE,NSE", "tick_size: not a number"),
        ("1,1,X,X,0,,0,0,1,EQ,NSE,NSE", "tick_size: must be positive"),
        ("1,1,X,X,0,,0,0.05,one,EQ,NSE,NSE", "lot_size: not a whole number"),
        ("1,1,X,X,0,,0,0.05,0,EQ,NSE,NSE", "lot_size: must be positive"),
        ("1,1,X,X,0,2026-13-01,0,0.05,1,FUT,NFO,NFO", "expiry: not a date"),
    ],
)
def test_malformed_rows_name_the_line_and_column(row: str, message: str) -> None:
    header = (
        "instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,"
        "tick_size,lot_size,instrument_type,segment,exchange"
    )
    with pytest.raises(InstrumentDataError, match=f"dump.csv:2: {message}"):
        InstrumentCatalog.from_csv_text(f"{header}\n{row}\n", origin="dump.csv")


def test_missing_columns_are_named() -> None:
    with pytest.raises(InstrumentDataError, match="missing column"):
        InstrumentCatalog.from_csv_text("tradingsymbol,exchange\nSBIN,NSE\n")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InstrumentDataError, match="cannot read instruments file"):
        InstrumentCatalog.from_csv(tmp_path / "nope.csv")


def test_unlisted_segments_are_skipped() -> None:
    header = "tradingsymbol,exchange,tick_size,lot_size"
    catalog = InstrumentCatalog.from_csv_text(f"{header}\nNIFTY 50,INDICES,0,0\nSBIN,NSE,0.05,1\n")
    assert len(catalog) == 1


def test_contract_multipliers_come_from_an_optional_column() -> None:
    """Kite's dump has no multiplier; where its quantity counts contracts (CDS, BCD, MCX) a
    row without one has none (orders on it are refused), elsewhere it is 1."""
    header = "tradingsymbol,exchange,tick_size,lot_size,multiplier"
    catalog = InstrumentCatalog.from_csv_text(
        f"{header}\nGOLDM,MCX,1,1,10\nUSDINR,CDS,0.0025,1,1000.0\nCRUDE,MCX,1,1,\nSBIN,NSE,0.05,1,\n"
    )
    multipliers = {i.ref.tradingsymbol: i.multiplier for i in catalog}
    assert multipliers == {"GOLDM": 10, "USDINR": 1000, "CRUDE": None, "SBIN": 1}
    plain = InstrumentCatalog.from_csv_text(
        "tradingsymbol,exchange,tick_size,lot_size\nUSDINR,BCD,0.0025,1\nNIFTY,NFO,0.05,65\n"
    )
    assert {i.ref.tradingsymbol: i.multiplier for i in plain} == {"USDINR": None, "NIFTY": 1}


@pytest.mark.parametrize("value", ["0", "-10", "2.5", "ten"])
def test_a_bad_multiplier_is_named(value: str) -> None:
    header = "tradingsymbol,exchange,tick_size,lot_size,multiplier"
    with pytest.raises(InstrumentDataError, match=r"dump\.csv:2: multiplier: "):
        InstrumentCatalog.from_csv_text(f"{header}\nGOLDM,MCX,1,1,{value}\n", origin="dump.csv")
