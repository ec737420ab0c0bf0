"""Security properties that are not about crashes: checksums compared in constant time,
and text that looks like SQL stored as text everywhere (every statement is parameterised).
Credentials never reaching output, the database or exports: tests/e2e/test_kite_commands.py.
"""

from __future__ import annotations

import hmac
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ledger.checkpoints import check_integrity, write_checkpoint
from ledger.commands import CancelOrder, RecordCancelled
from ledger.kite.postbacks import PostbackRefused, expected_checksum, verify_postback
from projections import all_projections
from projections.audit import trail
from projections.offline import export_log, offline_rebuild
from projections.pointintime import fold_all
from projections.runner import LedgerLog, ProjectionRunner
from projections.store import store_for_ledger_url
from projections.verify import verify
from tests.conftest import LedgerFactory
from tests.support import accepted, fill, submit_command


def test_postback_checksums_are_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module postbacks.py calls
    good = expected_checksum("2411", "2026-11-24 09:15:00", "secret")
    body: dict[str, Any] = {
        "order_id": "2411",
        "order_timestamp": "2026-11-24 09:15:00",
        "status": "OPEN",
        "checksum": good,
    }
    assert verify_postback(json.dumps(body).encode(), api_secret="secret", app_id=None)
    body["checksum"] = good[:-1] + ("0" if good[-1] != "0" else "1")
    with pytest.raises(PostbackRefused) as refused:
        verify_postback(json.dumps(body).encode(), api_secret="secret", app_id=None)
    assert refused.value.status == 401
    assert len(compared) == 2  # both answers came from the constant-time comparison


HOSTILE = [
    "x'); DROP TABLE orders_events; --",
    'y"; DELETE FROM proj_tracking; --',
    "z\\'; UPDATE ledger_checkpoints SET digest = ''; --",
    "% %s %(name)s ? $1 {0}",
]


def test_text_that_looks_like_sql_is_stored_as_text_everywhere(
    make_ledger: LedgerFactory, tmp_path: Path
) -> None:
    ledger = make_ledger()
    made = []
    for n, text in enumerate(HOSTILE):
        order = ledger.submit(
            submit_command(client_order_id=f"{text[:50]}-{n}", strategy=text, actor=text)
        )
        ledger.record(accepted(order, f"B{n}"))
        ledger.record(fill(order, f"{text[:50]}-T{n}", 40))
        ledger.request_cancel(CancelOrder(order_id=order.id, reason=text, actor=text))
        ledger.record(RecordCancelled(order_id=order.id, reason=text))
        made.append((order.id, text))
    assert ledger.storage is not None
    store = store_for_ledger_url(ledger.storage)
    try:
        ProjectionRunner(LedgerLog(ledger), store, all_projections()).catch_up()
        checked = verify(ledger, store, all_projections())
        assert checked.ok, checked.problems
    finally:
        store.close()
    assert write_checkpoint(ledger) is not None
    assert check_integrity(ledger).ok
    assert ledger.count_events() == 5 * len(HOSTILE)  # nothing dropped or deleted
    for order_id, text in made:
        order = ledger.get_order(order_id)
        assert order.strategy == text
        assert order.reason == text
        assert any(f.trade_id.startswith(text[:50]) for f in order.fills)
    views = fold_all(LedgerLog(ledger).read(0, 10_000), all_projections())
    actors = {entry.actor for entry in trail(views["audit"])}
    assert set(HOSTILE) <= actors
    export = tmp_path / "log.jsonl"
    export_log(ledger, export)
    offline_rebuild(export, tmp_path / "offline.sqlite", all_projections())
    lite = sqlite3.connect(tmp_path / "offline.sqlite")
    dump = "\n".join(lite.iterdump())
    lite.close()
    for text in HOSTILE:  # stored as text in the analyst's file too, tables intact
        assert text.replace("'", "''") in dump


def test_a_postback_nested_past_what_json_parses_is_refused_not_dropped() -> None:
    """10 kB of nested brackets (under the size cap, no checksum needed) raised
    RecursionError from json, which the check did not catch: the handler thread died and
    the sender got no answer at all."""
    with pytest.raises(PostbackRefused, match="malformed postback: not JSON") as refused:
        verify_postback(b"[" * 5000 + b"]" * 5000, api_secret="secret", app_id=None)
    assert refused.value.status == 400
