"""Fuzz: export files read by the offline rebuild (JSON lines and Parquet).

A real export is damaged: a record's columns or its stored event state changed (wrong
types, missing and extra keys, huge numbers, floats for money, unknown topics, broken log
order), bytes flipped or truncated, lines dropped or repeated. `offline_rebuild` either
folds it or raises `ExportError` (a `LedgerError`) naming the file, and a refused export
leaves no projection rows behind.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.application import open_ledger
from ledger.domain.errors import LedgerError
from projections import all_projections
from projections.offline import export_log, offline_rebuild
from tests.property.fuzz import damaged_bytes, field_values, json_values, mutated
from tests.scale import report, scaled
from tests.support import FakeClock, accepted, fill, submit_command


class Exports:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        with open_ledger(folder / "ledger.db", clock=FakeClock()) as ledger:
            for n in range(3):
                order = ledger.submit(submit_command(client_order_id=f"x-{n}", quantity=100))
                ledger.record(accepted(order, f"B{n}"))
                ledger.record(fill(order, f"T{n}a", 40))
                ledger.record(fill(order, f"T{n}b", 60, price="812.40"))
            export_log(ledger, folder / "log.jsonl")
        # An analyst's earlier rebuild, which a refused rebuild must leave as it was.
        self.earlier = folder / "earlier.sqlite"
        offline_rebuild(folder / "log.jsonl", self.earlier, all_projections())
        self.lines = (folder / "log.jsonl").read_bytes().splitlines(keepends=True)
        self.records = [json.loads(line) for line in self.lines]
        self.numbers = itertools.count()
        self.tried = 0

    def path(self, suffix: str) -> Path:
        return self.folder / f"case-{next(self.numbers)}{suffix}"


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exports]:
    made = Exports(tmp_path_factory.mktemp("exports"))
    yield made
    report("fuzz", boundary="exports", inputs_tried=made.tried)


@st.composite
def damaged_records(draw: st.DrawFn, records: list[dict[str, Any]]) -> list[Any]:
    """The export's records with one changed: a column, or a key inside its event state;
    or records dropped, repeated or swapped."""
    records = [dict(r) for r in records]
    index = draw(st.integers(min_value=0, max_value=len(records) - 1))
    action = draw(st.sampled_from(["column", "state", "state", "order", "junk"]))
    if action == "column":
        records[index] = draw(mutated(records[index], field_values))
    elif action == "state":
        state = json.loads(records[index]["state"])
        records[index]["state"] = json.dumps(draw(mutated(state, field_values)), default=str)
    elif action == "order":
        other = draw(st.integers(min_value=0, max_value=len(records) - 1))
        how = draw(st.sampled_from(["swap", "repeat", "drop"]))
        if how == "swap":
            records[index], records[other] = records[other], records[index]
        elif how == "repeat":
            records.insert(other, records[index])
        else:
            del records[index]
    else:
        records[index] = draw(json_values)
    return records


def _jsonl(records: list[Any]) -> bytes:
    return b"".join(
        json.dumps(r, default=str).encode("utf-8", errors="surrogatepass") + b"\n" for r in records
    )


def _write_parquet(path: Path, records: list[Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pylist([r if isinstance(r, dict) else {"x": r} for r in records])
        pq.write_table(table, str(path))
        return
    except (pa.ArrowException, TypeError, ValueError, OverflowError, UnicodeError):
        pass
    # Types arrow cannot hold in one column, or text it cannot encode: write them as text
    # (with lone surrogates escaped), one column per key, at least one column.
    rows = [
        {str(k): str(v).encode("utf-8", "backslashreplace").decode() for k, v in r.items()}
        if isinstance(r, dict)
        else {"x": str(r)}
        for r in records
    ]
    pq.write_table(pa.Table.from_pylist([row or {"x": ""} for row in rows]), str(path))


def _rebuild(exports: Exports, export: Path) -> None:
    exports.tried += 1
    into = exports.path(".sqlite")
    shutil.copyfile(exports.earlier, into)
    before = into.read_bytes()
    refusal: LedgerError | None = None
    try:
        offline_rebuild(export, into, all_projections(), batch_size=4)
    except LedgerError as error:
        refusal = error
    if refusal is None:
        return
    assert str(export) in str(refusal), str(refusal)
    # All or nothing: the earlier rebuild is untouched and no partial file is left beside it.
    assert into.read_bytes() == before, f"refused ({refusal}) but changed {into.name}"
    assert not list(into.parent.glob(f"{into.stem}.partial-*")), "a partial rebuild was left"


@settings(max_examples=scaled(120, 1200))
@given(data=st.data())
def test_damaged_jsonl_exports_fold_or_are_refused(exports: Exports, data: st.DataObject) -> None:
    body = _jsonl(data.draw(damaged_records(exports.records), label="records"))
    if data.draw(st.booleans(), label="damage bytes"):
        body = data.draw(damaged_bytes(body), label="bytes")
    export = exports.path(".jsonl")
    export.write_bytes(body)
    _rebuild(exports, export)


@settings(max_examples=scaled(40, 400))
@given(data=st.data())
def test_damaged_parquet_exports_fold_or_are_refused(exports: Exports, data: st.DataObject) -> None:
    export = exports.path(".parquet")
    _write_parquet(export, data.draw(damaged_records(exports.records), label="records"))
    if data.draw(st.booleans(), label="damage bytes"):
        export.write_bytes(data.draw(damaged_bytes(export.read_bytes()), label="bytes"))
    _rebuild(exports, export)


@settings(max_examples=scaled(40, 400))
@given(body=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".parquet", ".txt"]))
def test_junk_files_are_refused(exports: Exports, body: bytes, suffix: str) -> None:
    export = exports.path(suffix)
    export.write_bytes(body)
    _rebuild(exports, export)
