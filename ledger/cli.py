"""The `kite-ledger` command line.

Errors the user can fix (a bad database URL, an unknown order id) are printed as one line
on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Annotated
from uuid import UUID

import typer
from rich.console import Console
from rich.table import Table

from ledger.application import OrderLedger, open_ledger
from ledger.demo import DemoResult, run_session
from ledger.domain.errors import LedgerError
from ledger.domain.order import Order
from ledger.domain.status import OrderStatus
from ledger.domain.values import IST
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

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="LEDGER_DATABASE_URL",
        help="SQLite path or postgresql:// URL (default ./ledger.db).",
        show_default=False,
    ),
]


def _open(db: str | None) -> OrderLedger:
    return open_ledger(db)


def _money(value: Decimal | None) -> str:
    """Two decimals where that is exact; otherwise up to four (display only: the ledger
    keeps the exact value)."""
    if value is None:
        return ""
    if value == value.quantize(Decimal("0.01")):
        return f"{value:,.2f}"
    return f"{value:,.4f}".rstrip("0")


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
def demo(db: DbOption = None) -> None:
    """Run a scripted trading session into the ledger and show what it recorded."""
    with _open(db) as ledger:
        result: DemoResult = run_session(ledger)
        where = ledger.storage.display if ledger.storage else db
        console.print(f"[bold]Demo session {result.session}[/] recorded in {where}")
        console.print(orders_table(result.orders, title=f"Orders of session {result.session}"))
        showcase = ledger.get_order(result.showcase_order_id)
        console.print(history_table(showcase, ledger.history(showcase.id)))
        console.print("[bold]Refused, with nothing written:[/]")
        for refusal in result.refusals:
            console.print(f"  - {refusal}", soft_wrap=True)
        console.print(
            f"\nNext: [cyan]kite-ledger orders[/], [cyan]kite-ledger order {showcase.id}[/]"
        )


@app.command("orders")
def list_orders(
    db: DbOption = None,
    status: Annotated[
        str | None, typer.Option(help="e.g. FILLED, CANCELLED, PARTIALLY_FILLED")
    ] = None,
    account: Annotated[str | None, typer.Option()] = None,
    strategy: Annotated[str | None, typer.Option()] = None,
) -> None:
    """List orders with status, filled quantity and average price."""
    wanted = None
    if status is not None:
        try:
            wanted = OrderStatus(status.upper())
        except ValueError:
            choices = ", ".join(s.value for s in OrderStatus)
            raise LedgerError(f"--status: unknown status {status!r} (one of {choices})") from None
    with _open(db) as ledger:
        orders = ledger.list_orders(status=wanted, account=account, strategy=strategy)
        console.print(orders_table(orders))


@app.command("order")
def show_order(
    order_id: Annotated[str, typer.Argument(help="The order's id (a UUID).")],
    db: DbOption = None,
) -> None:
    """Show one order and its full event history."""
    try:
        parsed = UUID(order_id)
    except ValueError:
        raise LedgerError(f"ORDER_ID: {order_id!r} is not an order id (a UUID)") from None
    with _open(db) as ledger:
        order = ledger.get_order(parsed)
        console.print(orders_table([order], title="Order"))
        console.print(history_table(order, ledger.history(parsed)))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except (LedgerError, InstrumentDataError) as error:
        errors.print(f"error: {error}", soft_wrap=True, markup=False, highlight=False)
        sys.exit(2)


# The read-side commands register themselves on `app` (they import from this module).
# Run the CLI as `kite-ledger` or `python -m ledger`.
from ledger import cli_kite, cli_read  # noqa: E402

__all__ = ["Path", "app", "cli_kite", "cli_read", "main"]
