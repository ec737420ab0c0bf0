"""Order ids as the projections read them: SQLite keeps 32 hex digits and the folds key rows
by the canonical (dashed) text. The database makes that text as it reads; whatever is
stored, the ids read must be what `canonical_id` in Python made of the stored text."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from projections.runner import _SQLITE_CANONICAL_ID, canonical_id


def _in_python(stored: str) -> str:
    """What the runner did before the database made the text: canonical_id of anything
    that is not already 36 characters long."""
    return stored if len(stored) == 36 else canonical_id(stored)


def _through_the_database(stored: str) -> str:
    conn = sqlite3.connect(":memory:")
    try:
        row = conn.execute(
            f"SELECT {_SQLITE_CANONICAL_ID} FROM (SELECT ? AS originator_id)", (stored,)
        ).fetchone()
    finally:
        conn.close()
    return _in_python(row[0])


def _outcome(read: Callable[[str], str], stored: str) -> str:
    try:
        return read(stored)
    except ValueError as error:
        return f"ValueError: {error}"


_STORED_IDS = st.one_of(
    st.uuids().flatmap(
        lambda u: st.sampled_from([u.hex, u.hex.upper(), str(u), str(u).upper(), f"{{{u}}}"])
    ),
    st.text(alphabet="0123456789abcdefgABCDEF-", min_size=30, max_size=38),
    st.tuples(st.uuids(), st.text(max_size=4)).map(lambda pair: f"{pair[0].hex}\x00{pair[1]}"),
    st.text(max_size=40),
)


@given(_STORED_IDS)
def test_the_database_reads_every_stored_id_as_python_did(stored: str) -> None:
    assert _outcome(_through_the_database, stored) == _outcome(_in_python, stored)


def test_a_stored_uuid_is_read_in_its_canonical_form() -> None:
    order_id = uuid.uuid4()
    assert _through_the_database(order_id.hex) == str(order_id)
