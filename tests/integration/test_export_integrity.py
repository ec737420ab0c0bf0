"""An export is verified with no database: its hash chains, and a digest file's
checkpoints over it. An auditor handed an export can tell it is the ledger's, unaltered,
before rebuilding projections from it (the offline rebuild trusts its content)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

from ledger.application import OrderLedger
from ledger.checkpoints import export_checkpoints, load_digests, write_checkpoint
from projections.offline import export_integrity, export_log
from tests.conftest import LedgerFactory
from tests.support import FakeClock, accepted, fill, submit_command


def _ledger_with_digest(make_ledger: LedgerFactory, tmp_path: Path) -> tuple[OrderLedger, Path]:
    clock = FakeClock()
    ledger = make_ledger(clock=clock)
    for n in range(4):
        order = ledger.submit(submit_command(client_order_id=f"audit-{n}", quantity=100))
        ledger.record(accepted(order, f"B{n}"))
        ledger.record(fill(order, f"T{n}a", 40))
        ledger.record(fill(order, f"T{n}b", 60))
        if n == 2:
            write_checkpoint(ledger)
            export_checkpoints(ledger, tmp_path / "digests.json")
        clock.advance(timedelta(days=1))
    return ledger, tmp_path / "digests.json"


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_a_whole_export_verifies_against_its_chains_and_the_digest_file(
    make_ledger: LedgerFactory, tmp_path: Path, suffix: str
) -> None:
    ledger, digests = _ledger_with_digest(make_ledger, tmp_path)
    export = tmp_path / f"log.{suffix}"
    export_log(ledger, export)
    report = export_integrity(export, reference=load_digests(digests))
    assert report.findings == []
    assert (report.chains.orders, report.chains.chained) == (4, 16)
    assert report.reference_checkpoints == 1
    assert report.after_last_reference == 4


def test_an_altered_export_is_named_at_its_first_bad_event(
    make_ledger: LedgerFactory, tmp_path: Path
) -> None:
    ledger, digests = _ledger_with_digest(make_ledger, tmp_path)
    export = tmp_path / "log.jsonl"
    export_log(ledger, export)
    lines = export.read_text().splitlines()
    record = json.loads(lines[2])  # the first order's first fill: 40 shares
    assert '"quantity":40' in record["state"].replace(" ", "")
    record["state"] = (
        record["state"]
        .replace('"quantity": 40', '"quantity": 400')
        .replace('"quantity":40', '"quantity":400')
    )
    altered = tmp_path / "altered.jsonl"
    altered.write_text("\n".join([*lines[:2], json.dumps(record), *lines[3:]]) + "\n")
    report = export_integrity(altered, reference=load_digests(digests))
    assert report.findings
    assert report.findings[0].position == record["position"]
    assert "altered" in str(report.findings[0])

    dropped = tmp_path / "dropped.jsonl"
    dropped.write_text("\n".join([*lines[:5], *lines[6:]]) + "\n")  # order 2's Accepted
    found = [str(f) for f in export_integrity(dropped).findings]
    assert found
    assert "version 2 missing" in found[0] or "does not follow" in found[0]


def test_a_windowed_export_verifies_by_its_chains(
    make_ledger: LedgerFactory, tmp_path: Path
) -> None:
    """A window holds whole orders, so their chains are complete; the digest file's
    checkpoints cover positions it lacks, and name them."""
    ledger, digests = _ledger_with_digest(make_ledger, tmp_path)
    day = FakeClock().now + timedelta(days=1)
    export = tmp_path / "day.jsonl"
    export_log(ledger, export, since=day, until=day + timedelta(days=1))
    assert len(export.read_text().splitlines()) == 4
    assert export_integrity(export).findings == []
    against_digest = [
        str(f) for f in export_integrity(export, reference=load_digests(digests)).findings
    ]
    assert any("was deleted" in finding for finding in against_digest)


def _edited_jsonl(export: Path, into: Path, line: int, **changes: object) -> Path:
    lines = export.read_text().splitlines()
    record = json.loads(lines[line])
    record.update(changes)
    into.write_text("\n".join([*lines[:line], json.dumps(record), *lines[line + 1 :]]) + "\n")
    return into


def test_the_columns_an_analyst_queries_are_held_to_the_hashed_state(
    make_ledger: LedgerFactory, tmp_path: Path
) -> None:
    """event_type and recorded_at repeat what the hashed state says, and are what an
    analyst queries (`select event_type, count(*) from 'log.parquet'`); they were not
    read, so an export with them altered verified, digest and all. So did JSON lines
    with position "5" or 5.9, extra or missing fields, and a row of another topic."""
    import pyarrow.parquet as pq

    from projections.offline import ExportError

    ledger, digests = _ledger_with_digest(make_ledger, tmp_path)
    reference = load_digests(digests)
    jsonl, parquet = tmp_path / "log.jsonl", tmp_path / "log.parquet"
    export_log(ledger, jsonl)
    export_log(ledger, parquet)
    first_fill = json.loads(jsonl.read_text().splitlines()[2])
    assert first_fill["event_type"] == "Filled"
    edits: list[tuple[dict[str, object], str]] = [
        ({"event_type": "Cancelled"}, "event_type 'Cancelled' is not the event's own"),
        ({"recorded_at": "2026-01-01T00:00:00+00:00"}, "recorded_at 2026-01-01 00:00:00+00:00"),
        ({"position": str(first_fill["position"])}, "position and version must be whole"),
        ({"version": 2.5}, "position and version must be whole numbers"),
        ({"quantity": 999}, "fields quantity are not an export's"),
        ({"topic": "someone.else:Filled"}, "topic 'someone.else:Filled' is not an order's"),
    ]
    for n, (changes, message) in enumerate(edits):
        altered = _edited_jsonl(jsonl, tmp_path / f"edit{n}.jsonl", 2, **changes)
        with pytest.raises(ExportError, match=re.escape(message)):
            export_integrity(altered, reference=reference)
    table = pq.read_table(parquet)
    kinds = table.column("event_type").to_pylist()
    kinds[2] = "Cancelled"
    pq.write_table(table.set_column(4, "event_type", [kinds]), tmp_path / "kinds.parquet")
    with pytest.raises(ExportError, match="event_type 'Cancelled' is not the event's own"):
        export_integrity(tmp_path / "kinds.parquet", reference=reference)
    positions = [float(p) for p in table.column("position").to_pylist()]
    pq.write_table(table.set_column(0, "position", [positions]), tmp_path / "floats.parquet")
    with pytest.raises(ExportError, match="column position is double, not int64"):
        export_integrity(tmp_path / "floats.parquet")
    assert export_integrity(parquet, reference=reference).findings == []


def test_a_digest_file_with_numbers_that_are_not_whole_is_refused(
    make_ledger: LedgerFactory, tmp_path: Path
) -> None:
    """1e999 in a digest file (JSON's infinity) ended in an OverflowError traceback."""
    from ledger.checkpoints import DigestFileError

    _, digests = _ledger_with_digest(make_ledger, tmp_path)
    document = json.loads(digests.read_text())
    text = json.dumps(document).replace(
        f'"seq": {document["checkpoints"][0]["seq"]}', '"seq": 1e999'
    )
    digests.write_text(text)
    with pytest.raises(DigestFileError, match="seq must be a whole number, got inf"):
        load_digests(digests)
