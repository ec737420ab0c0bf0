"""Fuzz: the `kite-ledger` command line, in-process (as the console script runs it).

Arguments are junk or near misses (bad ids, instruments, prices, times without a zone,
unknown formats, floats, huge numbers). Every run ends with exit status 0, or 2 with a
one-line `error: ...` (or click's usage message) and no traceback; a refused command
writes nothing to the log and changes no projection table.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ledger import cli
from ledger.application import open_ledger
from tests.property.fuzz import NASTY_TEXT
from tests.scale import report, scaled
from tests.support import accepted, fill, submit_command

WRITES = {"submit", "modify", "cancel"}
COMMANDS = [
    *sorted(WRITES),
    *("orders", "order", "positions", "pnl", "stats", "report", "audit"),
    *("export", "offline-rebuild", "rebuild", "nonsense"),
]


class Cli:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.db = str(folder / "ledger.db")
        with open_ledger(self.db) as ledger:
            order = ledger.submit(submit_command(client_order_id="cli-1"))
            ledger.record(accepted(order))
            ledger.record(fill(order, "T1", 40))
            self.order_id = str(order.id)
        self.tried = 0
        assert self.run(["project", "--db", self.db])[0] == 0

    def run(self, args: list[str]) -> tuple[int, str, str]:
        """Run `kite-ledger ARGS` as the console script does: (status, stdout, stderr)."""
        runner = CliRunner()
        old_argv = sys.argv
        with runner.isolation() as (out, err, _):
            sys.argv = ["kite-ledger", *args]
            try:
                cli.main()
                status = 0
            except SystemExit as done:
                code = done.code
                status = code if isinstance(code, int) else (0 if code is None else 1)
            finally:
                sys.argv = old_argv
            return (
                status,
                out.getvalue().decode(errors="replace"),
                err.getvalue().decode(errors="replace"),
            )

    def fingerprint(self) -> tuple[Any, ...]:
        """The log's size and every projection table's rows."""
        with sqlite3.connect(self.db) as db:
            events = db.execute("SELECT count(*) FROM stored_events").fetchone()
            tables = sorted(
                name
                for (name,) in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'proj%'"
                )
            )
            rows = tuple(
                (table, tuple(sorted(map(repr, db.execute(f'SELECT * FROM "{table}"')))))
                for table in tables
            )
        return events, rows


@pytest.fixture(scope="module")
def app_cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    made = Cli(tmp_path_factory.mktemp("cli"))
    yield made
    report("fuzz", boundary="cli", inputs_tried=made.tried)


text = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=12)).filter(
    lambda t: "\x00" not in t and not any(0xD800 <= ord(c) <= 0xDFFF for c in t)
)
numbers = st.sampled_from(["1", "100", "0", "-5", "1.5", "812.35", "1e3", "99999999999999999999"])


def _option(name: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.one_of(st.just([]), values.map(lambda v: [name, v]))


@st.composite
def invocations(draw: st.DrawFn, order_id: str) -> list[str]:
    ids = st.one_of(st.just(order_id), st.just(order_id.upper()), text)
    prices = st.one_of(numbers, text)
    when = st.one_of(
        text,
        st.sampled_from(
            ["2026-11-24", "2026-11-24T11:30", "2026-11-24T11:30+05:30", "2026-11-24T11:30Z"]
        ),
    )
    instruments = st.one_of(st.sampled_from(["NSE:SBIN", "nse:sbin", "NSE:NOPE", "BSE"]), text)
    command = draw(st.sampled_from(COMMANDS))
    args = [command]
    options: list[st.SearchStrategy[list[str]]] = []
    if command == "submit":
        args += ["--account", draw(st.one_of(st.just("AB1234"), text))]
        args += ["--client-order-id", draw(st.one_of(st.just("fuzz"), text))]
        args += ["--instrument", draw(instruments)]
        args += ["--side", draw(st.one_of(st.sampled_from(["BUY", "sell"]), text))]
        args += ["--quantity", draw(st.one_of(numbers, text))]
        args += ["--type", draw(st.one_of(st.sampled_from(["LIMIT", "MARKET", "SL-M"]), text))]
        args += ["--product", draw(st.one_of(st.just("CNC"), text))]
        options = [
            _option("--price", prices),
            _option("--trigger-price", prices),
            _option("--validity", text),
            _option("--market-protection", prices),
            _option("--reference-price", prices),
            _option("--format", text),
        ]
    elif command in ("modify", "cancel", "order", "report"):
        args.append(draw(ids))
        options = [
            _option("--quantity", st.one_of(numbers, text)),
            _option("--price", prices),
            _option("--type", text),
            _option("--reason", text),
            _option("--format", text),
        ]
    elif command in ("orders", "positions", "pnl", "stats", "audit"):
        options = [
            _option("--status", text),
            _option("--instrument", instruments),
            _option("--date", when),
            _option("--as-of", when),
            _option("--mark", st.one_of(text, st.just("NSE:SBIN=815.20"), st.just("NSE:SBIN=x"))),
            _option("--by", text),
            _option("--type", text),
            _option("--from", when),
            _option("--to", when),
            _option("--order", ids),
            _option("--format", st.one_of(st.sampled_from(["json", "csv", "table"]), text)),
        ]
    elif command == "export":
        options = [
            _option("--out", st.sampled_from(["out.jsonl", "out.parquet", "no/dir/x.jsonl"])),
            _option("--format", st.one_of(st.sampled_from(["jsonl", "parquet"]), text)),
            _option("--from", when),
            _option("--to", when),
        ]
    elif command == "offline-rebuild":
        options = [
            _option("--from", st.sampled_from(["out.jsonl", "missing.parquet", "ledger.db"])),
            _option("--into", st.sampled_from(["x.sqlite", "x.duckdb", "x.txt"])),
        ]
    elif command == "rebuild":
        args.append(draw(st.one_of(st.sampled_from(["positions", "pnl"]), text)))
    for option in options:
        if draw(st.booleans()):
            args += draw(option)
    if command not in ("offline-rebuild", "nonsense"):
        args += ["--db", "ledger.db"]
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        args.insert(draw(st.integers(min_value=1, max_value=len(args))), draw(text))
    return args


@settings(max_examples=scaled(120, 1200))
@given(data=st.data())
def test_cli_exits_0_or_2_without_a_traceback_and_refusals_write_nothing(
    app_cli: Cli, data: st.DataObject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(app_cli.folder)
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    args = data.draw(invocations(app_cli.order_id), label="args")
    app_cli.tried += 1
    before = app_cli.fingerprint()
    status, out, err = app_cli.run(args)
    assert "Traceback" not in out + err, (args, out, err)
    assert status in (0, 2), (args, status, out, err)
    if status == 2 and err.startswith("error: "):
        assert err.count("\n") == 1, (args, err)  # one line
    if status != 0 or args[0] not in WRITES:
        assert app_cli.fingerprint() == before, (args, status, err)
    else:
        app_cli.run(["project", "--db", app_cli.db])  # reads compare against this next
