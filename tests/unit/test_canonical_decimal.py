"""`money` / `_normal` bring amounts to the one canonical form every store round-trips as
text: no trailing zeros, no positive exponent. A shortcut skips the digit tuple for values
whose text is already positional; these examples hold it to the long way's answers."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from projections.base import ZERO, money


def the_long_way(value: Decimal) -> Decimal:
    if not value:
        return ZERO
    normalized = value.normalize()
    exponent = normalized.as_tuple().exponent
    assert isinstance(exponent, int)
    return normalized if exponent <= 0 else normalized.quantize(Decimal(1))


@given(
    st.decimals(allow_nan=False, allow_infinity=False, places=None)
    | st.sampled_from([Decimal("1E+2"), Decimal("100.00"), Decimal("1E-7"), Decimal("-0.000")])
)
def test_money_is_the_canonical_form(value: Decimal) -> None:
    got, expected = money(value), the_long_way(value)
    assert str(got) == str(expected)
    assert repr(got) == repr(expected)
