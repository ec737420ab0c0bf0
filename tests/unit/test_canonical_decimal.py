"""`money` / `_normal` bring amounts to the one canonical form every store round-trips as
text: no trailing zeros, no positive exponent. A shortcut skips the digit tuple for values
whose text is already positional; these examples hold it to the long way's answers."""

from __future__ import annotations

from collections.abc import Callable
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
    | st.sampled_from(
        [Decimal("1E+2"), Decimal("100.00"), Decimal("1E-7"), Decimal("-0.000"), Decimal("1E+28")]
    )
)
def test_money_is_the_canonical_form(value: Decimal) -> None:
    assert _outcome(money, value) == _outcome(the_long_way, value)


def _outcome(canonical: Callable[[Decimal], Decimal], value: Decimal) -> tuple[str, ...]:
    """The canonical form's text and repr, or the error: a value of 29 digits or more
    (1E+28) cannot be written positionally in the default context, either way."""
    try:
        got = canonical(value)
    except ArithmeticError as error:
        return ("raised", type(error).__name__)
    return (str(got), repr(got))
