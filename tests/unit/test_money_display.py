"""How the command line shows an amount or a price: at least two decimals, at most four,
and never a negative zero (display only: the ledger keeps the exact value)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.cli import _money

D = Decimal


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        # Rounded to four places: stripping zeros after it left "100." and "-0.".
        ("100.0000049995", "100.00"),
        ("-0.00001", "0.00"),
        ("-0.00004999", "0.00"),
        ("-0", "0.00"),
        ("-0.00", "0.00"),
        ("0", "0.00"),
        ("100", "100.00"),
        ("1234567.5", "1,234,567.50"),
        ("812.35", "812.35"),
        ("813.9387", "813.9387"),
        ("813.93875", "813.9388"),  # half-even at the fourth place
        ("813.93865", "813.9386"),
        ("0.0025", "0.0025"),
        ("-386.1", "-386.10"),
        ("-0.00005001", "-0.0001"),
        ("99.99999", "100.00"),
    ],
)
def test_money_shows_two_to_four_decimals_and_no_negative_zero(value: str, shown: str) -> None:
    assert _money(D(value)) == shown


def test_no_amount_shows_nothing() -> None:
    assert _money(None) == ""


@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**15), max_value=10**15))
def test_money_is_the_value_to_four_places(value: Decimal) -> None:
    shown = _money(value)
    places = shown.partition(".")[2]
    assert 2 <= len(places) <= 4
    assert not shown.startswith("-") or D(shown.replace(",", "")) != 0
    assert abs(D(shown.replace(",", "")) - value) <= D("0.00005")
