"""Strategies shared by the property tests: values an event state holds, wrong values,
mutated records and junk bytes.

Two kinds of bad input: structured-but-wrong (a real record with a field of the wrong type,
missing, extra, huge, negative, NaN, a float where money goes, an unknown enum value, a
timestamp in the wrong zone) and random junk (any JSON value, any bytes).
"""

from __future__ import annotations

import json
from datetime import UTC, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from ledger.domain.values import Exchange, InstrumentRef


def state_leaves(text: st.SearchStrategy[str]) -> list[st.SearchStrategy[Any]]:
    """The plain values an event state holds, for the encoding tests to combine with their
    own extras: None, booleans, integers beyond 64 bits, `text`, decimals, aware times (UTC
    and IST), dates, UUIDs and instruments."""
    return [
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        text,
        st.decimals(allow_nan=False, allow_infinity=False),
        st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))])),
        st.dates(),
        st.uuids(),
        st.builds(InstrumentRef, st.sampled_from(list(Exchange)), st.text(min_size=1, max_size=8)),
    ]


#: Real Kite Connect payloads (orders, order history, trades, postback).
KITE_SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "kite"


def kite_sample(name: str) -> Any:
    return json.loads((KITE_SAMPLES / name).read_text())


#: Text that parsers tend to get wrong.
NASTY_TEXT = [
    "",
    " ",
    "\x00",
    "\n",
    "NaN",
    "nan",
    "-NaN",
    "sNaN",
    "Infinity",
    "-Infinity",
    "inf",
    "1e999999",
    "-1e999999",
    "1e-999999",
    "1E+30",
    "9" * 40,
    "0",
    "-0",
    "-1",
    "0.05",
    "0.1",
    "812.35",
    "812.351",
    "1_000",
    "0x10",
    "\uff11\uff12\uff13",  # full-width digits
    "٣",  # an Arabic-Indic digit
    "abc",
    "null",
    "true",
    "[]",
    "{}",
    "2021-05-31 09:16:39",
    "2021-05-31T09:16:39",
    "2021-05-31T09:16:39Z",
    "2021-05-31T09:16:39+05:30",
    "2021-05-31T09:16:39-23:59",
    "2021-05-31T09:16:39+14:00",
    "2021-02-30 10:00:00",
    "2021-05-31 25:61:61",
    "9999-12-31 23:59:59",
    "0001-01-01 00:00:00",
    "09:16:39",
    "24:00:00",
    "2021-05-31",
    "yesterday",
    "MARKET",
    "LIMIT",
    "SL",
    "SL-M",
    "sl-m",
    "BOGUS",
    "BUY",
    "SELL",
    "buy",
    "NSE",
    "NCO",
    "nse",
    "CNC",
    "MIS",
    "COMPLETE",
    "OPEN",
    "CANCELLED",
    "REJECTED",
    "UPDATE",
    "TRIGGER PENDING",
    "regular",
    "iceberg",
    "DAY",
    "IOC",
    "TTL",
    "x" * 300,
    "\ud800",  # a lone surrogate: cannot be encoded as UTF-8
    "e\u0301",
    "SBIN\u200b",
    "NSE:SBIN",
    "NSE:",
    ":SBIN",
    "00000000-0000-0000-0000-000000000000",
]

BIG_INTS = [
    0,
    -1,
    1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    10**30,
    -(10**30),
]

json_scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from(BIG_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.05, 0.1, 812.35, -0.0, 1e300, -1e-300, 72.755]),
    st.text(max_size=12),
    st.sampled_from(NASTY_TEXT),
)

#: Any JSON-like value (NaN and infinities included: Python's json reads and writes them).
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(max_size=8), children, max_size=3),
    ),
    max_leaves=6,
)

#: What a field of a record may be replaced with: anything, or Python values a caller
#: might pass in-process (Decimal specials, bytes, sets).
field_values: st.SearchStrategy[Any] = st.one_of(
    json_values,
    st.sampled_from(
        [
            Decimal("NaN"),
            Decimal("sNaN"),
            Decimal("Infinity"),
            Decimal("-Infinity"),
            Decimal("1e999999"),
            Decimal("-0.05"),
            Decimal("0.0000001"),
            b"\xff\xfe",
            frozenset({1}),
        ]
    ),
)


@st.composite
def mutated(
    draw: st.DrawFn, base: dict[str, Any], values: st.SearchStrategy[Any] = json_values
) -> dict[str, Any]:
    """`base` with one to four fields replaced, removed or added."""
    record = dict(base)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if action == "add" or not record:
            record[draw(st.text(max_size=10))] = draw(values)
            continue
        key = draw(st.sampled_from(sorted(record)))
        if action == "remove":
            del record[key]
        else:
            record[key] = draw(values)
    return record


def to_json_bytes(value: Any) -> bytes:
    """`value` as JSON text (Python's json: NaN and Infinity as bare words), UTF-8 with
    lone surrogates escaped by json itself."""
    return json.dumps(value, default=str).encode("utf-8", errors="surrogatepass")


@st.composite
def damaged_bytes(draw: st.DrawFn, body: bytes) -> bytes:
    """`body` truncated, with bytes flipped, inserted (invalid UTF-8 among them) or
    prefixed by a byte-order mark."""
    action = draw(st.sampled_from(["truncate", "flip", "insert", "bom", "latin1"]))
    if action == "truncate":
        return body[: draw(st.integers(min_value=0, max_value=max(len(body) - 1, 0)))]
    if action == "bom":
        return b"\xef\xbb\xbf" + body
    if action == "latin1":
        return body.decode("utf-8", errors="surrogateescape").encode("latin-1", errors="replace")
    at = draw(st.integers(min_value=0, max_value=len(body)))
    junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\x00", b"\xed\xa0\x80", b"}", b'"']))
    if action == "insert" or at == len(body):
        return body[:at] + junk + body[at:]
    return body[:at] + junk + body[at + 1 :]
