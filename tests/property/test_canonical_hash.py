"""The event hash must never change for the same content: every stored event's `hash` was
computed when it was written, and `verify` recomputes it. The fast canonical form (one
conversion per type, orjson for the text) is checked here against the original definition
(isinstance chain, `json.dumps`), kept below as the reference, on arbitrary content."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain.values import Exchange, Side
from ledger.integrity import canonical_bytes, content_hash
from tests.property.fuzz import state_leaves
from tests.scale import scaled


def _reference_canonical(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Decimal):
        return {"$d": str(value)}
    if isinstance(value, datetime):
        return {"$t": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, UUID):
        return {"$u": str(value)}
    if isinstance(value, Enum):
        return _reference_canonical(value.value)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _reference_canonical(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _reference_canonical(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(_reference_canonical(v) for v in value)
    if isinstance(value, list | tuple):
        return [_reference_canonical(v) for v in value]
    if isinstance(value, float):
        raise TypeError("floats are not hashed: money and quantities are Decimal or int")
    raise TypeError(f"cannot hash a {type(value).__name__}")


def _reference_hash(
    topic: str, class_version: int, originator_id: UUID, version: int, state: Mapping[str, Any]
) -> str:
    skip = {"originator_id", "originator_version", "hash", "class_version"}
    document = {
        "topic": topic,
        "class_version": class_version,
        "order": str(originator_id),
        "version": version,
        "state": {k: _reference_canonical(v) for k, v in state.items() if k not in skip},
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Colour(Enum):
    RED = "red"
    BLUE = 2


class Level(IntEnum):
    LOW = 1


class Mode(StrEnum):
    FAST = "fast"


@dataclass(frozen=True)
class Pair:
    left: Any
    right: Any


_text = st.text(st.characters(codec="utf-8"), max_size=12)
_leaves = st.one_of(
    *state_leaves(_text),
    st.integers(),  # unbounded too: orjson refuses integers beyond 64 bits, json takes over
    st.sampled_from([Colour.RED, Colour.BLUE, Level.LOW, Mode.FAST, Side.BUY, Exchange.NSE]),
)
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(_text, st.integers()), inner, max_size=4),
        st.frozensets(st.integers(), max_size=4),
        st.frozensets(_text, max_size=4),
        st.builds(Pair, inner, inner),
    ),
    max_leaves=8,
)


@settings(max_examples=scaled(300, 5000))
@given(
    state=st.dictionaries(st.text(min_size=1, max_size=10), _values, max_size=8),
    version=st.integers(min_value=1, max_value=10**6),
    order=st.uuids(),
)
def test_the_fast_hash_is_the_reference_hash(
    state: dict[str, Any], version: int, order: UUID
) -> None:
    expected = _reference_hash("t.Filled", 2, order, version, state)
    assert (
        content_hash(
            topic="t.Filled",
            class_version=2,
            originator_id=order,
            originator_version=version,
            state=state,
        )
        == expected
    )


@settings(max_examples=scaled(300, 5000))
@given(st.recursive(_text | st.integers() | st.booleans() | st.none(), lambda i: st.lists(i)))
def test_canonical_bytes_are_what_json_dumps_gives(document: Any) -> None:
    expected = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_bytes({"d": document, "a": [document]}) == json.dumps(
        {"d": document, "a": [document]}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert canonical_bytes(document) == expected.encode("utf-8")


@pytest.mark.parametrize(
    ("value", "message"),
    [(1.5, "floats are not hashed"), (object(), "cannot hash a object"), (Pair, "cannot hash")],
)
def test_what_cannot_be_hashed_is_refused_as_before(value: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        _reference_hash("t", 2, UUID(int=1), 1, {"x": value})
    with pytest.raises(TypeError, match=message):
        content_hash(
            topic="t",
            class_version=2,
            originator_id=UUID(int=1),
            originator_version=1,
            state={"x": value},
        )


def test_text_that_is_not_unicode_is_refused_as_before() -> None:
    with pytest.raises(UnicodeEncodeError):
        _reference_hash("t", 2, UUID(int=1), 1, {"x": "\ud800"})
    with pytest.raises(UnicodeEncodeError):
        content_hash(
            topic="t",
            class_version=2,
            originator_id=UUID(int=1),
            originator_version=1,
            state={"x": "\ud800"},
        )
