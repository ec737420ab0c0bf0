"""`kite-ledger` commands for the read side: projections, rebuilds, exports.

Read commands first bring the projections stored beside the log up to date (a catch-up
from their tracking position), so what they show is current; `--as-of` folds the log up to
that instant instead, in memory.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Final
from uuid import UUID

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ledger.application import OrderLedger
from ledger.checkpoints import IntegrityReport
from ledger.cli import DbOption, _money, _open, app, console, errors, write_out
from ledger.domain.errors import LedgerError
from ledger.domain.values import IST, Exchange, InstrumentRef
from ledger.integrity import Checkpoint
from ledger.projection_process import interrupt_when_parent_exits
from projections import all_projections
from projections.audit import AuditEntry, to_csv, to_jsonl, trail
from projections.base import EVENT_CLASSES, Projection, View
from projections.offline import ExportError, Format, export_format, export_log, offline_rebuild
from projections.pnl import pnl_report
from projections.pointintime import as_of
from projections.positions import Position, positions_of
from projections.rebuild import rebuild
from projections.reports import fills_for, report_for
from projections.runner import LedgerLog, ProjectionRunner
from projections.statistics import statistics
from projections.store import ProjectionStore, store_at, store_for_ledger_url

FormatOption = Annotated[str, typer.Option("--format", help="table, json or csv.")]
ProjectionsDbOption = Annotated[
    str | None,
    typer.Option(
        "--projections-db",
        help="Keep projection tables in this database instead (SQLite path or postgresql:// URL).",
    ),
]
#: For outputs that are not one table of rows (a report with its fills, the statistics).
TableOrJsonOption = Annotated[str, typer.Option("--format", help="table or json.")]
AsOfOption = Annotated[
    str | None,
    typer.Option(
        "--as-of",
        help="ISO time with a zone (2026-11-24T11:30+05:30) or a date (its end, in IST).",
    ),
]
MarkOption = Annotated[
    list[str] | None,
    typer.Option("--mark", help="A price to value open positions at: NSE:SBIN=815.20 (repeat)."),
]


def parse_instant(text: str, option: str = "--as-of", *, day_starts: bool = False) -> datetime:
    """An ISO time with a zone, or a date in Asia/Kolkata: the end of that day (as of it,
    up to it), or with `day_starts` its start (from it). An exclusive upper bound
    (`--to`) is `parse_until`'s."""
    text = text.strip()
    day = _as_date(text)
    if day is not None:
        return datetime.combine(day, time.min if day_starts else time.max, tzinfo=IST)
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise LedgerError(
            f"{option}: {text!r} is not an ISO time (2026-11-24T11:30:00+05:30) or date"
        ) from None
    if instant.tzinfo is None:
        raise LedgerError(f"{option}: {text!r} has no time zone (add +05:30 or Z)")
    return instant


def parse_window(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """`--from` and `--to` (either may be missing): a window that ends before it starts
    is refused, not searched (it found nothing, and `export` wrote an empty file)."""
    start = parse_instant(since, "--from", day_starts=True) if since else None
    end = parse_until(until) if until else None
    if start is not None and end is not None and end <= start:
        raise LedgerError(
            f"--to: {until!r} is not after --from {since!r} (--to is exclusive; a date"
            " means through its end)"
        )
    return start, end


def parse_until(text: str, option: str = "--to") -> datetime:
    """An exclusive upper bound: an ISO time with a zone, or a date D in Asia/Kolkata, read
    as the start of the day after it, so that `--from D --to D` is the whole of day D and
    `--to D` then `--from D+1` split the log with nothing lost. (The end of D,
    23:59:59.999999, was used and compared exclusively: an event in D's last microsecond
    was in neither.)"""
    day = _as_date(text)
    if day is not None:
        return datetime.combine(day + timedelta(days=1), time.min, tzinfo=IST)
    return parse_instant(text, option)


def _as_date(text: str) -> date | None:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        return None


def parse_marks(marks: list[str] | None) -> dict[InstrumentRef, Decimal]:
    """EXCHANGE:SYMBOL=PRICE marks for unrealised P&L. The price must be a finite number
    above zero: `Decimal` reads NaN, sNaN and Infinity too (they ended in a traceback in
    the P&L arithmetic), and a zero or negative mark gave a wrong P&L without a word."""
    parsed: dict[InstrumentRef, Decimal] = {}
    for mark in marks or []:
        try:
            name, text = mark.split("=", 1)
            exchange, symbol = name.split(":", 1)
            # Kite's symbols are upper case: "NSE:sbin" matched nothing, without a word.
            instrument = InstrumentRef(Exchange(exchange.upper()), symbol.strip().upper())
            price = Decimal(text)
        except (ValueError, InvalidOperation):
            raise LedgerError(f"--mark: {mark!r} is not EXCHANGE:SYMBOL=PRICE") from None
        if not price.is_finite() or price <= 0:
            raise LedgerError(f"--mark: {mark!r}: the price must be a finite number above zero")
        parsed[instrument] = price
    return parsed


def parse_instrument(text: str, option: str = "--instrument") -> InstrumentRef:
    """EXCHANGE:SYMBOL, e.g. NSE:SBIN."""
    exchange, _, symbol = text.strip().partition(":")
    try:
        if not symbol:
            raise ValueError(text)
        return InstrumentRef(Exchange(exchange.upper()), symbol)
    except ValueError:
        raise LedgerError(f"{option}: {text!r} is not EXCHANGE:SYMBOL (e.g. NSE:SBIN)") from None


def _check_format(fmt: str, allowed: tuple[str, ...]) -> str:
    if fmt not in allowed:
        raise LedgerError(f"--format: {fmt!r} is not one of {', '.join(allowed)}")
    return fmt


@contextmanager
def _progress(label: str, total: int | None) -> Iterator[Any]:
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(label, total=total)

        def advance(count: int, _position: int = 0) -> None:
            progress.advance(task, count)

        yield advance


def current_views(
    ledger: OrderLedger,
    instant: datetime | None = None,
    *,
    wanted: Sequence[str] | None = None,
    where: Mapping[str, Collection[str]] | None = None,
    projections_db: str | None = None,
) -> dict[str, View]:
    """The `wanted` projections (default every one), current (every projection caught up
    in the database, then the wanted ones read) or as of `instant` (folded from the log).

    Only what is wanted is read: the audit trail and the per-order tables hold rows for
    every event and order, and reading them all made `kite-ledger positions` take 6 s
    over 200,000 events. `where` (text column -> values) narrows the rows read from the
    database (`ProjectionStore.load_view`); callers filter what they show themselves.
    With `projections_db`, the projections kept there (`project --projections-db`) are
    caught up and read, not the ledger's own."""
    projections = all_projections()
    chosen = [p for p in projections if wanted is None or p.name in wanted]
    if instant is not None:
        return as_of(LedgerLog(ledger), chosen, instant)
    store = _store(ledger, projections_db)
    try:
        runner = ProjectionRunner(LedgerLog(ledger), store, projections)
        behind = LedgerLog(ledger).last_position() - runner.position
        with _progress("catching up projections", behind) as advance:
            runner.on_batch = advance
            runner.catch_up()
        return {p.name: runner.view(p.name, where) for p in chosen}
    finally:
        store.close()


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        # Positional, never scientific: str gives "-1E-10" for a sub-paisa remainder,
        # which spreadsheets and parsers of CSV or JSON read as text or a float.
        return format(value, "f")
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Enum):
        return value.value
    return value


def _emit(rows: list[dict[str, Any]], fmt: str, title: str) -> None:
    if fmt == "json":
        console.print_json(json.dumps([{k: _plain(v) for k, v in r.items()} for r in rows]))
        return
    if fmt == "csv":
        import csv
        import io

        out = io.StringIO()
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: _plain(v) for k, v in r.items()} for r in rows)
        write_out(out.getvalue())
        return
    if not rows:
        console.print(f"{title}: none")
        return
    table = Table(title=title, title_justify="left")
    columns = list(rows[0])
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[_cell(row[c]) for c in columns])
    console.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, _Rupees):
        return f"{_to_paisa(value):,.2f}"
    if isinstance(value, Decimal):
        return _money(value)
    if isinstance(value, datetime):
        return value.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(_plain(value))


def show_positions(
    view: View, marks: dict[InstrumentRef, Decimal], fmt: str = "table", title: str = "Positions"
) -> None:
    rows = []
    positions = positions_of(view)
    _warn_about_marks(marks, positions)
    for p in positions:
        unrealised = p.unrealised_pnl(marks.get(p.instrument))
        if fmt == "table":  # the columns a trader scans; json and csv carry every field
            rows.append(
                {
                    "account": p.account,
                    "instrument": f"{p.exchange}:{p.tradingsymbol}",
                    "product": p.product,
                    "net qty": p.net_quantity,
                    "avg price": p.average_price,
                    "bought": p.buy_quantity,
                    "sold": p.sell_quantity,
                    "realised": _Rupees(p.realised_pnl),
                    "unrealised": _Rupees(unrealised),
                    "charges": _Rupees(p.charges),
                }
            )
            continue
        row = {f.name: getattr(p, f.name) for f in fields(p)}
        row["unrealised_pnl"] = unrealised
        rows.append(row)
    _emit(rows, fmt, title)


def _warn_about_marks(marks: dict[InstrumentRef, Decimal], positions: list[Position]) -> None:
    """On stderr: a mark that matches no position (a typo, another exchange), and open
    positions with no mark, whose unrealised P&L shows as 0.00 (it is not known)."""
    held = {p.instrument for p in positions}
    for instrument in marks.keys() - held:
        errors.print(f"warning: --mark {instrument} matches no position", markup=False)
    unmarked = sorted(
        {str(p.instrument) for p in positions if p.net_quantity and p.instrument not in marks}
    )
    if unmarked:
        errors.print(
            f"note: unrealised P&L is 0.00 for {len(unmarked)} open position"
            f"{'' if len(unmarked) == 1 else 's'} with no --mark: {', '.join(unmarked)}",
            markup=False,
            soft_wrap=True,
        )


class _Rupees(Decimal):
    """An amount shown to the paisa in tables (the value itself stays exact)."""


_PAISA: Final = Decimal("0.01")


def _to_paisa(value: Decimal) -> Decimal:
    """Rounded to the paisa half up, as Kite's contract notes and the ledger's charges
    round (format's own rounding is half even: 0.025 showed as 0.02); a value that
    rounds to zero is 0.00, not -0.00."""
    rounded = Decimal(value).quantize(_PAISA, rounding=ROUND_HALF_UP)
    return rounded if rounded else abs(rounded)


@app.command()
def positions(
    db: DbOption = None,
    projections_db: ProjectionsDbOption = None,
    as_of_time: AsOfOption = None,
    mark: MarkOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Positions per account, instrument and product (average-cost P&L)."""
    _check_format(fmt, ("table", "json", "csv"))
    marks = parse_marks(mark)
    instant = parse_instant(as_of_time) if as_of_time else None
    with _open(db) as ledger:
        view = current_views(ledger, instant, wanted=["positions"], projections_db=projections_db)[
            "positions"
        ]
    title = "Positions" + (f" as of {instant.isoformat()}" if instant else "")
    show_positions(view, marks, fmt, title)


def show_pnl(
    view: View, marks: dict[InstrumentRef, Decimal], by: str = "instrument", fmt: str = "table"
) -> None:
    lines = pnl_report(view, by, marks)  # type: ignore[arg-type]
    rows = []
    for line in lines:
        parts: tuple[Decimal, ...] = (line.realised_pnl, line.unrealised_pnl, line.charges)
        if fmt == "table":  # to the paisa, net from the parts shown, so that each row adds up
            realised, unrealised, charges = map(_to_paisa, parts)
            parts = tuple(map(_Rupees, (realised, unrealised, charges)))
            net: Decimal = _Rupees(realised + unrealised - charges)
        else:  # exact amounts
            net = line.net_pnl
        names = (by, "realised", "unrealised", "charges", "net")
        rows.append(dict(zip(names, (line.group, *parts, net), strict=True)))
    _emit(rows, fmt, f"P&L by {by}")


@app.command()
def pnl(
    db: DbOption = None,
    projections_db: ProjectionsDbOption = None,
    as_of_time: AsOfOption = None,
    by: Annotated[str, typer.Option(help="instrument, strategy or day.")] = "instrument",
    mark: MarkOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Realised, unrealised, charges and net P&L per instrument, strategy or day."""
    _check_format(fmt, ("table", "json", "csv"))
    if by not in ("instrument", "strategy", "day"):
        raise LedgerError(f"--by: {by!r} is not one of instrument, strategy, day")
    instant = parse_instant(as_of_time) if as_of_time else None
    with _open(db) as ledger:
        view = current_views(ledger, instant, wanted=["pnl"], projections_db=projections_db)["pnl"]
    show_pnl(view, parse_marks(mark), by, fmt)


def show_stats(view: View, fmt: str = "table") -> None:
    data = asdict(statistics(view))
    if fmt == "json":
        console.print_json(json.dumps({k: _plain(v) for k, v in data.items()}))
        return
    table = Table(title="Execution summary", title_justify="left")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for key, value in data.items():
        if isinstance(value, dict):
            shown = ", ".join(f"{k} {v}" for k, v in value.items())
        else:
            shown = _cell(value)
        table.add_row(key, shown)
    console.print(table)


@app.command()
def stats(
    db: DbOption = None,
    fmt: TableOrJsonOption = "table",
    projections_db: ProjectionsDbOption = None,
) -> None:
    """Execution summary and statistics."""
    _check_format(fmt, ("table", "json"))
    with _open(db) as ledger:
        view = current_views(ledger, wanted=["statistics"], projections_db=projections_db)[
            "statistics"
        ]
    show_stats(view, fmt)


@app.command()
def report(
    order_id: Annotated[str, typer.Argument(help="The order's id (a UUID).")],
    db: DbOption = None,
    projections_db: ProjectionsDbOption = None,
    fmt: TableOrJsonOption = "table",
) -> None:
    """The execution report of one order, with its fills and slippage."""
    _check_format(fmt, ("table", "json"))
    try:
        parsed = UUID(order_id)
    except ValueError:
        raise LedgerError(f"ORDER_ID: {order_id!r} is not an order id (a UUID)") from None
    with _open(db) as ledger:
        view = current_views(
            ledger,
            wanted=["reports"],
            where={"order_id": [str(parsed)]},
            projections_db=projections_db,
        )["reports"]
    found = report_for(view, parsed)
    if found is None:
        raise LedgerError(f"order {parsed}: no such order")
    data = {f.name: getattr(found, f.name) for f in fields(found)}
    for name in ("remaining_quantity", "average_price", "slippage", "slippage_bps"):
        data[name] = getattr(found, name)
    fills = [{f.name: getattr(x, f.name) for f in fields(x)} for x in fills_for(view, parsed)]
    if fmt == "json":
        data["fills"] = fills
        console.print_json(
            json.dumps(
                {
                    k: (
                        [{a: _plain(b) for a, b in f.items()} for f in v]
                        if k == "fills"
                        else _plain(v)
                    )
                    for k, v in data.items()
                }
            )
        )
        return
    _emit(
        [{"field": k, "value": v} for k, v in data.items()], "table", f"Execution report {parsed}"
    )
    _emit(fills, "table", "Fills")


@app.command()
def audit(
    db: DbOption = None,
    projections_db: ProjectionsDbOption = None,
    order: Annotated[str | None, typer.Option(help="An order id.")] = None,
    instrument: Annotated[str | None, typer.Option(help="EXCHANGE:SYMBOL, e.g. NSE:SBIN.")] = None,
    account: Annotated[str | None, typer.Option()] = None,
    since: Annotated[
        str | None,
        typer.Option("--from", help="From this time (inclusive; a date: from its start)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--to", help="Up to this time (exclusive; a date: through its end, all of it)."
        ),
    ] = None,
    event_type: Annotated[
        list[str] | None, typer.Option("--type", help="Event type, e.g. Filled (repeat).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or jsonl.")] = "table",
) -> None:
    """The audit trail: every event in log order, filtered."""
    _check_format(fmt, ("table", "csv", "jsonl"))
    if event_type:
        kinds = {kind.lower(): kind for kind in EVENT_CLASSES}
        unknown = [t for t in event_type if t.lower() not in kinds]
        if unknown:
            raise LedgerError(
                f"--type: {', '.join(map(repr, unknown))} is not an event type"
                f" (one of {', '.join(sorted(EVENT_CLASSES))})"
            )
        event_type = [kinds[t.lower()] for t in event_type]
    start, end = parse_window(since, until)
    filters: dict[str, Any] = {
        "account": account,
        "since": start,
        "until": end,
        "event_types": event_type,
    }
    if order:
        try:
            filters["order_id"] = UUID(order)
        except ValueError:
            raise LedgerError(f"--order: {order!r} is not an order id (a UUID)") from None
    if instrument:
        filters["instrument"] = parse_instrument(instrument)
    # The equality filters narrow what is read from the database (a full read of a long
    # trail is most of the time); `trail` applies every filter to what was read.
    where: dict[str, list[str]] = {}
    if "order_id" in filters:
        where["order_id"] = [str(filters["order_id"])]
    if account:
        where["account"] = [account]
    if event_type:
        where["event_type"] = list(event_type)
    if "instrument" in filters:
        where["exchange"] = [filters["instrument"].exchange.value]
        where["tradingsymbol"] = [filters["instrument"].tradingsymbol]
    with _open(db) as ledger:
        view = current_views(ledger, wanted=["audit"], where=where, projections_db=projections_db)[
            "audit"
        ]
    entries: list[AuditEntry] = trail(view, **filters)
    if fmt == "csv":
        write_out(to_csv(entries))
    elif fmt == "jsonl":
        for line in to_jsonl(entries):
            write_out(line + "\n")
    else:
        rows = [
            {
                "#": e.log_position,
                "recorded": e.recorded_at,
                "order": e.client_order_id,
                "instrument": f"{e.exchange}:{e.tradingsymbol}",
                "event": e.event_type,
                "actor": e.actor,
                "source": e.source,
            }
            for e in entries
        ]
        _emit(rows, "table", f"Audit trail ({len(rows)} events)")


def _store(ledger: OrderLedger, projections_db: str | None) -> ProjectionStore:
    if projections_db:
        return store_at(projections_db)
    return store_for_ledger_url(ledger.storage)


@app.command()
def project(
    db: DbOption = None,
    follow: Annotated[bool, typer.Option(help="Keep following the log until Ctrl-C.")] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Records per transaction (default: 10,000 catching up, 2,000 following).",
        ),
    ] = None,
    projections_db: ProjectionsDbOption = None,
    parent_pid: Annotated[
        int | None,
        typer.Option(hidden=True, help="Stop when this process (the one that started it) goes."),
    ] = None,
) -> None:
    """Bring every projection up to date from the log (and follow it with --follow)."""
    if parent_pid is not None:
        interrupt_when_parent_exits(parent_pid)
    with _open(db) as ledger:
        store = _store(ledger, projections_db)
        try:
            runner = ProjectionRunner(
                LedgerLog(ledger), store, all_projections(), batch_size=batch_size
            )
            behind = LedgerLog(ledger).last_position() - runner.position
            try:
                with _progress("projecting", behind) as advance:
                    runner.on_batch = advance
                    folded = runner.catch_up()
            except KeyboardInterrupt:
                # Batches already committed stay (each with its positions); the one being
                # folded was not written, so the next run resumes where the store stands.
                console.print("stopped; the next run resumes from the stored positions")
                raise typer.Exit(130) from None
            console.print(
                f"projections at position {runner.position} ({folded} new records folded)"
            )
            if follow:
                stop = threading.Event()
                console.print("following the log; Ctrl-C to stop")
                try:
                    runner.run_forever(stop)
                except KeyboardInterrupt:
                    stop.set()
        finally:
            store.close()


def _named(name: str | None) -> list[Projection]:
    projections = all_projections()
    if name is None:
        return projections
    chosen = [p for p in projections if p.name == name]
    if not chosen:
        names = ", ".join(p.name for p in projections)
        raise LedgerError(f"PROJECTION: unknown projection {name!r} (one of {names})")
    return chosen


@app.command("rebuild")
def rebuild_command(
    name: Annotated[
        str | None, typer.Argument(metavar="[PROJECTION]", help="One projection, or all.")
    ] = None,
    db: DbOption = None,
    projections_db: ProjectionsDbOption = None,
) -> None:
    """Drop projection tables and fold the whole log into them again."""
    chosen = _named(name)
    with _open(db) as ledger:
        store = _store(ledger, projections_db)
        try:
            with _progress("rebuilding", LedgerLog(ledger).last_position()) as advance:
                folded = rebuild(LedgerLog(ledger), store, chosen, on_batch=advance)
        finally:
            store.close()
    console.print(f"rebuilt {', '.join(p.name for p in chosen)} from {folded} records")


@app.command()
def export(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="The file to write (replaced only once the export is complete; a pipe"
            " or /dev/stdout is written as it goes; the ledger's own database and"
            " projections files are refused).",
        ),
    ],
    db: DbOption = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="parquet or jsonl (default: the --out suffix's; parquet for a name with"
            " no suffix, such as /dev/stdout).",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Only orders with an event recorded from then (a date: from its start);"
            " each is exported whole.",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Only orders with an event recorded before then (a date: through its end);"
            " each is exported whole.",
        ),
    ] = None,
) -> None:
    """Export the log (every event, exactly as stored) to Parquet or JSON lines.

    With --from / --to, whole orders: every event of each order that has an event
    recorded in the window, its events before and after the window included, so that
    offline-rebuild can fold the export (an order's fill without its submission cannot
    be folded). An order that spans two windows is in both exports."""
    chosen: Format | None = None
    if fmt is not None:
        chosen = "parquet" if _check_format(fmt, ("parquet", "jsonl")) == "parquet" else "jsonl"
    elif not out.suffix:
        chosen = "parquet"  # a stream or a bare name: the format it always had
    try:
        chosen = export_format(out, chosen)
    except ExportError as error:
        raise LedgerError(f"--out: {error}") from None
    if not out.parent.exists():
        raise LedgerError(f"--out: directory {out.parent} does not exist")
    start, end = parse_window(since, until)
    with _open(db) as ledger, _progress("exporting", LedgerLog(ledger).last_position()) as advance:
        count = export_log(
            ledger,
            out,
            fmt=chosen,
            since=start,
            until=end,
            on_record=lambda _: advance(1),
        )
    # On stderr: with `--out /dev/stdout` the export itself is on stdout.
    errors.print(f"exported {count} events to {out}", soft_wrap=True)


@app.command("verify")
def verify_command(
    db: DbOption = None,
    projections_db: ProjectionsDbOption = None,
    digest: Annotated[
        Path | None,
        typer.Option(
            "--digest",
            help="A digest file from `checkpoint --export`, taken earlier and kept elsewhere:"
            " prove the database still holds exactly what it held then.",
        ),
    ] = None,
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            help="Check an export (.parquet or .jsonl) instead of a database (--db is not"
            " read): its hash chains, and with --digest the checkpoints over it.",
        ),
    ] = None,
) -> None:
    """Check every order's hash chain and every digest checkpoint, then replay every order
    and every stored projection from the log and compare. Exit 1 and name the first bad
    event (and list every other difference) if anything disagrees."""
    from ledger.checkpoints import check_integrity, load_digests
    from projections.verify import verify

    reference = load_digests(digest) if digest is not None else None
    if export is not None:  # (no database is opened)
        _verify_export(export, digest, reference)
        return
    with _open(db) as ledger:
        integrity = check_integrity(ledger, reference=reference)
        store = _store(ledger, projections_db)
        try:
            with _progress("verifying", LedgerLog(ledger).last_position()) as advance:
                report = verify(ledger, store, all_projections(), on_events=advance)
        finally:
            store.close()
    chains = integrity.chains
    if integrity.findings:
        console.print(
            f"TAMPERED first bad event: {integrity.findings[0]}", markup=False, soft_wrap=True
        )
        for finding in integrity.findings[1:]:
            console.print(f"TAMPERED {finding}", markup=False, soft_wrap=True)
    for problem in report.problems:
        console.print(f"DIFFERENCE {problem}", markup=False, soft_wrap=True)
    for lag in report.behind:
        # Not a difference (it equals the log up to its position), but not the log either:
        # whoever reads the store sees the older state until a runner catches it up.
        console.print(
            f"BEHIND projection {lag.name} v{lag.version} is at log position {lag.position}"
            f" of {lag.last}: {lag.events} event{'' if lag.events == 1 else 's'} behind"
            " (it equals the log up to there;"
            " `kite-ledger project` catches it up)",
            markup=False,
            soft_wrap=True,
        )
    if integrity.findings or report.problems:
        console.print(
            f"{len(integrity.findings)} integrity findings, {len(report.problems)} differences"
        )
        raise typer.Exit(1)
    checked = _digest_matched(integrity, digest)
    compared = f"{report.current} projections equal the log"
    if report.behind:
        compared += f", {len(report.behind)} equal it only up to their positions (behind)"
    console.print(
        f"verified: {report.orders} orders and {report.events} events replay cleanly; {compared}"
    )
    console.print(
        f"hash chains intact: {chains.chained} chained events"
        + (f" ({chains.unchained} written before the chain existed)" if chains.unchained else "")
        + f"; {integrity.checkpoints} checkpoints match{checked}"
        + (
            f"; {integrity.after_last_checkpoint} events after the last checkpoint"
            " (covered by their chains only)"
            if integrity.after_last_checkpoint
            else ""
        )
    )


def _digest_matched(integrity: IntegrityReport, digest: Path | None) -> str:
    """What `verify` says of a digest file's checkpoints that all matched."""
    if digest is None:
        return ""
    after = integrity.after_last_reference
    return f"; {integrity.reference_checkpoints} checkpoints of {digest} match" + (
        f" ({after} events after its last)" if after else ""
    )


def _verify_export(export: Path, digest: Path | None, reference: list[Checkpoint] | None) -> None:
    """`verify --export`: the export's chains and the digest file's checkpoints over it."""
    from projections.offline import export_integrity

    integrity = export_integrity(export, reference=reference)
    for n, finding in enumerate(integrity.findings):
        first = "first bad event: " if n == 0 else ""
        console.print(f"TAMPERED {first}{finding}", markup=False, soft_wrap=True)
    if integrity.findings:
        console.print(f"{len(integrity.findings)} integrity findings in {export}")
        raise typer.Exit(1)
    chains = integrity.chains
    checked = _digest_matched(integrity, digest)
    console.print(
        f"verified export {export}: {chains.orders} orders and {chains.events} events;"
        f" hash chains intact: {chains.chained} chained events"
        + (f" ({chains.unchained} written before the chain existed)" if chains.unchained else "")
        + checked,
        soft_wrap=True,
    )


@app.command("checkpoint")
def checkpoint_command(
    db: DbOption = None,
    export: Annotated[
        Path | None,
        typer.Option("--export", help="Also write every checkpoint to this file (JSON)."),
    ] = None,
) -> None:
    """Write a digest checkpoint over every event since the last one; with --export, save
    all checkpoints to a file to keep elsewhere (for `verify --digest`)."""
    from ledger.checkpoints import export_checkpoints, write_checkpoint

    if export is not None:
        _check_digest_target(export)
    with _open(db) as ledger:
        checkpoint = write_checkpoint(ledger)
        if checkpoint is None:
            console.print("no new events since the last checkpoint")
        else:
            console.print(
                f"checkpoint {checkpoint.seq}: {checkpoint.event_count} events at log positions"
                f" {checkpoint.first_position}..{checkpoint.last_position},"
                f" digest {checkpoint.digest}"
            )
        if export is not None:
            count = export_checkpoints(ledger, export)
            console.print(f"exported {count} checkpoints to {export}")


def _check_digest_target(export: Path) -> None:
    """A digest file is JSON, and replaces only an earlier digest file: `--export
    log.parquet` put digests over the export they were meant to check."""
    if not export.parent.exists():
        raise LedgerError(f"--export: directory {export.parent} does not exist")
    if export.suffix.lower() != ".json":
        raise LedgerError(f"--export: {export} names no .json file (digests are JSON)")
    if export.exists():
        try:
            document = json.loads(export.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            document = None
        if not isinstance(document, dict) or document.get("kind") != "kite-ledger digests":
            raise LedgerError(
                f"--export: {export} exists and is not a digest file; it was left as it was"
            )


@app.command("offline-rebuild")
def offline_rebuild_command(
    source: Annotated[Path, typer.Option("--from", help="An export (.parquet or .jsonl).")],
    into: Annotated[
        Path,
        typer.Option(
            "--into", help="FILE.duckdb or FILE.sqlite (or .db) to build; not a ledger's own files."
        ),
    ],
) -> None:
    """Rebuild every projection from an export into a DuckDB or SQLite file: no server."""
    if not source.exists():
        raise LedgerError(f"--from: {source} does not exist")
    with _progress("rebuilding offline", None) as advance:
        folded = offline_rebuild(source, into, all_projections(), on_batch=advance)
    console.print(f"rebuilt {len(all_projections())} projections from {folded} events into {into}")
