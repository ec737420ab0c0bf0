"""`kite-ledger sandbox`, `serve` and `reconcile`: the Kite side of the command line.

Credentials come from the environment (`KITE_API_KEY`, `KITE_ACCESS_TOKEN`,
`KITE_API_SECRET`), never from arguments, so they stay out of shell history and `ps`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from decimal import Decimal
from typing import Annotated

import typer

from ledger.cli import DbOption, _open, app, console
from ledger.domain.errors import LedgerError
from ledger.kite.gateway import KiteGateway
from ledger.kite.outbox import Outbox
from ledger.kite.sandbox import KiteSandbox
from ledger.kite.service import KiteService

KITE_ROOT = "https://api.kite.trade"
KITE_WS_ROOT = "wss://ws.kite.trade"


def _credential(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise LedgerError(
            f"{name} is not set (export it; credentials are never taken as arguments)"
        )
    return value


@app.command()
def sandbox(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="REST port (0: any free one).")] = 5800,
    ws_port: Annotated[int, typer.Option(help="WebSocket port.")] = 5801,
    postback_url: Annotated[str | None, typer.Option(help="Where to POST order updates.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulated market.")] = 7,
    tick: Annotated[float, typer.Option(help="Seconds between market steps.")] = 0.5,
) -> None:
    """Run the local Kite sandbox until Ctrl-C."""
    try:
        box = KiteSandbox(seed=seed, postback_url=postback_url).start(host, port, ws_port)
    except OSError as error:  # a port taken, an address this machine does not have
        raise LedgerError(
            f"cannot listen on {host} port {port} (--port) and {ws_port} (--ws-port):"
            f" {error.strerror or error}"
        ) from None
    box.run_market(tick)
    console.print(
        json.dumps(
            {
                "root": box.root,
                "ws_root": box.ws_root,
                "api_key": box.api_key,
                "access_token": box.access_token,
                "api_secret": box.api_secret,
                "app_id": box.app_id,
            },
            indent=2,
        )
    )
    console.print("sandbox running; Ctrl-C to stop")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        box.stop()


def _reason(error: BaseException) -> str:
    """The innermost cause of a connection error, as one short phrase ("Connection
    refused"), not urllib3's pool and retry wrappers."""
    while error.__context__ is not None or error.__cause__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    text = str(error)
    return text.rsplit("] ", 1)[-1] if "] " in text else text


def _gateway(db: str | None, root: str, account: str) -> tuple[KiteGateway, Outbox]:
    from kiteconnect import KiteConnect

    ledger = _open(db, create=True)
    assert ledger.storage is not None
    kite = KiteConnect(
        _credential("KITE_API_KEY"), _credential("KITE_ACCESS_TOKEN"), root=root, timeout=10
    )
    outbox = Outbox(ledger.storage)
    return KiteGateway(ledger, kite, outbox=outbox, account=account), outbox


AccountOption = Annotated[
    str, typer.Option("--account", envvar="KITE_USER_ID", help="Your Kite user id.")
]
RootOption = Annotated[
    str,
    typer.Option(
        "--kite-root", envvar="KITE_ROOT", help="Kite REST root (the sandbox's for tests)."
    ),
]


@app.command()
def serve(
    account: AccountOption,
    db: DbOption = None,
    kite_root: RootOption = KITE_ROOT,
    ws_root: Annotated[
        str | None,
        typer.Option(
            "--ws-root", envvar="KITE_WS_ROOT", help="Kite WebSocket root; omit to skip it."
        ),
    ] = None,
    app_id: Annotated[
        str | None, typer.Option(envvar="KITE_APP_ID", help="Refuse postbacks for other apps.")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Postback endpoint address (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Postback endpoint port.")] = 8088,
    poll: Annotated[float, typer.Option(help="Seconds between polls of the order book.")] = 5.0,
    checkpoint_every: Annotated[
        float, typer.Option(help="Seconds between digest checkpoints of the log.")
    ] = 60.0,
    projections: Annotated[
        str,
        typer.Option(
            help="Keep the projections current in a child process (process), in this one"
            " (inline: commands wait behind a catch-up), or not at all (off: run"
            " `kite-ledger project --follow` yourself)."
        ),
    ] = "process",
) -> None:
    """Run the gateway: reconcile, dispatch orders, take postbacks at POST /postback,
    follow WebSocket updates, poll, and keep the projections current. Ctrl-C stops it."""
    from ledger.projection_process import ProjectionProcess
    from projections import all_projections
    from projections.runner import LedgerLog, ProjectionRunner
    from projections.store import store_for_ledger_url

    if projections not in ("process", "inline", "off"):
        raise LedgerError(f"--projections: {projections!r} is not one of process, inline, off")
    gateway, outbox = _gateway(db, kite_root, account)
    ledger = gateway.ledger
    service = KiteService(
        gateway,
        api_secret=_credential("KITE_API_SECRET"),
        app_id=app_id,
        postback_host=host,
        postback_port=port,
        poll_interval=poll,
    )
    service.start()
    startup = service.startup
    console.print(f"postbacks: {service.postback_url}")
    if startup is not None:
        console.print(
            f"reconciled {startup.broker_orders} broker orders: {startup.recorded} events recorded,"
            f" {len(startup.adopted)} adopted, {len(startup.expired)} expired,"
            f" {len(startup.problems)} problems, {len(startup.differences)} differences"
        )
        for expired in startup.expired:
            console.print(f"  expired: {expired}")
        for difference in startup.differences:
            console.print(f"  differs: {difference}")
    ticker = None
    if ws_root:
        from kiteconnect import KiteTicker

        ticker = KiteTicker(
            _credential("KITE_API_KEY"), _credential("KITE_ACCESS_TOKEN"), root=ws_root
        )
        ticker.on_order_update = service.on_websocket_update
        ticker.connect(threaded=True)
    stop = threading.Event()

    def checkpoints() -> None:
        from ledger.checkpoints import write_checkpoint

        while not stop.wait(checkpoint_every):
            write_checkpoint(ledger)
        write_checkpoint(ledger)

    checkpointer = threading.Thread(target=checkpoints, name="checkpoints", daemon=True)
    checkpointer.start()
    store = store_for_ledger_url(ledger.storage) if projections == "inline" else None
    child = ProjectionProcess(db) if projections == "process" else None
    console.print(f"serving (projections: {projections}); Ctrl-C to stop")
    try:
        if child is not None:
            child.start()
        if store is not None:
            ProjectionRunner(LedgerLog(ledger), store, all_projections()).run_forever(stop)
        else:
            stop.wait()
    except KeyboardInterrupt:
        stop.set()
    finally:
        stop.set()
        if child is not None:
            child.stop()
        checkpointer.join(timeout=30)
        service.stop()
        if store is not None:
            store.close()
        outbox.close()
        ledger.close()
        if ticker is not None:
            ticker.close()


@app.command()
def reconcile(
    account: AccountOption,
    db: DbOption = None,
    kite_root: RootOption = KITE_ROOT,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Orders, trades and positions at Kite against the ledger: record missed fills (a
    second run adds nothing), adopt orders placed elsewhere, report what still differs."""
    from ledger.domain.values import IST
    from projections.reconciliation import ledger_positions
    from projections.reconciliation import reconcile as compare_positions
    from projections.runner import LedgerLog

    if fmt not in ("table", "json"):
        raise LedgerError(f"--format: {fmt!r} is not one of table, json")
    import requests

    gateway, outbox = _gateway(db, kite_root, account)
    try:
        try:
            orders = gateway.reconcile()
        except requests.ConnectionError as error:
            raise LedgerError(
                f"cannot reach Kite at {kite_root} (--kite-root, KITE_ROOT): {_reason(error)}"
            ) from None
        log = LedgerLog(gateway.ledger)
        events, after = [], 0
        while batch := log.read(after, 5000):
            events += batch
            after = batch[-1][0]
        # Kite's `net` is today's plus what was carried, its `day` today's alone: the
        # ledger's whole log is compared with the one, its fills of today with the other.
        today = gateway.ledger.clock().astimezone(IST).date()
        positions, today_positions = ledger_positions(events, today)
        report = compare_positions(
            account, positions, gateway.call("positions"), day_positions=today_positions
        )
    finally:
        outbox.close()
        gateway.ledger.close()
    result = {
        "broker_orders": orders.broker_orders,
        "events_recorded": orders.recorded,
        "adopted": orders.adopted,
        "expired": orders.expired,
        "order_problems": orders.problems,
        "order_differences": orders.differences,
        "positions_matched": report.matched,
        "position_differences": [str(d) for d in report.differences],
    }
    if fmt == "json":
        console.print_json(
            json.dumps(result, default=lambda v: str(v) if isinstance(v, Decimal) else v)
        )
        return
    for key, value in result.items():
        console.print(f"{key}: {value}")
    if report.differences or orders.problems or orders.differences:
        raise typer.Exit(1)
