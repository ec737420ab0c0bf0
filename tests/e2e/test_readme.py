"""The README's Python tour runs as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_ten_line_tour_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    tour = blocks[0]
    assert len(tour.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    namespace: dict[str, object] = {}
    exec(compile(tour, str(README), "exec"), namespace)
    assert (tmp_path / "ledger.db").exists()
    assert os.path.getsize(tmp_path / "ledger.db") > 0
    printed = capsys.readouterr().out
    assert printed.startswith("OrderStatus.PENDING_CANCEL [")
    assert printed.count("Order.") >= 4  # Submitted, Accepted, Filled, CancelRequested
