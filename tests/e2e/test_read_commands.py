"""The read-side commands, run as a user runs them, after the demo."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ledger.application import open_ledger
from ledger.domain.values import IST
from projections import all_projections
from projections.store import store_for_file, store_for_ledger_url

CLI = [sys.executable, "-m", "ledger"]
ROOT = Path(__file__).resolve().parents[2]


def _cli_env() -> dict[str, str]:
    """The environment that runs the CLI of this checkout (`python -m` in another
    directory found the package the virtualenv has installed, which may be another
    checkout's)."""
    env = {k: v for k, v in os.environ.items() if k != "LEDGER_DATABASE_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI of this checkout, its output captured."""
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_appending(stdout: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """The CLI of this checkout with its standard output appended to a file (`>> file`)."""
    with stdout.open("ab") as sink:
        return subprocess.run(
            [*CLI, *args],
            cwd=cwd,
            env=_cli_env(),
            stdout=sink,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    result = run("demo", "--scripted", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


def test_positions_json_equals_offline_rebuild(demo_dir: Path) -> None:
    shown = run("positions", "--format", "json", cwd=demo_dir)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    sbin = next(r for r in rows if r["tradingsymbol"] == "SBIN")
    assert sbin["net_quantity"] == 50
    assert sbin["realised_pnl"] == "-386"

    exported = run("export", "--format", "parquet", "--out", "log.parquet", cwd=demo_dir)
    assert exported.returncode == 0, exported.stderr
    assert "exported 29 events" in exported.stderr
    # Into a pipe: the export alone on stdout (the summary is on stderr).
    piped = run("export", "--format", "jsonl", "--out", "/dev/stdout", cwd=demo_dir)
    assert piped.returncode == 0, piped.stderr
    assert [json.loads(line)["position"] for line in piped.stdout.splitlines()] == list(
        range(1, 30)
    )
    # Into a file stdout is appended to (`>> exports.log`): appended, nothing replaced.
    appended = demo_dir / "exports.log"
    appended.write_text("an earlier line\n")
    export_to_stdout = ("export", "--format", "jsonl", "--out", "/dev/stdout")
    into_file = run_appending(appended, *export_to_stdout, cwd=demo_dir)
    assert into_file.returncode == 0, into_file.stderr
    lines = appended.read_text().splitlines()
    assert lines[0] == "an earlier line"
    assert len(lines) == 30
    # Into the ledger's own database by a redirection (`>> ledger.db`): refused.
    database = demo_dir / "ledger.db"
    before = database.read_bytes()
    into_ledger = run_appending(database, *export_to_stdout, cwd=demo_dir)
    assert into_ledger.returncode == 2
    assert b"ledger's own database" in into_ledger.stderr
    assert database.read_bytes() == before
    rebuilt = run("offline-rebuild", "--from", "log.parquet", "--into", "a.duckdb", cwd=demo_dir)
    assert rebuilt.returncode == 0, rebuilt.stderr
    offline = store_for_file(demo_dir / "a.duckdb")
    live = store_for_ledger_url(demo_dir / "ledger.db")
    try:
        for projection in all_projections():
            assert offline.load_view(projection).contents() == live.load_view(projection).contents()
    finally:
        offline.close()
        live.close()


def test_positions_as_of_mid_session(demo_dir: Path) -> None:
    with open_ledger(demo_dir / "ledger.db") as ledger:
        infy_cancel = ledger.history(ledger.find_order("ZD1234", "s1-infy-sell").id)[3]
    instant = infy_cancel.timestamp.isoformat()
    then = json.loads(run("positions", "--as-of", instant, "--format", "json", cwd=demo_dir).stdout)
    now = json.loads(run("positions", "--format", "json", cwd=demo_dir).stdout)
    assert then != now
    assert {r["tradingsymbol"] for r in then} == {"SBIN", "RELIANCE"}


def test_pnl_stats_report_audit(demo_dir: Path) -> None:
    pnl = run(
        "pnl", "--by", "instrument", "--mark", "NSE:SBIN=815", "--format", "csv", cwd=demo_dir
    )
    assert pnl.returncode == 0, pnl.stderr
    lines = {r["instrument"]: r for r in csv.DictReader(io.StringIO(pnl.stdout))}
    assert lines["NSE:SBIN"]["realised"] == "-386"
    assert lines["NSE:SBIN"]["unrealised"] == "134"
    stats = json.loads(run("stats", "--format", "json", cwd=demo_dir).stdout)
    assert stats["total_fills"] == 8
    assert stats["total_rejected"] == 1
    with open_ledger(demo_dir / "ledger.db") as ledger:
        order_id = ledger.find_order("ZD1234", "s1-sbin-buy").id
    report = json.loads(run("report", str(order_id), "--format", "json", cwd=demo_dir).stdout)
    assert report["average_price"] == "812.32"
    assert report["slippage"] == "22"  # paid 0.22 over 812.10 on 100 shares
    assert [f["trade_id"] for f in report["fills"]] == ["0001000001", "0001000002"]
    audit = run(
        "audit", "--type", "Filled", "--instrument", "NSE:SBIN", "--format", "jsonl", cwd=demo_dir
    )
    entries = [json.loads(line) for line in audit.stdout.splitlines()]
    assert len(entries) == 3
    assert {e["event_type"] for e in entries} == {"Filled"}


def test_audit_and_export_from_a_date_take_that_whole_day(demo_dir: Path) -> None:
    """`--from D` is the start of day D (it was its end, and a whole day's events went
    missing); `--from D --to D` is day D; `--type` is read in any case."""
    everything = run("audit", "--format", "jsonl", cwd=demo_dir).stdout.splitlines()
    with open_ledger(demo_dir / "ledger.db") as ledger:
        first = next(iter(ledger.iter_log())).timestamp
    day = first.astimezone(IST).date().isoformat()
    that_day = run("audit", "--from", day, "--to", day, "--format", "jsonl", cwd=demo_dir)
    assert that_day.returncode == 0, that_day.stderr
    assert len(that_day.stdout.splitlines()) == len(everything) == 29
    lower = run("audit", "--type", "filled", "--format", "jsonl", cwd=demo_dir)
    assert len(lower.stdout.splitlines()) == 8
    exported = run("export", "--from", day, "--format", "jsonl", "--out", "d.jsonl", cwd=demo_dir)
    assert "exported 29 events" in exported.stderr


def test_to_a_date_then_from_the_next_loses_nothing(tmp_path: Path) -> None:
    """`--to D` was the end of D (23:59:59.999999) taken as an exclusive bound, so an
    event in D's last microsecond was in neither `--to D` nor `--from D+1`."""
    from datetime import datetime, timedelta

    from tests.support import FakeClock, accepted, fill, submit_command

    last = datetime(2026, 11, 24, 23, 59, 59, 999999, tzinfo=IST)
    clock = FakeClock(start=last - timedelta(microseconds=3), step=timedelta(microseconds=1))
    with open_ledger(tmp_path / "ledger.db", clock=clock) as ledger:
        order = ledger.submit(submit_command())
        ledger.record(accepted(order))
        ledger.record(fill(order, "T1", 100))  # at 23:59:59.999999 IST, still 24 Nov
        assert ledger.history(order.id)[-1].timestamp == last
    split = {
        "24": ["--to", "2026-11-24"],
        "25": ["--from", "2026-11-25"],
        "both": ["--from", "2026-11-24", "--to", "2026-11-25"],
    }
    exported: dict[str, list[str]] = {}
    for name, window in split.items():
        result = run("export", "--format", "jsonl", "--out", f"{name}.jsonl", *window, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        lines = (tmp_path / f"{name}.jsonl").read_text().splitlines()
        exported[name] = [json.loads(line)["event_type"] for line in lines]
    day = ["Submitted", "Accepted", "Filled"]
    assert exported == {"24": day, "25": [], "both": day}
    audited = run("audit", "--to", "2026-11-24", "--format", "jsonl", cwd=tmp_path)
    assert [json.loads(line)["event_type"] for line in audited.stdout.splitlines()] == day
    after = run("audit", "--from", "2026-11-25", "--format", "jsonl", cwd=tmp_path)
    assert after.stdout == ""


def test_rebuild_and_project(demo_dir: Path) -> None:
    rebuilt = run("rebuild", "positions", cwd=demo_dir)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt positions from 29 records" in rebuilt.stdout
    projected = run("project", cwd=demo_dir)
    assert projected.returncode == 0, projected.stderr
    assert "projections at position 29" in projected.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["positions", "--as-of", "yesterday"], "is not an ISO time"),
        (["positions", "--as-of", "2026-11-24T10:00"], "has no time zone"),
        (["positions", "--format", "xml"], "--format: 'xml'"),
        (["pnl", "--by", "week"], "--by: 'week'"),
        (["pnl", "--mark", "SBIN"], "is not EXCHANGE:SYMBOL=PRICE"),
        # Decimal reads these: they ended in a traceback (NaN, sNaN, Infinity) or a
        # silently wrong unrealised P&L (zero, negative).
        *(
            (
                [command, "--mark", f"NSE:SBIN={price}"],
                f"--mark: 'NSE:SBIN={price}': the price must be a finite number above zero",
            )
            for command in ("positions", "pnl")
            for price in ("NaN", "sNaN", "Infinity", "-Inf", "0", "-5")
        ),
        (["rebuild", "nope"], "unknown projection 'nope'"),
        (["report", "00000000-0000-0000-0000-000000000000"], "no such order"),
        (["offline-rebuild", "--from", "none.parquet", "--into", "x.duckdb"], "does not exist"),
        (["export", "--out", "no/such/dir/x.parquet"], "does not exist"),
        (["audit", "--type", "Nope"], "--type: 'Nope' is not an event type (one of Accepted"),
        (["audit", "--instrument", "NSE"], "--instrument: 'NSE' is not EXCHANGE:SYMBOL"),
        (["audit", "--from", "soon"], "--from: 'soon' is not an ISO time"),
        # A window that ends before it starts found nothing (and export wrote an empty file).
        *(
            (
                [*command, "--from", "2026-11-26", "--to", "2026-11-24"],
                "--to: '2026-11-24' is not after --from '2026-11-26'",
            )
            for command in (["audit"], ["export", "--out", "window.parquet"])
        ),
        # Tracebacks before: the store's own connection error, not the ledger's message.
        (
            ["project", "--projections-db", "postgresql://postgres:secret@127.0.0.1:5999/x"],
            "cannot reach PostgreSQL at postgresql://postgres:***@127.0.0.1:5999/x",
        ),
        (["checkpoint", "--export", "log.parquet"], "--export: log.parquet names no .json file"),
        (["stats", "--format", "csv"], "--format: 'csv'"),
    ],
)
def test_read_command_errors(demo_dir: Path, args: list[str], message: str) -> None:
    result = run(*args, cwd=demo_dir)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_checkpoint_export_replaces_only_a_digest_file(demo_dir: Path) -> None:
    """`checkpoint --export` wrote its digests over any file: an export among them."""
    (demo_dir / "notes.json").write_text('{"not": "digests"}')
    refused = run("checkpoint", "--export", "notes.json", cwd=demo_dir)
    assert refused.returncode == 2
    assert "notes.json exists and is not a digest file" in refused.stderr
    assert (demo_dir / "notes.json").read_text() == '{"not": "digests"}'
    # One written before any checkpoint (none to export yet) is a digest file all the same.
    empty = demo_dir / "empty"
    empty.mkdir()
    (empty / "d.json").write_text('{"kind": "kite-ledger digests", "checkpoints": []}')
    assert (
        run("checkpoint", "--db", "../ledger.db", "--export", "d.json", cwd=empty).returncode == 0
    )
    assert run("checkpoint", "--export", "kept.json", cwd=demo_dir).returncode == 0
    again = run("checkpoint", "--export", "kept.json", cwd=demo_dir)
    assert again.returncode == 0, again.stderr
    assert "exported 1 checkpoints to kept.json" in again.stdout


def test_submit_takes_a_ttl_and_names_the_order_id(tmp_path: Path) -> None:
    """`--validity TTL` was offered and then refused for want of a TTL no option could
    give; and no table showed the id that order, report, modify and cancel take."""
    submitted = run(
        "submit", "--db", "l.db", "--account", "ZD1", "--client-order-id", "ttl-1",
        "--instrument", "NSE:SBIN", "--side", "BUY", "--quantity", "1", "--type", "LIMIT",
        "--product", "CNC", "--price", "812.35", "--validity", "TTL", "--validity-ttl", "5",
        cwd=tmp_path,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    order_id = submitted.stdout.strip().splitlines()[-1].removeprefix("order id ")
    from uuid import UUID

    ledger = open_ledger(tmp_path / "l.db")
    try:
        order = ledger.get_order(UUID(order_id))
    finally:
        ledger.close()
    assert (order.client_order_id, order.validity.value, order.validity_ttl) == ("ttl-1", "TTL", 5)


def test_paths_that_are_not_what_a_command_wants_are_refused_clearly(demo_dir: Path) -> None:
    """Each of these ended in a traceback (and left partial files beside the target)."""
    (demo_dir / "notes.txt").write_text("not a database")
    (demo_dir / "notes.sqlite").write_text("not a database")
    (demo_dir / "adir").mkdir(exist_ok=True)
    assert run("export", "--format", "jsonl", "--out", "e.jsonl", cwd=demo_dir).returncode == 0
    cases = [
        (["stats", "--db", "notes.txt"], "database notes.txt cannot be opened as a ledger"),
        (["export", "--format", "jsonl", "--out", "adir"], "Is a directory: 'adir'"),
        (["verify", "--digest", "adir"], "digest file adir cannot be read"),
        (
            ["offline-rebuild", "--from", "e.jsonl", "--into", "notes.sqlite"],
            "notes.sqlite: cannot rebuild into it",
        ),
        (
            ["offline-rebuild", "--from", "e.jsonl", "--into", "notes.txt"],
            "notes.txt: name a .duckdb file (DuckDB) or a .sqlite, .sqlite3 or .db file (SQLite)",
        ),
        (
            ["offline-rebuild", "--from", "e.jsonl", "--into", "nodir/x.sqlite"],
            "directory nodir does not exist",
        ),
    ]
    for args, message in cases:
        result = run(*args, cwd=demo_dir)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not list(demo_dir.glob("*partial*"))


def test_offline_rebuild_refuses_a_ledgers_own_files(tmp_path: Path) -> None:
    """An offline rebuild puts a file made from a copy of its target over the target.
    `--into ledger.db` put a copy of the event log over the live one (what was committed
    after the copy lost); `--into ledger.projections.db` replaced the live projections
    with an export's, which every read command then showed as current."""
    assert run("demo", "--scripted", "--db", "ledger.db", cwd=tmp_path).returncode == 0
    assert run("export", "--out", "part.jsonl", cwd=tmp_path).returncode == 0
    assert run("project", cwd=tmp_path).returncode == 0
    files = ("ledger.db", "ledger.projections.db")
    before = {name: (tmp_path / name).read_bytes() for name in files}
    ledger = run("offline-rebuild", "--from", "part.jsonl", "--into", "ledger.db", cwd=tmp_path)
    assert ledger.returncode == 2
    assert "ledger.db: is a ledger (it holds an event log)" in ledger.stderr
    live = run(
        "offline-rebuild", "--from", "part.jsonl", "--into", "ledger.projections.db", cwd=tmp_path
    )
    assert live.returncode == 2
    assert "is the live projections file of the ledger ledger.db" in live.stderr
    assert {name: (tmp_path / name).read_bytes() for name in files} == before
    assert not list(tmp_path.glob("*partial*"))


def test_verify_does_not_call_projections_that_lag_the_log_equal_to_it(tmp_path: Path) -> None:
    """Projections folded before the last commands printed "5 projections equal the log"
    (exit 0) although the store showed the older positions: each lagging one is named
    with how far behind it is; lag is not a difference, so the exit stays 0."""
    from tests.support import FakeClock, accepted, fill, submit_command

    clock = FakeClock()
    with open_ledger(tmp_path / "ledger.db", clock=clock) as ledger:
        order = ledger.submit(submit_command())
        ledger.record(accepted(order))
        ledger.record(fill(order, "T1", 100))
    assert run("project", cwd=tmp_path).returncode == 0
    with open_ledger(tmp_path / "ledger.db", clock=clock) as ledger:
        later = ledger.submit(submit_command(client_order_id="later"))
        ledger.record(accepted(later, "B-later"))
    stale = run("verify", cwd=tmp_path)
    assert stale.returncode == 0, stale.stdout + stale.stderr
    assert "0 projections equal the log, 5 equal it only up to their positions" in stale.stdout
    assert "BEHIND projection positions v1 is at log position 3 of 5: 2 events behind" in (
        stale.stdout
    )
    assert run("project", cwd=tmp_path).returncode == 0
    current = run("verify", cwd=tmp_path)
    assert current.returncode == 0, current.stdout + current.stderr
    assert "5 projections equal the log" in current.stdout
    assert "BEHIND" not in current.stdout


def test_export_takes_its_format_from_the_name_and_refuses_a_name_that_disagrees(
    tmp_path: Path,
) -> None:
    """`export --out x.jsonl` wrote Parquet (the default --format) into a file named for
    JSON lines, and `--out x.csv` Parquet too, both with exit 0. Without --format the
    suffix decides; a name that says another format is refused with nothing written; a
    name with no suffix (a stream) keeps the Parquet default."""
    from tests.support import FakeClock, accepted, fill, submit_command

    with open_ledger(tmp_path / "ledger.db", clock=FakeClock()) as ledger:
        order = ledger.submit(submit_command())
        ledger.record(accepted(order))
        ledger.record(fill(order, "T1", 100))
    by_name = run("export", "--out", "x.jsonl", cwd=tmp_path)
    assert by_name.returncode == 0, by_name.stderr
    lines = (tmp_path / "x.jsonl").read_text().splitlines()
    assert [json.loads(line)["event_type"] for line in lines] == ["Submitted", "Accepted", "Filled"]
    assert run("export", "--out", "x.parquet", cwd=tmp_path).returncode == 0
    assert (tmp_path / "x.parquet").read_bytes()[:4] == b"PAR1"
    refused = [
        (["--out", "x.csv"], "x.csv: an export is Parquet or JSON lines, not CSV"),
        (["--format", "jsonl", "--out", "y.csv"], "not CSV"),
        (["--format", "parquet", "--out", "y.jsonl"], "the name says jsonl but the format"),
        (["--format", "jsonl", "--out", "y.parquet"], "the name says parquet but the format"),
        (["--out", "y.txt"], "the export format cannot be told from .txt suffix"),
    ]
    for args, message in refused:
        result = run("export", *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("x.", "y."))) == [
        "x.jsonl",
        "x.parquet",
    ]
    streamed = tmp_path / "streamed"
    piped = run_appending(streamed, "export", "--out", "/dev/stdout", cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert streamed.read_bytes()[:4] == b"PAR1"


def test_export_over_the_ledger_itself_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """`export --db D/ledger.db --out D/ledger.db` left the ledger at 0 bytes: the export
    truncated its target before reading the log out of it."""
    from tests.support import FakeClock, accepted, fill, submit_command

    with open_ledger(tmp_path / "ledger.db", clock=FakeClock()) as ledger:
        order = ledger.submit(submit_command())
        ledger.record(accepted(order))
        ledger.record(fill(order, "T1", 100))
    size = (tmp_path / "ledger.db").stat().st_size
    for out in ("ledger.db", "./ledger.db", "ledger.projections.db"):
        result = run("export", "--db", "ledger.db", "--format", "jsonl", "--out", out, cwd=tmp_path)
        assert result.returncode == 2, (out, result.stdout, result.stderr)
        assert "is the ledger's own" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert (tmp_path / "ledger.db").stat().st_size == size
    assert not (tmp_path / "ledger.projections.db").exists()
    assert not list(tmp_path.glob("*partial*"))
    with open_ledger(tmp_path / "ledger.db") as ledger:
        assert ledger.count_events() == 3


def test_a_read_command_reads_only_the_projection_it_shows(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`positions` catches every projection up but reads only the positions: the audit
    trail and the per-order tables hold a row for every event and order."""
    from ledger.cli_read import current_views
    from projections.store import ProjectionStore

    read: list[str] = []
    load_view = ProjectionStore.load_view

    def counted(store: ProjectionStore, projection: Any, where: Any = None) -> Any:
        read.append(projection.name)
        return load_view(store, projection, where)

    monkeypatch.setattr(ProjectionStore, "load_view", counted)
    with open_ledger(demo_dir / "ledger.db") as ledger:
        views = current_views(ledger, wanted=["positions"])
    assert list(views) == ["positions"]
    assert read == ["positions"]
    assert views["positions"].contents()


def test_csv_and_json_lines_are_written_as_made_not_through_rich(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Machine-readable output goes straight to stdout: rich highlighted it first (80 of
    86 s for 100,000 audit rows)."""
    from typer.testing import CliRunner

    from ledger import cli

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("machine-readable output went through rich")

    monkeypatch.setattr(cli.console, "out", refuse)
    monkeypatch.chdir(demo_dir)
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    for fmt in ("csv", "jsonl"):
        result = CliRunner().invoke(cli.app, ["audit", "--type", "Filled", "--format", fmt])
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        if fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(result.stdout)))
            assert rows
            assert {r["event_type"] for r in rows} == {"Filled"}
        else:
            assert lines
            assert {json.loads(line)["event_type"] for line in lines} == {"Filled"}


def test_verify_checks_an_export_with_no_database(demo_dir: Path, tmp_path: Path) -> None:
    """An auditor handed an export and a digest file checks them with no database: clean,
    it says what it checked; one altered byte of a state is named, exit 1."""
    assert (
        run("checkpoint", "--export", str(tmp_path / "digests.json"), cwd=demo_dir).returncode == 0
    )
    export = tmp_path / "log.jsonl"
    assert run("export", "--out", str(export), cwd=demo_dir).returncode == 0
    elsewhere = tmp_path / "auditor"
    elsewhere.mkdir()
    clean = run(
        "verify", "--export", str(export), "--digest", str(tmp_path / "digests.json"), cwd=elsewhere
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"verified export {export}:" in clean.stdout
    assert "checkpoints of" in clean.stdout
    assert not (elsewhere / "ledger.db").exists()

    lines = export.read_text().splitlines()
    record = json.loads(lines[0])  # the first order's submission: 10 more shares
    quantity = json.loads(record["state"])["quantity"]
    record["state"] = record["state"].replace(
        f'"quantity":{quantity},', f'"quantity":{quantity + 10},', 1
    )
    assert str(quantity + 10) in record["state"]
    altered = tmp_path / "altered.jsonl"
    altered.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    found = run("verify", "--export", str(altered), cwd=elsewhere)
    assert found.returncode == 1
    assert f"TAMPERED first bad event: log position {record['position']}" in found.stdout
    # Bytes that decode alike are the same content to the chains; the digest file holds
    # the stored bytes, so it names any change at all.
    spaced = json.loads(lines[0])
    spaced["state"] = spaced["state"].replace('"quantity":', '"quantity": ', 1)
    altered.write_text("\n".join([json.dumps(spaced), *lines[1:]]) + "\n")
    assert run("verify", "--export", str(altered), cwd=elsewhere).returncode == 0
    digests = str(tmp_path / "digests.json")
    assert (
        run("verify", "--export", str(altered), "--digest", digests, cwd=elsewhere).returncode == 1
    )


def test_tables_show_amounts_to_the_paisa_half_up_and_rows_add_up(tmp_path: Path) -> None:
    """Tables rounded amounts half even (format's own rounding): a realised 0.025 showed
    as 0.02 and an unrealised 0.125 as 0.12 where the ledger and Kite round half up; a
    remainder of -1E-10 showed as -0.00; and a P&L row's net, rounded from the exact sum,
    was not the sum of the parts it showed. CSV wrote that remainder as "-1E-10"."""
    from decimal import Decimal

    from ledger.commands import RecordAccepted, RecordFill, SubmitOrder
    from ledger.domain.values import Exchange

    ledger = open_ledger(tmp_path / "ledger.db")
    trades = [
        ("a", "SBIN", "BUY", [(1, "100.00")]),
        ("a", "SBIN", "BUY", [(1, "100.05")]),
        ("a", "SBIN", "SELL", [(1, "100.05")]),  # realised 100.05 - 100.025 = 0.025
        ("b", "HDFCBANK", "BUY", [(1, "100.05"), (2, "100.00")]),  # average 100.0166666667
        ("b", "HDFCBANK", "SELL", [(1, "100.05"), (2, "100.00")]),  # realised -0.0000000001
    ]
    for n, (strategy, symbol, side, fills) in enumerate(trades):
        order = ledger.submit(
            SubmitOrder.parse(
                {
                    "account": "ZD1", "client_order_id": f"c{n}", "exchange": "NSE",
                    "tradingsymbol": symbol, "side": side,
                    "quantity": sum(q for q, _ in fills), "order_type": "LIMIT",
                    "product": "MIS", "price": fills[0][1], "strategy": strategy,
                }
            )
        )  # fmt: skip
        ledger.record(RecordAccepted(order_id=order.id, broker_order_id=f"B{n}"))
        for i, (quantity, price) in enumerate(fills):
            ledger.record(
                RecordFill(
                    order_id=order.id, trade_id=f"T{n}-{i}", exchange=Exchange.NSE,
                    tradingsymbol=symbol, quantity=quantity, price=Decimal(price),
                    charges=Decimal(0),
                )
            )  # fmt: skip
    ledger.close()
    db = str(tmp_path / "ledger.db")
    env = {**_cli_env(), "COLUMNS": "200"}

    def cells(args: list[str], key: str) -> list[str]:
        out = subprocess.run([*CLI, *args, "--db", db], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        line = next(row for row in out.stdout.splitlines() if key in row)
        return [cell.strip() for cell in line.split("│") if cell.strip()]

    sbin = cells(["positions", "--mark", "NSE:SBIN=100.15"], "SBIN")
    assert sbin[-3:] == ["0.03", "0.13", "0.00"]  # realised 0.025, unrealised 0.125
    assert cells(["positions"], "HDFCBANK")[-3] == "0.00"  # -0.0000000001, not -0.00
    assert cells(["pnl", "--by", "strategy", "--mark", "NSE:SBIN=100.15"], "│ a ")[1:] == [
        "0.03", "0.13", "0.00", "0.16",
    ]  # fmt: skip
    out = subprocess.run(
        [*CLI, "positions", "--format", "csv", "--db", db], env=env, capture_output=True, text=True
    )
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert (
        next(r for r in rows if r["tradingsymbol"] == "HDFCBANK")["realised_pnl"] == "-0.0000000001"
    )


def test_marks_match_whatever_the_case_and_unmatched_or_missing_ones_are_named(
    demo_dir: Path,
) -> None:
    """`--mark NSE:sbin=...` matched nothing and `--mark NSE:NOPE=1` was taken, both
    without a word; open positions with no mark showed an unrealised 0.00 as if known."""
    marked = run(
        "positions", "--mark", "NSE:sbin=815.20", "--mark", "NSE:NOPE=1", "--format", "csv",
        cwd=demo_dir,
    )  # fmt: skip
    assert marked.returncode == 0, marked.stderr
    rows = list(csv.DictReader(io.StringIO(marked.stdout)))
    sbin = next(r for r in rows if r["tradingsymbol"] == "SBIN")
    assert sbin["net_quantity"] != "0"
    assert sbin["unrealised_pnl"] not in ("0", "0.00")
    assert "warning: --mark NSE:NOPE matches no position" in marked.stderr
    unmarked = [
        f"{r['exchange']}:{r['tradingsymbol']}"
        for r in rows
        if r["net_quantity"] != "0" and r["tradingsymbol"] != "SBIN"
    ]
    assert unmarked, "the demo leaves other positions open"
    assert f"with no --mark: {', '.join(sorted(unmarked))}" in marked.stderr


def test_read_commands_read_the_projections_kept_elsewhere(tmp_path: Path) -> None:
    """`project --projections-db X` kept them in X, but positions, pnl, stats, report and
    audit had no such option and folded the log again into the ledger's own file."""
    assert run("demo", "--scripted", "--db", "ledger.db", cwd=tmp_path).returncode == 0
    elsewhere = ["--projections-db", "kept.sqlite"]
    assert run("project", *elsewhere, cwd=tmp_path).returncode == 0
    own = tmp_path / "ledger.projections.db"
    own.unlink(missing_ok=True)
    for command in (
        ["positions", "--format", "json"],
        ["pnl", "--by", "strategy", "--format", "json"],
        ["stats", "--format", "json"],
        ["audit", "--format", "jsonl"],
    ):
        kept = run(*command, *elsewhere, cwd=tmp_path)
        assert kept.returncode == 0, kept.stderr
        assert not own.exists(), command  # read from kept.sqlite, not folded again
        assert kept.stdout == run(*command, cwd=tmp_path).stdout
        own.unlink()
