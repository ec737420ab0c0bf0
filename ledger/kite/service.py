"""The running gateway: dispatcher, postback endpoint, WebSocket and polling, together.

`KiteService.start()` reconciles first (orders, trades: whatever happened while the ledger
was not watching), then keeps four things going until `stop()`:

* the dispatcher, sending new orders, cancellations and modifications from the log;
* the postback endpoint (`POST /postback`), which checks each postback and prompts a
  converge of that order;
* WebSocket order updates (`on_websocket_update`, for `KiteTicker.on_order_update`),
  prompts too;
* polling of the order book and trade book, which catches whatever prompts missed.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ledger.domain.values import Source
from ledger.kite.gateway import KiteGateway, OrdersReconciliation, UpdateWorker
from ledger.kite.payloads import KiteOrder
from ledger.kite.postbacks import PostbackRefused, PostbackServer, verify_postback

log = logging.getLogger(__name__)


class KiteService:
    def __init__(
        self,
        gateway: KiteGateway,
        *,
        api_secret: str,
        app_id: int | str | None,
        postback_host: str = "127.0.0.1",
        postback_port: int = 0,
        dispatch_interval: float = 0.1,
        poll_interval: float = 2.0,
    ) -> None:
        self.gateway = gateway
        self._secret = api_secret
        self.app_id = app_id
        self.worker = UpdateWorker(gateway)
        self.postbacks = PostbackServer(
            self.accept_postback, host=postback_host, port=postback_port
        )
        self.dispatch_interval = dispatch_interval
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.startup: OrdersReconciliation | None = None

    @property
    def postback_url(self) -> str:
        return self.postbacks.url

    def accept_postback(self, body: bytes) -> tuple[int, str]:
        """Check a postback; if genuine, for this app and for a known order, prompt a
        converge. Returns the HTTP status and message to answer with."""
        try:
            payload = verify_postback(body, api_secret=self._secret, app_id=self.app_id)
            try:
                update = KiteOrder.model_validate(payload)
            except ValueError as error:
                raise PostbackRefused(400, f"malformed postback: {error}") from None
            if self.gateway.order_for(update, refresh=True) is None:
                raise PostbackRefused(
                    404, f"unknown order {update.order_id}: not placed through this ledger"
                )
        except PostbackRefused as refusal:
            log.warning("postback refused: %s", refusal)
            return refusal.status, refusal.reason
        self.worker.prompt(update.order_id, Source.POSTBACK, hint=update)
        return 200, "accepted"

    def on_websocket_update(self, _ws: Any, data: dict[str, Any]) -> None:
        """`KiteTicker.on_order_update`: the same payload as a postback, without checksum."""
        order_id = data.get("order_id") if isinstance(data, dict) else None
        if not order_id:
            return
        try:
            hint: KiteOrder | None = KiteOrder.model_validate(data)
        except ValueError:
            hint = None  # still a prompt; the converge fetches what Kite says
        self.worker.prompt(str(order_id), Source.WEBSOCKET, hint=hint)

    def start(self) -> KiteService:
        self.startup = self.gateway.reconcile()
        self.worker.start()
        self.postbacks.start()
        self._loop(self.gateway.dispatch, self.dispatch_interval, "dispatcher")
        self._loop(self.gateway.poll, self.poll_interval, "poller")
        return self

    def _loop(self, action: Any, interval: float, name: str) -> None:
        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    action()
                except Exception as error:  # a loop must outlive one bad pass; it is logged
                    self.errors.append(f"{name}: {error}")
                    log.warning("%s pass failed: %s", name, error)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self.postbacks.stop()
        self.worker.stop()
