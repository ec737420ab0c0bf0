"""Fuzz: postback bodies, through the service's handler and over HTTP.

Bodies are Kite's real postback with fields damaged (re-signed, so they get past the
checksum and reach the parser), forged checksums, other apps, truncated or non-UTF-8 JSON,
and junk. Every one is answered 200 (a genuine update: a prompt) or 4xx with a reason;
nothing is ever written to the log, and a refused postback prompts nothing.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.application import OrderLedger
from ledger.commands import RecordAccepted
from ledger.kite.gateway import KiteGateway
from ledger.kite.limiter import RateLimiter
from ledger.kite.outbox import Outbox
from ledger.kite.postbacks import MAX_POSTBACK_BYTES, expected_checksum
from ledger.kite.service import KiteService
from tests.conftest import LedgerFactory
from tests.property.fuzz import (
    damaged_bytes,
    field_values,
    json_values,
    kite_sample,
    mutated,
    to_json_bytes,
)
from tests.scale import report, scaled
from tests.support import submit_command

SECRET = "fuzz_secret"
APP_ID = 1234
GENUINE: dict[str, Any] = kite_sample("postback.json")
GENUINE["checksum"] = expected_checksum(GENUINE["order_id"], GENUINE["order_timestamp"], SECRET)


def _signed(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` with the checksum it would have if Kite had sent it (when it can have one)."""
    order_id, stamp = payload.get("order_id"), payload.get("order_timestamp")
    if isinstance(order_id, str | int) and isinstance(stamp, str | int):
        return {**payload, "checksum": expected_checksum(str(order_id), str(stamp), SECRET)}
    return payload


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["resigned", "resigned", "forged", "junk", "damaged"]))
    if kind == "junk":
        return draw(st.one_of(st.binary(max_size=200), st.builds(to_json_bytes, json_values)))
    payload = draw(mutated(GENUINE, field_values))
    if kind == "resigned":
        payload = _signed(payload)
    body = to_json_bytes(payload)
    if kind == "damaged":
        body = draw(damaged_bytes(to_json_bytes(_signed(payload))))
    return body


class Harness:
    def __init__(self, ledger: OrderLedger) -> None:
        assert ledger.storage is not None
        order = ledger.submit(submit_command(client_order_id="postback", quantity=1))
        ledger.record(RecordAccepted(order_id=order.id, broker_order_id=GENUINE["order_id"]))
        self.ledger = ledger
        gateway = KiteGateway(
            ledger,
            object(),  # never called: the update worker is not started
            outbox=Outbox(ledger.storage),
            account="AB1234",
            limiter=RateLimiter({"orders": ((1.0, 10**6),), "other": ((1.0, 10**6),)}),
        )
        self.service = KiteService(gateway, api_secret=SECRET, app_id=APP_ID)
        self.tried = 0
        self.kind = ""

    def queued(self) -> int:
        return self.service.worker._queue.qsize()

    def check(self, answer: tuple[int, str], before: int, queued: int) -> None:
        status, message = answer
        assert status == 200 or 400 <= status < 500, (status, message)
        assert isinstance(message, str)
        assert message
        if status != 200:
            assert self.queued() == queued, f"refused ({status}) but prompted a converge"
        assert self.ledger.count_events() == before


@pytest.fixture
def harness(make_ledger: LedgerFactory) -> Iterator[Harness]:
    made = Harness(make_ledger())
    yield made
    if made.service.postbacks._thread is not None:
        made.service.postbacks.stop()
    else:
        made.service.postbacks._http.server_close()
    report("fuzz", boundary=f"postbacks ({made.kind})", inputs_tried=made.tried)


def test_the_genuine_postback_is_accepted(harness: Harness) -> None:
    harness.kind = "genuine"
    before = harness.ledger.count_events()
    assert harness.service.accept_postback(json.dumps(GENUINE).encode()) == (200, "accepted")
    assert harness.ledger.count_events() == before


@settings(max_examples=scaled(250, 2500))
@given(body=bodies())
def test_postback_handler_answers_4xx_and_writes_nothing(harness: Harness, body: bytes) -> None:
    harness.kind = "handler"
    harness.tried += 1
    before, queued = harness.ledger.count_events(), harness.queued()
    harness.check(harness.service.accept_postback(body), before, queued)


_CONTENT_LENGTHS = st.one_of(
    st.just(None),  # the right length
    st.integers(min_value=-5, max_value=-1),
    st.sampled_from(["", "abc", "1e3", " 5 ", "-0", "0x10", str(MAX_POSTBACK_BYTES + 1)]),
    st.just("0"),
)


@settings(max_examples=scaled(60, 600))
@given(
    body=bodies(),
    length=_CONTENT_LENGTHS,
    path=st.sampled_from(["/postback", "/postback?x=1", "/", "/postback/", "/../postback"]),
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
)
def test_postback_server_answers_4xx_over_http(
    harness: Harness, body: bytes, length: int | str | None, path: str, method: str
) -> None:
    harness.kind = "http"
    harness.tried += 1
    if harness.service.postbacks._thread is None:
        harness.service.postbacks.start()
    before, queued = harness.ledger.count_events(), harness.queued()
    host, port = harness.service.postbacks._http.server_address[:2]
    connection = http.client.HTTPConnection(str(host), int(port), timeout=5)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        declared = len(body) if length is None else length
        connection.putheader("Content-Length", str(declared))
        connection.putheader("Content-Type", "application/json")
        connection.endheaders()
        if isinstance(declared, int) and 0 <= declared <= MAX_POSTBACK_BYTES:
            connection.send(body[:declared].ljust(declared, b" "))
        response = connection.getresponse()  # a hung server times out here: a failure
        status, answer = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert isinstance(answer, dict)
    harness.check((status, str(answer.get("message"))), before, queued)
    if method == "POST" and path.split("?")[0] == "/postback" and length is None:
        assert (status, answer["message"]) == harness.service.accept_postback(body)
