"""The `kite-ledger` command line.

Errors the user can fix (a bad database URL, an unknown order id) are printed as one line
on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import sys
from collections.abc import Iterable
from datetime import date
from decimal import ROUND_HALF_EVEN, Context, Decimal
from pathlib import Path
from typing import Annotated, Any, Final
from uuid import UUID

import typer
from eventsourcing.persistence import PersistenceError
from rich.console import Console
from rich.table import Table

from ledger.application import OrderLedger, open_ledger
from ledger.commands import CancelOrder, ModifyOrder, SubmitOrder
from ledger.demo import DemoResult, run_session
from ledger.domain.errors import LedgerError
from ledger.domain.order import Order
from ledger.domain.status import OrderStatus
from ledger.domain.values import IST, Exchange, InstrumentRef
from ledger.instruments import InstrumentDataError

app = typer.Typer(
    name="kite-ledger",
    help="An event-sourced order ledger for Kite Connect traders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (CI logs, `| less`) gets a wide table instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True)


def write_out(text: str) -> None:
    """Machine-readable output (CSV, JSON lines) exactly as made: straight to stdout, not
    through rich, whose highlighting of the text took 80 of the 86 s `kite-ledger audit
    --format csv` spent on 100,000 rows."""
    sys.stdout.write(text)


DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="LEDGER_DATABASE_URL",
        help="SQLite path or postgresql:// URL (default ./ledger.db).",
        show_default=False,
    ),
]


def _open(db: str | None, *, create: bool = False) -> OrderLedger:
    """The ledger at `db`. Commands that only read refuse a SQLite file that does not exist
    (rather than creating an empty one and showing nothing)."""
    from ledger.persistence import StorageSettings

    settings = StorageSettings.from_url(db)
    path = settings.sqlite_path
    if not create and path is not None and not path.exists():
        raise LedgerError(
            f"database {path} does not exist (run `kite-ledger demo` to make one, or pass --db)"
        )
    try:
        return open_ledger(db)
    except (sqlite3.DatabaseError, PersistenceError) as error:
        if path is None:
            raise
        raise LedgerError(f"database {path} cannot be opened as a ledger ({error})") from None


_FOUR_PLACES: Final = Decimal("0.0001")
_DISPLAY: Final = Context(prec=60, rounding=ROUND_HALF_EVEN)


def _money(value: Decimal | None) -> str:
    """At least two decimals and at most four (display only: the ledger keeps the exact
    value): rounded to four places (half-even) first, then trailing zeros past the
    second dropped. Stripping zeros from the four-place text left "100." for
    100.0000049995 and "-0." for -0.00001; a value that rounds to zero shows as 0.00,
    not -0.00."""
    if value is None:
        return ""
    rounded = value.quantize(_FOUR_PLACES, context=_DISPLAY)
    if not rounded:
        rounded = abs(rounded)  # no negative zero
    whole, _, places = f"{rounded:,.4f}".partition(".")
    return f"{whole}.{places.rstrip('0').ljust(2, '0')}"


def orders_table(orders: Iterable[Order], title: str = "Orders") -> Table:
    """A table of orders: the view a trader scans first."""
    table = Table(title=title, title_justify="left")
    for column, justify in (
        ("client order id", "left"),
        ("instrument", "left"),
        ("side", "left"),
        ("type", "left"),
        ("qty", "right"),
        ("price", "right"),
        ("status", "left"),
        ("filled", "right"),
        ("avg price", "right"),
        ("charges", "right"),
        ("broker id", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for order in orders:
        table.add_row(
            order.client_order_id,
            str(order.instrument),
            order.side.value,
            order.order_type.value,
            str(order.quantity),
            _money(order.price),
            order.status.value,
            str(order.filled_quantity),
            _money(order.average_price),
            _money(order.charges),
            order.broker_order_id or "",
        )
    return table


def _describe(event: Order.Event) -> str:
    skip = {"originator_id", "originator_version", "timestamp", "originator_topic"}
    parts = []
    for name, value in vars(event).items():
        if name in skip or value is None:
            continue
        shown = value.value if hasattr(value, "value") and not isinstance(value, Decimal) else value
        if hasattr(value, "isoformat"):
            shown = (
                value.astimezone(IST).strftime("%H:%M:%S")
                if hasattr(value, "astimezone")
                else value
            )
        parts.append(f"{name}={shown}")
    return ", ".join(parts)


def history_table(order: Order, events: Iterable[Order.Event]) -> Table:
    """An order's events, oldest first."""
    table = Table(title=f"History of {order.client_order_id} ({order.id})", title_justify="left")
    table.add_column("v", justify="right")
    table.add_column("recorded (IST)")
    table.add_column("event")
    table.add_column("details", overflow="fold")
    for event in events:
        table.add_row(
            str(event.originator_version),
            event.timestamp.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            type(event).__name__,
            _describe(event),
        )
    return table


@app.command()
def demo(
    db: DbOption = None,
    seconds: Annotated[float, typer.Option(min=1, help="Length of the simulated session.")] = 10.0,
    orders: Annotated[int, typer.Option(min=1, help="How many orders the strategy may send.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the market and the strategy.")] = 2026,
    scripted: Annotated[
        bool, typer.Option(help="Run the short scripted session through the Python API instead.")
    ] = False,
) -> None:
    """Trade a simulated session through the local Kite sandbox and show the results."""
    with _open(db, create=True) as ledger:
        where = ledger.storage.display if ledger.storage else db
        if scripted:
            _scripted_demo(ledger, where)
            return
        _kite_demo(ledger, where, seconds, orders, seed)


def _kite_demo(
    ledger: OrderLedger, where: str | None, seconds: float, budget: int, seed: int
) -> None:
    from rich.progress import BarColumn, Progress, TextColumn

    from ledger.cli_read import current_views, show_pnl, show_positions, show_stats
    from ledger.demo_kite import next_kite_session, run_kite_demo

    session = next_kite_session(ledger)
    console.print(
        f"[bold]Kite sandbox demo[/], session {session}: {seconds:g} s, up to {budget} orders,"
        f" seed {seed}, into {where}"
    )
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("trading", total=None, status="")

        def update(p: Any) -> None:
            bar.update(
                task,
                total=p.ticks,
                completed=p.tick,
                status=f"{p.submitted} orders, {p.modified} modified, {p.cancelled} cancels",
            )

        run = run_kite_demo(
            ledger,
            seconds=seconds,
            orders=budget,
            seed=seed + session - 1,
            session=session,
            on_progress=update,
        )
    console.print(
        f"{len(run.orders)} orders; {sum(len(o.fills) for o in run.orders)} fills;"
        f" {run.websocket_updates} WebSocket updates (some duplicated on purpose); postbacks"
        " verified and applied; duplicates counted once"
    )
    console.print(orders_table(run.orders, title=f"Orders of session {session}"))
    views = current_views(ledger, wanted=["positions", "pnl", "statistics"])
    show_positions(views["positions"], run.marks)
    show_pnl(views["pnl"], run.marks)
    show_stats(views["statistics"])
    from ledger.checkpoints import write_checkpoint

    checkpoint = write_checkpoint(ledger)
    if checkpoint is not None:
        console.print(
            f"checkpoint {checkpoint.seq} over {checkpoint.event_count} events:"
            f" digest {checkpoint.digest}"
        )
    late = [o for o in run.orders if _late(o, ledger)]
    if late:
        console.print(f"late fills after a cancel: {', '.join(o.client_order_id for o in late)}")
    sample = next(
        (o for o in run.orders if len(o.fills) > 1), run.orders[0] if run.orders else None
    )
    console.print("\nTry next, on the same database:")
    for command in (
        "kite-ledger orders --status CANCELLED",
        f"kite-ledger order {sample.id}" if sample else "kite-ledger orders",
        f"kite-ledger report {sample.id}" if sample else "kite-ledger stats",
        "kite-ledger positions --as-of <a time during the session>",
        "kite-ledger audit --type Filled --format csv",
        "kite-ledger checkpoint --export digests.json  (keep that file elsewhere)",
        "kite-ledger verify --digest digests.json",
        "kite-ledger export --format parquet --out log.parquet",
        "kite-ledger offline-rebuild --from log.parquet --into ledger.duckdb",
    ):
        console.print(f"  [cyan]{command}[/]")


def _late(order: Order, ledger: OrderLedger) -> bool:
    """Whether a fill was recorded after the order's Cancelled event."""
    kinds = [type(e).__name__ for e in ledger.history(order.id)]
    return "Cancelled" in kinds and "Filled" in kinds[kinds.index("Cancelled") :]


def _scripted_demo(ledger: OrderLedger, where: str | None) -> None:
    result: DemoResult = run_session(ledger)
    console.print(f"[bold]Demo session {result.session}[/] recorded in {where}")
    console.print(orders_table(result.orders, title=f"Orders of session {result.session}"))
    showcase = ledger.get_order(result.showcase_order_id)
    console.print(history_table(showcase, ledger.history(showcase.id)))
    console.print("[bold]Refused, with nothing written:[/]")
    for refusal in result.refusals:
        console.print(f"  - {refusal}", soft_wrap=True)
    console.print(f"\nNext: [cyan]kite-ledger orders[/], [cyan]kite-ledger order {showcase.id}[/]")


def _order_id(text: str, name: str = "ORDER_ID") -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise LedgerError(f"{name}: {text!r} is not an order id (a UUID)") from None


def _order_row(order: Order) -> dict[str, Any]:
    return {
        "order_id": str(order.id),
        "account": order.account,
        "client_order_id": order.client_order_id,
        "strategy": order.strategy,
        "instrument": str(order.instrument),
        "side": order.side.value,
        "order_type": order.order_type.value,
        "product": order.product.value,
        "quantity": order.quantity,
        "price": None if order.price is None else str(order.price),
        "trigger_price": None if order.trigger_price is None else str(order.trigger_price),
        "status": order.status.value,
        "filled_quantity": order.filled_quantity,
        "average_price": None if order.average_price is None else str(order.average_price),
        "charges": str(order.charges),
        "broker_order_id": order.broker_order_id,
        "submitted_at": order.created_on.isoformat(),
        "version": order.version,
    }


def _print_orders(orders: list[Order], fmt: str, title: str = "Orders") -> None:
    if fmt == "table":
        console.print(orders_table(orders, title=title))
    elif fmt == "json":
        console.print_json(json.dumps([_order_row(o) for o in orders]))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(_ORDER_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(_order_row(o) for o in orders)
        write_out(out.getvalue())
    else:
        raise LedgerError(f"--format: {fmt!r} is not one of table, json, csv")


FormatOpt = Annotated[str, typer.Option("--format", help="table, json or csv.")]


@app.command("orders")
def list_orders(
    db: DbOption = None,
    status: Annotated[
        str | None, typer.Option(help="e.g. FILLED, CANCELLED, PARTIALLY_FILLED")
    ] = None,
    instrument: Annotated[str | None, typer.Option(help="EXCHANGE:SYMBOL, e.g. NSE:SBIN.")] = None,
    account: Annotated[str | None, typer.Option()] = None,
    strategy: Annotated[str | None, typer.Option()] = None,
    day: Annotated[
        str | None, typer.Option("--date", help="Submitted on this day (YYYY-MM-DD, IST).")
    ] = None,
    fmt: FormatOpt = "table",
) -> None:
    """List orders with status, filled quantity and average price."""
    wanted = None
    if status is not None:
        try:
            wanted = OrderStatus(status.upper())
        except ValueError:
            choices = ", ".join(s.value for s in OrderStatus)
            raise LedgerError(f"--status: unknown status {status!r} (one of {choices})") from None
    ref = None
    if instrument is not None:
        exchange, _, symbol = instrument.partition(":")
        try:
            ref = InstrumentRef(Exchange(exchange.upper()), symbol)
        except ValueError:
            raise LedgerError(f"--instrument: {instrument!r} is not EXCHANGE:SYMBOL") from None
        if not symbol:
            raise LedgerError(f"--instrument: {instrument!r} is not EXCHANGE:SYMBOL")
    on = None
    if day is not None:
        try:
            on = date.fromisoformat(day)
        except ValueError:
            raise LedgerError(f"--date: {day!r} is not a date (YYYY-MM-DD)") from None
    if fmt not in ("table", "json", "csv"):
        raise LedgerError(f"--format: {fmt!r} is not one of table, json, csv")
    with _open(db) as ledger:
        orders = ledger.list_orders(
            status=wanted, instrument=ref, account=account, strategy=strategy
        )
    if on is not None:
        orders = [o for o in orders if o.created_on.astimezone(IST).date() == on]
    _print_orders(orders, fmt)


@app.command("order")
def show_order(
    order_id: Annotated[str, typer.Argument(help="The order's id (a UUID).")],
    db: DbOption = None,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Show one order and its full event history."""
    parsed = _order_id(order_id)
    if fmt not in ("table", "json"):
        raise LedgerError(f"--format: {fmt!r} is not one of table, json")
    with _open(db) as ledger:
        order = ledger.get_order(parsed)
        history = ledger.history(parsed)
    if fmt == "json":
        row = _order_row(order)
        row["events"] = [
            {
                "version": e.originator_version,
                "type": type(e).__name__,
                "recorded_at": e.timestamp.isoformat(),
                "details": _describe(e),
            }
            for e in history
        ]
        console.print_json(json.dumps(row))
        return
    console.print(orders_table([order], title="Order"))
    console.print(history_table(order, history))


@app.command()
def submit(
    account: Annotated[str, typer.Option(help="Kite user id.")],
    client_order_id: Annotated[str, typer.Option(help="Your id for the order (retries reuse it).")],
    instrument: Annotated[str, typer.Option(help="EXCHANGE:SYMBOL, e.g. NSE:SBIN.")],
    side: Annotated[str, typer.Option(help="BUY or SELL.")],
    quantity: Annotated[int, typer.Option(help="Units (a multiple of the lot size).")],
    order_type: Annotated[str, typer.Option("--type", help="MARKET, LIMIT, SL or SL-M.")],
    product: Annotated[str, typer.Option(help="CNC, MIS, NRML or MTF.")],
    db: DbOption = None,
    price: Annotated[str | None, typer.Option(help="Limit price.")] = None,
    trigger_price: Annotated[str | None, typer.Option(help="Stop trigger.")] = None,
    validity: Annotated[str, typer.Option(help="DAY, IOC or TTL.")] = "DAY",
    validity_ttl: Annotated[
        int | None, typer.Option(help="Minutes the order lives, with --validity TTL.")
    ] = None,
    market_protection: Annotated[
        str | None, typer.Option(help="-1 (auto) or a percentage.")
    ] = None,
    strategy: Annotated[str | None, typer.Option()] = None,
    reference_price: Annotated[
        str | None, typer.Option(help="Decision price, for slippage.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Record a new order (the gateway, `kite-ledger serve`, sends it to Kite)."""
    exchange, _, symbol = instrument.partition(":")
    fields: dict[str, Any] = {
        "account": account,
        "client_order_id": client_order_id,
        "exchange": exchange.upper(),
        "tradingsymbol": symbol,
        "side": side.upper(),
        "quantity": quantity,
        "order_type": order_type.upper(),
        "product": product.upper(),
        "validity": validity.upper(),
        "actor": "cli",
    }
    for name, value in (
        ("price", price),
        ("trigger_price", trigger_price),
        ("market_protection", market_protection),
        ("strategy", strategy),
        ("reference_price", reference_price),
        ("validity_ttl", validity_ttl),
    ):
        if value is not None:
            fields[name] = value
    command = SubmitOrder.parse(fields)
    with _open(db, create=True) as ledger:
        order = ledger.submit(command)
    _print_orders([order], "json" if fmt == "json" else "table", title="Submitted")
    if fmt != "json":  # the id `order`, `report`, `modify` and `cancel` take
        console.print(f"order id {order.id}", markup=False, highlight=False)


@app.command()
def modify(
    order_id: Annotated[str, typer.Argument(help="The order's id (a UUID).")],
    db: DbOption = None,
    quantity: Annotated[int | None, typer.Option()] = None,
    price: Annotated[str | None, typer.Option()] = None,
    trigger_price: Annotated[str | None, typer.Option()] = None,
    order_type: Annotated[str | None, typer.Option("--type")] = None,
) -> None:
    """Ask for a modification of a working order."""
    fields: dict[str, Any] = {"order_id": _order_id(order_id), "actor": "cli"}
    for name, value in (("quantity", quantity), ("price", price), ("trigger_price", trigger_price)):
        if value is not None:
            fields[name] = value
    if order_type is not None:
        fields["order_type"] = order_type.upper()
    command = ModifyOrder.parse(fields)
    with _open(db) as ledger:
        order = ledger.request_modify(command)
    _print_orders([order], "table", title="Modification requested")


@app.command()
def cancel(
    order_id: Annotated[str, typer.Argument(help="The order's id (a UUID).")],
    db: DbOption = None,
    reason: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Ask for a working order to be cancelled."""
    command = CancelOrder(order_id=_order_id(order_id), reason=reason, actor="cli")
    with _open(db) as ledger:
        order = ledger.request_cancel(command)
    _print_orders([order], "table", title="Cancellation requested")


_ORDER_COLUMNS = (
    "order_id",
    "account",
    "client_order_id",
    "strategy",
    "instrument",
    "side",
    "order_type",
    "product",
    "quantity",
    "price",
    "trigger_price",
    "status",
    "filled_quantity",
    "average_price",
    "charges",
    "broker_order_id",
    "submitted_at",
    "version",
)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except (LedgerError, InstrumentDataError) as error:
        errors.print(f"error: {error}", soft_wrap=True, markup=False, highlight=False)
        sys.exit(2)
    except OSError as error:  # a path that is a directory, or that may not be written
        errors.print(f"error: {error}", soft_wrap=True, markup=False, highlight=False)
        sys.exit(2)


# The read-side commands register themselves on `app` (they import from this module).
# Run the CLI as `kite-ledger` or `python -m ledger`.
from ledger import cli_kite, cli_read  # noqa: E402

__all__ = ["Path", "app", "cli_kite", "cli_read", "main"]
