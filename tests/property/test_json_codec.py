"""The projections parse stored states and write the audit trail's details with orjson,
where it is certain to agree with Python's `json`: these properties hold them to exactly
what `json` gives (the same values of the same types, the same text), whatever the state
holds (integers beyond 64 bits, NaN, floats, lone surrogates, non-ASCII text)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.audit import encode_details
from projections.base import parse_state
from tests.property.fuzz import BIG_INTS, json_values

_encode = json.JSONEncoder(separators=(",", ":")).encode

objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)


def outcome(call: Any) -> str:
    """What a call gives, type for type (repr tells 1 from 1.0 and True), or its error."""
    try:
        return repr(call())
    except Exception as error:  # the same kind of failure counts as the same outcome
        return f"raised {type(error).__name__}"


@given(objects, st.booleans(), st.booleans())
def test_a_state_parses_to_what_json_gives(value: dict[str, Any], ascii: bool, raw: bool) -> None:
    """As text or as the bytes a database gives (UTF-8, decoded strictly, as before)."""
    text = json.dumps(value, ensure_ascii=ascii)
    state: str | bytes = text.encode("utf-8", errors="surrogatepass") if raw else text
    expected = outcome(lambda: json.loads(state if isinstance(state, str) else str(state, "utf-8")))
    assert outcome(lambda: parse_state(state)) == expected


@pytest.mark.parametrize("number", [*BIG_INTS, 2**64 - 1, 2**64, -(2**63), 10**19])
def test_integers_beyond_64_bits_stay_integers(number: int) -> None:
    parsed = parse_state(f'{{"quantity":{number}}}')
    assert type(parsed["quantity"]) is int
    assert parsed["quantity"] == number


@given(objects)
def test_details_are_written_as_json_writes_them(details: dict[str, Any]) -> None:
    assert outcome(lambda: encode_details(details)) == outcome(lambda: _encode(details))


@pytest.mark.parametrize(
    "details",
    [
        {"reason": "naïve ₹ \u2028 \x7f \x00 \ud800", "quantity": 10},
        {"quantity": 2**64, "price": "812.30"},
        {"price": 1e-07, "n": float("nan")},
        {"changes": {"quantity": 5}},
        {"a": True, "b": None, "c": -(2**63)},
    ],
)
def test_details_edge_cases(details: dict[str, Any]) -> None:
    assert encode_details(details) == _encode(details)
