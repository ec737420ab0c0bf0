"""An export is verified with no database: its hash chains, and a digest file's
checkpoints over it. An auditor handed an export can tell it is the ledger's, unaltered,
before rebuilding projections from it (the offline rebuild trusts its content)."""

from __future__ import annotations

import json
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
