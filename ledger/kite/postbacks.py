"""Postbacks: Kite POSTs an order's new state to the app's postback URL.

A postback is trusted only if its checksum, sha256(order_id + order_timestamp +
api_secret), matches (compared in constant time), it is for this app, and it names an
order the ledger knows. A valid postback changes nothing by itself: it is a prompt to fetch
the order's history and trades from Kite and converge the ledger to them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

MAX_POSTBACK_BYTES: Final = 64 * 1024
BODY_TIMEOUT_SECONDS: Final = 2.0


@dataclass(frozen=True)
class PostbackRefused(Exception):
    """Why a postback was refused, with the HTTP status to answer."""

    status: int
    reason: str

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}"


def expected_checksum(order_id: str, order_timestamp: str, api_secret: str) -> str:
    # surrogatepass: JSON may carry a lone surrogate ("\ud800"); it must not crash the check.
    text = f"{order_id}{order_timestamp}{api_secret}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def verify_postback(body: bytes, *, api_secret: str, app_id: int | str | None) -> dict[str, Any]:
    """The postback's payload if it is genuine and for this app; `PostbackRefused` if not."""
    if len(body) > MAX_POSTBACK_BYTES:
        raise PostbackRefused(413, f"postback larger than {MAX_POSTBACK_BYTES} bytes")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # (nesting deeper than json goes)
        raise PostbackRefused(400, "malformed postback: not JSON") from None
    if not isinstance(payload, dict):
        raise PostbackRefused(400, "malformed postback: expected a JSON object")
    missing = [
        k for k in ("order_id", "order_timestamp", "checksum", "status") if not payload.get(k)
    ]
    if missing:
        raise PostbackRefused(400, f"malformed postback: missing {', '.join(missing)}")
    fields = {k: payload[k] for k in ("order_id", "order_timestamp", "checksum")}
    if not all(isinstance(v, str | int) for v in fields.values()):
        raise PostbackRefused(
            400, "malformed postback: order_id, order_timestamp, checksum must be text"
        )
    expected = expected_checksum(
        str(fields["order_id"]), str(fields["order_timestamp"]), api_secret
    )
    given = str(fields["checksum"]).encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(expected.encode(), given):
        raise PostbackRefused(401, "checksum mismatch: not signed with this app's secret")
    if app_id is not None and str(payload.get("app_id")) != str(app_id):
        raise PostbackRefused(403, f"postback for another app ({payload.get('app_id')!r})")
    return payload


class PostbackServer:
    """An HTTP endpoint for postbacks (`POST /postback`), bound to 127.0.0.1 by default."""

    def __init__(
        self,
        accept: Callable[[bytes], tuple[int, str]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            #: Seconds an idle connection is kept (the body has its own deadline).
            timeout = BODY_TIMEOUT_SECONDS

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                if self.path.split("?")[0] != "/postback":
                    self._reply(404, "no such endpoint (POST /postback)")
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if length < 0:
                    # A negative length would read until the client hangs up: never answered.
                    self.close_connection = True
                    self._reply(400, "bad Content-Length")
                    return
                if length > MAX_POSTBACK_BYTES:
                    self.close_connection = True
                    self._reply(413, f"postback larger than {MAX_POSTBACK_BYTES} bytes")
                    return
                body, complete = self._read_body(length)
                if not complete:
                    self.close_connection = True
                    self._reply(
                        408 if body is None else 400,
                        f"the body is shorter than its Content-Length ({length} bytes)",
                    )
                    return
                assert body is not None
                status, message = server.accept(body)
                self._reply(status, message)

            def _read_body(self, length: int) -> tuple[bytes | None, bool]:
                """The declared body, read against one deadline for all of it (a client
                trickling a byte at a time cannot hold the handler longer). (None, False):
                the deadline passed; (bytes, False): the client closed early."""
                deadline = time.monotonic() + BODY_TIMEOUT_SECONDS
                received = bytearray()
                while len(received) < length:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None, False
                    self.connection.settimeout(remaining)
                    try:
                        chunk = self.rfile.read1(length - len(received))
                    except TimeoutError:
                        return None, False
                    if not chunk:
                        return bytes(received), False
                    received += chunk
                return bytes(received), True

            def do_GET(self) -> None:
                self._reply(405, "postbacks are POSTed")

            # Any other method: 405 with the same JSON answer (not the library's HTML 501).
            do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET  # noqa: N815

            def _reply(self, status: int, message: str) -> None:
                data = json.dumps(
                    {"status": "ok" if status < 300 else "error", "message": message}
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.accept = accept
        self._http = ThreadingHTTPServer((host, port), Handler)
        self._http.daemon_threads = True
        self.url = f"http://{host}:{self._http.server_address[1]}/postback"
        self._thread: threading.Thread | None = None

    def start(self) -> PostbackServer:
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="postbacks", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        if self._thread is not None:
            self._thread.join(5)
