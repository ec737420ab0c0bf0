"""Tampering with the log directly in the database is found, and the first bad event named.

Each test builds the same small ledger (four orders of four events; a checkpoint after the
first three orders, exported to a digest file), changes the stored rows by hand the way
someone with write access to the database could, and runs `kite-ledger verify` (and
`verify --digest FILE`) on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from ledger.application import OrderLedger
from ledger.checkpoints import (
    DigestFileError,
    check_integrity,
    export_checkpoints,
    load_digests,
    write_checkpoint,
)
from ledger.cli import app
from ledger.domain.errors import LedgerError
from ledger.domain.order import Order
from ledger.integrity import ORDER_TOPIC, content_hash
from tests.conftest import LedgerFactory
from tests.support import accepted, fill, submit_command


class Rows:
    """The ledger's stored events, edited by hand (as an intruder or a bad script would)."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        if "://" not in database_url:
            self.lite: sqlite3.Connection | None = sqlite3.connect(database_url)
            self.table = "stored_events"
            self.position = "rowid"
            self.pg: psycopg.Connection[Any] | None = None
        else:
            base, _, schema = database_url.partition("?schema=")
            self.lite = None
            self.pg = psycopg.connect(base, autocommit=True)
            self.schema = schema
            self.table = sql.Identifier(schema, "orders_events").as_string(self.pg)
            self.position = "notification_id"

    def run(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.lite is not None:
            rows = self.lite.execute(statement.replace("%s", "?"), params).fetchall()
            self.lite.commit()
            return rows
        assert self.pg is not None
        cur = self.pg.execute(statement.encode(), params)
        return list(cur.fetchall()) if cur.description else []

    def _id(self, order: UUID) -> Any:
        return order.hex if self.lite is not None else order

    def get(self, order: UUID, version: int) -> tuple[int, bytes, str]:
        (row,) = self.run(
            f"SELECT {self.position}, state, topic FROM {self.table}"
            " WHERE originator_id = %s AND originator_version = %s",
            (self._id(order), version),
        )
        return int(row[0]), bytes(row[1]), str(row[2])

    def set_state(self, order: UUID, version: int, state: bytes) -> None:
        self.run(
            f"UPDATE {self.table} SET state = %s"
            " WHERE originator_id = %s AND originator_version = %s",
            (state, self._id(order), version),
        )

    def delete(self, order: UUID, version: int) -> None:
        self.run(
            f"DELETE FROM {self.table} WHERE originator_id = %s AND originator_version = %s",
            (self._id(order), version),
        )

    def insert(self, order: UUID, version: int, topic: str, state: bytes) -> int:
        self.run(
            f"INSERT INTO {self.table} (originator_id, originator_version, topic, state)"
            " VALUES (%s, %s, %s, %s)",
            (self._id(order), version, topic, state),
        )
        return self.get(order, version)[0]

    def forge_checkpoints(self) -> None:
        """Rewrite the database's own checkpoints so that they match the tampered rows."""
        table = (
            "ledger_checkpoints"
            if self.lite is not None
            else sql.Identifier(self.schema, "ledger_checkpoints").as_string(self.pg)
        )
        self.run(f"DELETE FROM {table}")

    def close(self) -> None:
        if self.lite is not None:
            self.lite.close()
        if self.pg is not None:
            self.pg.close()


@dataclass
class Scene:
    ledger: OrderLedger
    url: str
    orders: list[Order]
    digests: Path
    rows: Rows

    def verify(self, *, digest: bool = False) -> list[str]:
        """`kite-ledger verify` lines starting TAMPERED (empty: it verified cleanly)."""
        args = ["verify", "--db", self.url]
        if digest:
            args += ["--digest", str(self.digests)]
        result = CliRunner().invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.startswith("TAMPERED")]
        assert result.exit_code == (1 if lines else 0), result.output
        return lines


@pytest.fixture
def scene(make_ledger: LedgerFactory, database_url: str, tmp_path: Path) -> Iterator[Scene]:
    ledger = make_ledger()
    orders = []
    for n in range(4):
        order = ledger.submit(submit_command(client_order_id=f"tamper-{n}", quantity=100))
        ledger.record(accepted(order, f"B{n}"))
        ledger.record(fill(order, f"T{n}a", 40))
        ledger.record(fill(order, f"T{n}b", 60))
        orders.append(ledger.get_order(order.id))
        if n == 2:
            write_checkpoint(ledger)
            export_checkpoints(ledger, tmp_path / "digests.json")
    rows = Rows(database_url)
    yield Scene(ledger, database_url, orders, tmp_path / "digests.json", rows)
    rows.close()


def forged(scene: Scene, order: Order, version: int, as_version: int, **changes: Any) -> bytes:
    """The stored event at `version`, changed and hashed again as the event at
    `as_version` (what a forger who knows the scheme writes)."""
    _, state, topic = scene.rows.get(order.id, version)
    decoded = scene.ledger.mapper.transcoder.decode(state)
    decoded.update(changes)
    decoded["hash"] = content_hash(
        topic=topic,
        class_version=decoded["class_version"],
        originator_id=order.id,
        originator_version=as_version,
        state=decoded,
    )
    return bytes(scene.ledger.mapper.transcoder.encode(decoded))


def where(scene: Scene, order: Order, version: int) -> str:
    position = scene.rows.get(order.id, version)[0]
    return f"log position {position}, order {order.id}, version {version}: "


def test_an_untouched_ledger_verifies(scene: Scene) -> None:
    assert scene.verify() == []
    assert scene.verify(digest=True) == []
    report = check_integrity(scene.ledger)
    assert (report.chains.chained, report.checkpoints, report.after_last_checkpoint) == (16, 1, 4)
    assert report.after_last_reference is None
    # The database's count stays its own when a digest file is given (it was the file's).
    write_checkpoint(scene.ledger)
    with_file = check_integrity(scene.ledger, reference=load_digests(scene.digests))
    assert (with_file.after_last_checkpoint, with_file.after_last_reference) == (0, 4)


def test_an_edited_event_is_named(scene: Scene) -> None:
    order = scene.orders[1]
    named = where(scene, order, 3)
    _, state, _ = scene.rows.get(order.id, 3)
    assert b'"quantity":40' in state
    scene.rows.set_state(order.id, 3, state.replace(b'"quantity":40', b'"quantity":4', 1))
    lines = scene.verify()
    assert (
        lines[0]
        == f"TAMPERED first bad event: {named}altered: its content no longer matches its hash"
    )
    # The database's checkpoint covers it too; the digest file says the same.
    assert any("differs from the database's checkpoint 1" in line for line in lines)
    assert scene.verify(digest=True)[0] == lines[0]


def test_an_edit_the_lifecycle_cannot_replay_is_named_not_a_traceback(scene: Scene) -> None:
    """A first fill's quantity raised past the order's made the second fill one the
    lifecycle table does not admit: verify, orders and rebuild ended in a KeyError
    traceback (from the projections' fold) before naming the event."""
    assert CliRunner().invoke(app, ["project", "--db", scene.url]).exit_code == 0
    order = scene.orders[1]
    named = where(scene, order, 3)
    _, state, _ = scene.rows.get(order.id, 3)
    scene.rows.set_state(order.id, 3, state.replace(b'"quantity":40', b'"quantity":140', 1))
    result = CliRunner().invoke(app, ["verify", "--db", scene.url])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.splitlines()
    assert lines[0] == (
        f"TAMPERED first bad event: {named}altered: its content no longer matches its hash"
    )
    assert any(
        line.startswith("DIFFERENCE projections ") and "does not fold" in line for line in lines
    ), result.output
    # A ledger error, which `main` prints as one line (exit 2), not a KeyError.
    listed = CliRunner().invoke(app, ["orders", "--db", scene.url])
    assert isinstance(listed.exception, LedgerError)
    assert str(listed.exception).startswith("a Filled event is not admitted after FILLED")


def test_an_edit_after_the_last_checkpoint_is_named_by_its_chain(scene: Scene) -> None:
    order = scene.orders[3]
    named = where(scene, order, 2)
    _, state, _ = scene.rows.get(order.id, 2)
    scene.rows.set_state(order.id, 2, state.replace(b'"B3"', b'"B9"', 1))
    assert scene.verify() == [
        f"TAMPERED first bad event: {named}altered: its content no longer matches its hash"
    ]


def test_a_deleted_event_is_named(scene: Scene) -> None:
    order = scene.orders[0]
    position = scene.rows.get(order.id, 2)[0]
    named = where(scene, order, 3)  # the event after the gap
    scene.rows.delete(order.id, 2)
    lines = scene.verify()
    # The checkpoint knew the deleted row's position; the order's chain knows its version.
    assert lines == [
        f"TAMPERED first bad event: log position {position}: log position {position} was"
        " deleted (differs from the database's checkpoint 1)",
        f"TAMPERED {named}version 2 missing: the versions jump from 1 to 3 (an event was deleted)",
    ]


def test_a_deleted_event_after_the_last_checkpoint_is_named_by_its_chain(scene: Scene) -> None:
    order = scene.orders[3]
    named = where(scene, order, 3)
    scene.rows.delete(order.id, 2)
    assert scene.verify() == [
        f"TAMPERED first bad event: {named}version 2 missing: the versions jump from 1 to 3"
        " (an event was deleted)"
    ]


def test_a_deleted_last_event_is_named_by_the_checkpoints(scene: Scene) -> None:
    # The last event of an order has no successor whose chain could miss it: the
    # checkpoint that covered it names its log position.
    order = scene.orders[2]
    position = scene.rows.get(order.id, 4)[0]
    scene.rows.delete(order.id, 4)
    expected = (
        f"TAMPERED first bad event: log position {position}: log position {position} was"
        " deleted (differs from the database's checkpoint 1)"
    )
    assert scene.verify() == [expected]
    # Someone who also rewrites the database's checkpoints is still caught by the digest
    # file kept elsewhere.
    scene.rows.forge_checkpoints()
    assert scene.verify() == []  # nothing left in the database to contradict the change
    lines = scene.verify(digest=True)
    assert lines[0] == (
        f"TAMPERED first bad event: log position {position}: log position {position} was"
        " deleted (differs from the digest file's checkpoint 1)"
    )
    assert "TAMPERED the log: the database's checkpoint 1 is missing" in lines


def test_an_inserted_event_is_named(scene: Scene) -> None:
    order = scene.orders[1]
    _, state, topic = scene.rows.get(order.id, 4)
    position = scene.rows.insert(order.id, 5, topic, state)  # a second copy of the last fill
    lines = scene.verify()
    assert lines[0] == (
        f"TAMPERED first bad event: log position {position}, order {order.id}, version 5:"
        " altered: its content no longer matches its hash"
    )


def test_a_rewrite_with_recomputed_hashes_is_caught_by_the_checkpoints(scene: Scene) -> None:
    # A forger who knows the scheme changes a fill and recomputes its hash, so the order's
    # chain holds. The checkpoint that covered the fill still differs; and when the forger
    # also rewrites the database's checkpoints, the digest file kept elsewhere does not.
    order = scene.orders[0]
    scene.rows.set_state(order.id, 4, forged(scene, order, 4, 4, quantity=59))
    (checkpoint,) = json.loads(scene.digests.read_text())["checkpoints"]
    covered = f"log positions {checkpoint['first_position']}..{checkpoint['last_position']}"
    altered = f"the 12 stored records at {covered} differ from what was recorded (altered)"
    assert scene.verify() == [
        f"TAMPERED first bad event: the log: {altered} (differs from the database's checkpoint 1)"
    ]
    scene.rows.forge_checkpoints()
    assert scene.verify() == []
    assert scene.verify(digest=True) == [
        f"TAMPERED first bad event: the log: {altered}"
        " (differs from the digest file's checkpoint 1)",
        "TAMPERED the log: the database's checkpoint 1 is missing",
    ]


def test_swapped_events_are_named(scene: Scene) -> None:
    order = scene.orders[2]
    named = where(scene, order, 3)
    _, third, _ = scene.rows.get(order.id, 3)
    _, fourth, _ = scene.rows.get(order.id, 4)
    scene.rows.set_state(order.id, 3, fourth)
    scene.rows.set_state(order.id, 4, third)
    lines = scene.verify()
    assert (
        lines[0]
        == f"TAMPERED first bad event: {named}altered: its content no longer matches its hash"
    )


def test_the_digest_file_is_plain_json_an_auditor_can_keep(scene: Scene) -> None:
    document = json.loads(scene.digests.read_text())
    assert document["kind"] == "kite-ledger digests"
    (checkpoint,) = document["checkpoints"]
    assert checkpoint["event_count"] == 12
    assert checkpoint["positions"] == [[checkpoint["first_position"], checkpoint["last_position"]]]


def test_an_event_hidden_below_the_first_position_is_named(scene: Scene) -> None:
    """A correctly hashed fill planted at log position -1 changed what its order is, while
    every reading of the log began after position 0: verify, even with the digest file,
    called the log clean."""
    order = scene.orders[3]
    _, state, topic = scene.rows.get(order.id, 4)
    last_hash = scene.ledger.mapper.transcoder.decode(state)["hash"]
    planted = forged(scene, order, 4, 5, trade_id="T-hidden", previous_hash=last_hash)
    scene.rows.run(
        f"INSERT INTO {scene.rows.table}"
        f" ({scene.rows.position}, originator_id, originator_version, topic, state)"
        " VALUES (%s, %s, %s, %s, %s)",
        (-1, scene.rows._id(order.id), 5, topic, planted),
    )
    lines = scene.verify(digest=True)
    assert lines[0] == (
        f"TAMPERED first bad event: log position -1, order {order.id}, version 5:"
        " at a log position the ledger never writes (zero or below): inserted"
    )


def test_another_applications_rows_and_an_unhashable_edit_are_findings_not_failures(
    scene: Scene,
) -> None:
    """SQLite applications on one file share its events table: their rows are not the
    order log's, and verify called a clean log tampered. An edit that leaves a value no
    event holds (a float) crashed verify instead of naming the event."""
    scene.rows.insert(UUID(int=7), 1, "notes:Note.Created", b'{"class_version":2,"text":"x"}')
    assert scene.verify() == []
    order = scene.orders[3]
    named = where(scene, order, 3)
    _, state, _ = scene.rows.get(order.id, 3)
    scene.rows.set_state(order.id, 3, state.replace(b'"quantity":40', b'"quantity":40.0'))
    lines = scene.verify()
    assert lines[0] == (
        f"TAMPERED first bad event: {named}altered: its content no longer matches its hash"
    )


def test_a_digest_file_that_is_not_one_is_refused_clearly(scene: Scene, tmp_path: Path) -> None:
    """A digest that is not hex failed deep in the fold with a ValueError traceback."""
    document = json.loads(scene.digests.read_text())
    document["checkpoints"][0]["previous_digest"] = "zz"
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(document))
    with pytest.raises(DigestFileError, match="previous_digest must be 64 lowercase hex digits"):
        load_digests(damaged)
    with pytest.raises(DigestFileError, match="cannot be read"):
        load_digests(tmp_path)
    document["checkpoints"] = []
    damaged.write_text(json.dumps(document))
    with pytest.raises(DigestFileError, match="holds no checkpoints: it proves nothing"):
        load_digests(damaged)


def test_the_integrity_checks_know_the_order_topics() -> None:
    """integrity.py cannot import the order (the order imports it): its copy of the topic
    prefix must stay the order's, or every order event would be skipped as foreign."""
    assert ORDER_TOPIC == Order.TOPIC
    topics = [
        cls.TOPIC
        for cls in vars(Order).values()
        if isinstance(cls, type) and issubclass(cls, Order.Event)
    ]
    assert topics
    assert all(topic.startswith(ORDER_TOPIC) for topic in topics)
