"""The ledger's fast transcoder writes what the library's JSON transcoder writes.

Stored events are read back by the library's decoder (and by anyone's, offline), so the
fast encoding must give the same bytes for every state the ledger stores, and for anything
else either the same bytes or the library's own behaviour (it hands those to the library)."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder, TranscodingNotRegisteredError
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain.identity import order_id_for
from ledger.domain.values import Exchange, Fill, OrderChanges, Side, Source
from ledger.persistence import LedgerTranscoder, register_ledger_transcodings
from tests.conftest import LedgerFactory
from tests.flows import Intent, drive
from tests.property.fuzz import json_values, state_leaves
from tests.scale import scaled
from tests.support import START


def _both() -> tuple[JSONTranscoder, LedgerTranscoder]:
    reference, fast = JSONTranscoder(), LedgerTranscoder()
    for transcoder in (reference, fast):
        Application.register_transcodings(Application(), transcoder)
        register_ledger_transcodings(transcoder)
    return reference, fast


REFERENCE, FAST = _both()

_text = st.text(st.characters(codec="utf-8"), max_size=10)
_leaves = st.one_of(
    *state_leaves(_text),
    st.sampled_from(list(Side) + list(Exchange) + list(Source)),
    st.builds(
        OrderChanges,
        quantity=st.none() | st.integers(min_value=1, max_value=10**6),
        price=st.none() | st.decimals(min_value=1, max_value=10**6, places=2),
    ),
    st.frozensets(_text, max_size=3).map(set),
)
_states = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(_text, inner, max_size=4),
    ),
    max_leaves=10,
)


@settings(max_examples=scaled(300, 5000))
@given(st.dictionaries(st.text(min_size=1, max_size=10), _states, max_size=8))
def test_fast_encoding_is_byte_for_byte_the_library_s(state: dict[str, Any]) -> None:
    assert FAST.encode(state) == REFERENCE.encode(state)


@pytest.mark.parametrize(
    "state",
    [
        {"x": 1.5},  # floats keep json's spelling
        {"x": float("nan")},
        {1: "a key that is not text"},
        {"x": {None: 1, True: 2}},
        {"x": 2**64},  # wider than orjson takes
        {"x": [date(2026, 1, 1), ("t", Decimal("1.10"))]},
    ],
)
def test_what_the_fast_path_does_not_take_is_encoded_by_the_library(
    state: dict[Any, Any],
) -> None:
    assert FAST.encode(state) == REFERENCE.encode(state)


def test_unregistered_types_and_bad_text_are_refused_as_the_library_refuses() -> None:
    with pytest.raises(TranscodingNotRegisteredError):
        FAST.encode({"x": object()})
    with pytest.raises(UnicodeEncodeError):
        FAST.encode({"x": "\ud800"})


def test_every_stored_event_and_snapshot_is_what_the_library_would_store(
    make_ledger: LedgerFactory,
) -> None:
    ledger = make_ledger()
    plan = [Intent("submit", o, ("BUY" if o % 2 else "SELL", 200, o % 3, None)) for o in range(4)]
    plan += [Intent("accept", o) for o in range(3)] + [Intent("modify", 0), Intent("reject", 3)]
    plan += [Intent("fill", 1, (t, 1, t % 7 - 3)) for t in range(120)]  # a snapshot at 100
    plan += [Intent("cancel", 2), Intent("cancelled", 2)]
    drive(ledger, plan)
    checked = 0
    for notification in ledger.recorder.select_notifications(start=1, limit=10_000):
        state = REFERENCE.decode(notification.state)
        assert FAST.encode(state) == REFERENCE.encode(state) == notification.state
        checked += 1
    assert ledger.snapshots is not None
    snapshots = list(ledger.snapshots.recorder.select_events(order_id_for("AB1234", "o1")))
    assert snapshots, "120 fills make a snapshot"
    for snapshot in snapshots:
        state = REFERENCE.decode(snapshot.state)
        assert FAST.encode(state) == REFERENCE.encode(state) == snapshot.state
    assert checked > 100
    fill = Fill("T1", 1, Decimal("812.30"), None, Source.POSTBACK, START, None)
    assert FAST.encode({"fills": [fill]}) == REFERENCE.encode({"fills": [fill]})


def _decoded(transcoder: JSONTranscoder, data: bytes) -> str:
    """What decoding gives, type for type (repr), or the kind of error it raises."""
    try:
        return repr(transcoder.decode(data))
    except Exception as error:
        return f"raised {type(error).__name__}"


@settings(max_examples=scaled(300, 5000))
@given(st.dictionaries(st.text(min_size=1, max_size=10), _states, max_size=8))
def test_fast_decoding_gives_what_the_library_gives(state: dict[str, Any]) -> None:
    data = REFERENCE.encode(state)
    assert _decoded(FAST, data) == _decoded(REFERENCE, data)


_wrapped = st.fixed_dictionaries(
    {
        "_type_": st.sampled_from(["decimal_str", "Side", "instrument_ref", "nobody", 7]),
        "_data_": json_values,
    }
)
_json_like = st.recursive(
    json_values | _wrapped,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=scaled(300, 5000))
@given(_json_like, st.booleans())
def test_fast_decoding_of_any_json_gives_what_the_library_gives_or_its_error(
    value: Any, ascii: bool
) -> None:
    """Foreign or damaged states too: unknown types, wrong data for a known type, integers
    beyond 64 bits, NaN, lone surrogates, non-ASCII text."""
    data = json.dumps(value, ensure_ascii=ascii).encode("utf-8", errors="surrogatepass")
    assert _decoded(FAST, data) == _decoded(REFERENCE, data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"q": 123456789012345678901234, "p": {"_type_": "decimal_str", "_data_": "1.10"}}',
        b'{"x": NaN}',
        b'{"x": "\\ud800"}',
        b'{"x": {"_type_": "nobody", "_data_": 1}}',
        b'{"x": [{"_type_": "decimal_str", "_data_": "2"}, {"_type_": "Side", "_data_": "BUY"}]}',
        b"\xff\xfe",
        b"[1, 2",
        # over 4 kB (a snapshot's fill rows): left to the library's decoder
        json.dumps({"fill_rows": [["T", 1, "812.30", None]] * 300}).encode(),
        json.dumps({"x": [{"_type_": "decimal_str", "_data_": "1"}] * 300}).encode(),
    ],
)
def test_fast_decoding_edge_cases(data: bytes) -> None:
    assert _decoded(FAST, data) == _decoded(REFERENCE, data)
