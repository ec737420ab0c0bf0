"""KiteTicker against the sandbox, in a process of its own (Twisted's reactor runs once per
process). Updates reach the ledger only over the WebSocket: no postbacks, no polling.

    python -m tests.e2e.ticker_child LEDGER_URL
"""

from __future__ import annotations

import sys
import threading
import time

from kiteconnect import KiteTicker

from ledger.application import open_ledger
from ledger.kite.sandbox import KiteSandbox
from ledger.kite.service import KiteService
from tests.kite_support import assert_matches_sandbox, gateway_for, trading_session


def main(url: str) -> None:
    with KiteSandbox(seed=21) as sandbox, open_ledger(url) as ledger:
        gateway = gateway_for(ledger, sandbox)
        service = KiteService(  # WebSocket only: no postback URL is given to the sandbox
            gateway,
            api_secret=sandbox.api_secret,
            app_id=sandbox.app_id,
            poll_interval=3600,
            dispatch_interval=3600,
        )
        service.start()
        connected = threading.Event()
        ticker = KiteTicker(sandbox.api_key, sandbox.access_token, root=sandbox.ws_root)
        ticker.on_order_update = service.on_websocket_update
        ticker.on_connect = lambda ws, response: connected.set()
        ticker.connect(threaded=True)
        if not connected.wait(15):
            raise SystemExit("KiteTicker did not connect")
        trading_session(ledger, sandbox, gateway)
        sandbox.wait_for_updates()
        deadline = time.monotonic() + 20
        while True:
            service.worker.drain()
            try:
                assert_matches_sandbox(ledger, sandbox)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        print(f"ok {len(sandbox.orders)} orders {len(sandbox.trades)} trades", flush=True)
        service.stop()
        ticker.close()


if __name__ == "__main__":
    main(sys.argv[1])
