"""SIGKILL the ledger's whole workload at random points, restart it, and lose nothing.

One process (tests/e2e/kill_child.py) runs a strategy issuing commands, the Kite
dispatcher, polling and reconciliation against the sandbox, and the projection runner. The
sandbox lives here, in the test process, so it outlives every kill and its order book
says what was really placed. Each test is armed for one kind of kill point (command,
projection, placement, reconciliation): every life of the worker kills itself at a seeded
random kill point of that kind, or the test kills it at a random moment first; the next
life resumes the same workload. After the last kill a clean life finishes the work, and:

* every command acknowledged to the strategy (its ack file, fsync'ed) is in the log;
* at the sandbox each order the ledger placed (its tag) is there once, each order placed
  from outside was adopted once and never placed again, and the ledger's orders, statuses
  and fills equal the sandbox's order and trade books;
* no trade id is counted twice, in any order or in the positions;
* every projection is at the end of the log and equals a clean rebuild from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import pytest
from kiteconnect import exceptions as kite_errors

from ledger.application import open_ledger
from ledger.domain.order import Order
from ledger.kite.sandbox import Faults, KiteSandbox
from projections import all_projections
from projections.rebuild import rebuild
from projections.runner import LedgerLog
from projections.store import store_for_file, store_for_ledger_url
from projections.verify import verify
from tests.e2e.kill_child import KINDS, Life, build_plan, commands_of
from tests.kite_support import ACCOUNT, BROKER_STATUS, client, place_at_kite
from tests.scale import report, scaled

ROOT = Path(__file__).resolve().parents[2]
KILLS = scaled(8, 32)  # per test; 8 tests (4 kinds x 2 backends): 64 by default, 256 long
PLAN_STEPS = scaled(60, 200)
LIFE_SECONDS = (0.25, 1.4)  # the test kills a life at a random moment in this span...
CHANCE = {  # ...unless it kills itself first, at a kill point of its kind (see kill_child)
    "command": 0.05,
    "projection": 0.08,
    "placement": 0.15,
    "reconciliation": 0.1,
}
OUTSIDE_TAG = "outside"
#: Every choice (plan, kill points, timings, faults) follows from it; another value explores
#: other runs (LEDGER_KILL_SEED=...); the report names it.
BASE_SEED = int(os.environ.get("LEDGER_KILL_SEED", "20261124"))


class Launcher:
    """The kill_child launcher: forks a fresh worker per life, reports how each ended."""

    def __init__(self, stderr: IO[bytes]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.kill_child"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        self._buffer = b""
        self.worker: int | None = None
        first = self._line(30)
        assert first is not None, "the launcher did not start"
        assert first.startswith("launcher"), first

    def _line(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise AssertionError(f"the launcher died ({self.proc.poll()})")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def start(self, life: Life, log: Path) -> int:
        assert self.proc.stdin is not None
        request = {"life": asdict(life), "log": str(log)}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        line = self._line(10)
        assert line is not None, "the launcher did not fork a worker"
        assert line.startswith("pid "), line
        self.worker = int(line.split()[1])
        return self.worker

    def wait(self, timeout: float) -> int | None:
        """The worker's wait status, or None if it is still running after `timeout`."""
        line = self._line(timeout)
        if line is None:
            return None
        _, pid, status = line.split()
        assert int(pid) == self.worker
        self.worker = None
        return int(status)

    def kill_worker(self) -> int:
        """SIGKILL the running worker; its wait status."""
        assert self.worker is not None
        os.kill(self.worker, signal.SIGKILL)
        status = self.wait(15)
        assert status is not None, "a killed worker was not reaped"
        return status

    def close(self) -> None:
        if self.worker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.worker, signal.SIGKILL)
            self.wait(5)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    errors = tmp_path_factory.mktemp("launcher") / "stderr.log"
    with open(errors, "wb") as stderr:
        running = Launcher(stderr)
        try:
            yield running
        finally:
            running.close()


class Market:
    """The world outside the ledger, in a thread: prices move and orders fill; now and then
    an order is placed at the sandbox from outside the ledger, or modified there."""

    def __init__(self, sandbox: KiteSandbox, rng: random.Random, outside: int) -> None:
        self.sandbox = sandbox
        self.rng = rng
        self.outside = outside
        self.kite = client(sandbox)
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="market", daemon=True)

    def __enter__(self) -> Market:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def _run(self) -> None:
        ticks = 0
        while not self.stop.wait(0.04):
            self.sandbox.step()
            ticks += 1
            if ticks % 10:
                continue
            price = Decimal("812.35") + self.rng.randint(-30, 3) * Decimal("0.05")
            books = list(self.sandbox.orders.values())
            outside = [o.order_id for o in books if o.tag == OUTSIDE_TAG]
            try:
                if len(outside) < self.outside and self.rng.random() < 0.5:
                    quantity = self.rng.choice((5, 10))
                    place_at_kite(self.kite, quantity=quantity, price=str(price), tag=OUTSIDE_TAG)
                elif outside and self.rng.random() < 0.5:
                    order_id = self.rng.choice(outside)
                    self.kite.modify_order(variety="regular", order_id=order_id, price=str(price))
            except kite_errors.OrderException:
                pass  # modifying an order that has ended
            except (kite_errors.GeneralException, OSError):
                pass  # the placement faults the test sets hit outsiders too
            except Exception as error:  # reported by the test
                self.errors.append(repr(error))


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.mark.parametrize("kind", KINDS)
def test_sigkill_at_random_points_loses_and_doubles_nothing(
    kind: str, database_url: str, tmp_path: Path, launcher: Launcher
) -> None:
    backend = "postgres" if database_url.startswith("postgresql") else "sqlite"
    seed = BASE_SEED + KINDS.index(kind) * 1000 + (500 if backend == "postgres" else 0)
    rng = random.Random(seed)
    acks, points, log = tmp_path / "acks.jsonl", tmp_path / "points.log", tmp_path / "life.log"

    def life(number: int, mode: str) -> Life:
        return Life(
            url=database_url,
            root=sandbox.root,
            acks=str(acks),
            points=str(points),
            plan_seed=seed,
            plan_steps=PLAN_STEPS,
            seed=seed * 1000 + number,
            kind=kind if mode == "run" else None,
            chance=CHANCE[kind],
            mode=mode,
            batch_size=rng.choice((1, 3, 7)),
        )

    started = time.monotonic()
    with KiteSandbox(seed=seed % 1000) as sandbox:
        with Market(sandbox, rng, outside=6 if kind == "reconciliation" else 2) as market:
            for number in range(KILLS):
                if kind == "placement":
                    sandbox.faults.delay_placement_response = rng.choice((0.0, 0.0, 0.3))
                    sandbox.faults.fail_placements_after_accept = int(rng.random() < 0.2)
                    sandbox.faults.drop_placements_after_accept = int(rng.random() < 0.2)
                launcher.start(life(number, "run"), log)
                status = launcher.wait(rng.uniform(*LIFE_SECONDS))
                if status is None:
                    status = launcher.kill_worker()
                killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
                assert killed, f"life {number} ended by itself ({status}):\n{_tail(log)}"
        assert not market.errors, market.errors
        sandbox.faults = Faults()
        launcher.start(life(KILLS, "finish"), log)
        status = launcher.wait(90)
        if status is None:
            launcher.kill_worker()
        assert status == 0, f"the clean life failed ({status}):\n{_tail(log)}"
        acked, events = _check(database_url, sandbox, build_plan(seed, PLAN_STEPS), acks, tmp_path)
    # A life that reached a kill point noted it; the others the test killed from outside
    # (a life may do both at once, so this counts each life once).
    self_kills = points.read_text().splitlines() if points.exists() else []
    assert self_kills, "no life reached a kill point of its kind"
    timer_kills = KILLS - min(len(self_kills), KILLS)
    report(
        "kill_points",
        kills=KILLS,
        seed=seed,
        backend=backend,
        kind=kind,
        acked_commands=acked,
        events_checked=events,
        self_kills=len(self_kills),
        timer_kills=timer_kills,
        points=len(set(self_kills)),
        where=" ".join(sorted(set(self_kills))),
        seconds=round(time.monotonic() - started, 1),
    )


def _check(
    url: str, sandbox: KiteSandbox, plan: list[dict[str, Any]], acks: Path, tmp_path: Path
) -> tuple[int, int]:
    """Everything the kills must not have broken. Returns (acked commands, events)."""
    with open_ledger(url) as ledger:
        everything: list[tuple[int, Order.Event]] = []
        log = LedgerLog(ledger)
        while batch := log.read(everything[-1][0] if everything else 0, 1000):
            everything += batch
        history: dict[UUID, list[Order.Event]] = defaultdict(list)
        for _, event in everything:
            history[event.originator_id].append(event)

        acked = _check_acks(acks, history)
        _check_plan_done(plan, acks)
        _check_broker(ledger.all_orders(), sandbox, plan, history)
        _check_projections(ledger, everything, sandbox, plan, tmp_path)
    return acked, len(everything)


def _check_acks(acks: Path, history: dict[UUID, list[Order.Event]]) -> int:
    """Every command acknowledged to the strategy is in the log."""
    acked = 0
    for line in acks.read_text().splitlines():
        entry = json.loads(line)
        if "refused" in entry:
            continue
        acked += 1
        events = history.get(UUID(entry["order_id"]), [])
        where = f"acknowledged {entry} but"
        assert len(events) >= entry["version"], f"{where} the order has {len(events)} events"
        before = events[: entry["version"]]
        match entry["cmd"]:
            case "submit":
                first = before[0]
                assert isinstance(first, Order.Submitted), where
                assert first.client_order_id == entry["coid"], where
            case "accept":
                assert any(
                    isinstance(e, Order.Accepted) and e.broker_order_id == entry["broker_id"]
                    for e in before
                ), f"{where} no Accepted"
            case "fill":
                assert any(
                    isinstance(e, Order.Filled) and e.trade_id == entry["trade_id"] for e in before
                ), f"{where} no fill"
            case "cancelled":
                assert any(isinstance(e, Order.Cancelled) for e in before), f"{where} not cancelled"
            case "modify":
                assert any(
                    isinstance(e, Order.ModifyRequested)
                    and e.changes.price == Decimal(entry["price"])
                    for e in before
                ), f"{where} no ModifyRequested"
            case "cancel":
                assert any(isinstance(e, Order.CancelRequested) for e in before), (
                    f"{where} no CancelRequested"
                )
            case other:
                raise AssertionError(other)
    assert acked > 0
    return acked


def _check_plan_done(plan: list[dict[str, Any]], acks: Path) -> None:
    """The clean life finished the plan: each command was answered (acked or refused)."""
    answered = {(e["step"], e["sub"]) for e in map(json.loads, acks.read_text().splitlines())}
    for index, step in enumerate(plan):
        for sub in range(len(commands_of(step))):
            assert (index, sub) in answered, f"step {index} command {sub} never ran: {step}"


def _check_broker(
    orders: list[Order],
    sandbox: KiteSandbox,
    plan: list[dict[str, Any]],
    history: dict[UUID, list[Order.Event]],
) -> None:
    """No order placed twice; the ledger equals the sandbox's books; no fill twice."""
    tags = Counter(sim.tag for sim in sandbox.orders.values() if sim.tag != OUTSIDE_TAG)
    twice = {tag: n for tag, n in tags.items() if n > 1}
    assert not twice, f"placed more than once at the broker: {twice}"
    manual = {step["coid"]: step for step in plan if step["op"] == "manual"}
    by_coid = {o.client_order_id: o for o in orders}
    placed = [o for o in orders if o.broker_order_id and o.client_order_id not in manual]
    at_kite = {o.broker_order_id: o for o in placed}
    assert len(at_kite) == len(placed), "two ledger orders share a Kite order"
    assert set(at_kite) == set(sandbox.orders), "orders differ between the ledger and Kite"
    trades_of: dict[str, set[str]] = defaultdict(set)
    for trade in sandbox.trades:
        trades_of[trade["order_id"]].add(trade["trade_id"])
    for broker_id, sim in sandbox.orders.items():
        order = at_kite[broker_id]
        if sim.tag == OUTSIDE_TAG:
            assert order.strategy == "external", order.client_order_id
            assert order.client_order_id == f"kite-{broker_id}"
        else:
            assert order.tag == sim.tag, order.client_order_id
            assert order.strategy == "killer", order.client_order_id
        assert order.status in BROKER_STATUS[sim.status], (order.client_order_id, sim.status)
        assert order.quantity == sim.quantity, order.client_order_id
        if sim.status not in ("COMPLETE", "CANCELLED", "REJECTED"):  # terms may change
            assert order.price == sim.price, (order.client_order_id, order.price, sim.price)
        assert order.filled_quantity == sim.filled_quantity, order.client_order_id
        assert order.filled_value == sim.filled_value, order.client_order_id
        assert order.trade_ids == trades_of[broker_id], order.client_order_id
    for step in plan:
        order = by_coid[step["coid"]]
        if step["op"] == "submit" and order.broker_order_id is None:
            # never reached Kite: refused there, or cancelled before it was sent
            assert order.status.value in ("REJECTED", "CANCELLED"), order.client_order_id
            assert tags[order.tag] == 0
        if step["op"] == "manual":
            assert order.trade_ids == {t for t, _, _ in step["fills"]}, order.client_order_id
            assert order.filled_quantity == sum(q for _, q, _ in step["fills"])
    for order_id, events in history.items():
        trade_ids = [e.trade_id for e in events if isinstance(e, Order.Filled)]
        assert len(trade_ids) == len(set(trade_ids)), f"order {order_id}: a fill counted twice"


def _check_projections(
    ledger: Any,
    everything: list[tuple[int, Order.Event]],
    sandbox: KiteSandbox,
    plan: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    """Every projection is at the end of the log and equals a clean rebuild; positions
    equal the fills that happened (at Kite and recorded by hand), each counted once."""
    projections = all_projections()
    last = everything[-1][0]
    store = store_for_ledger_url(ledger.storage)
    clean = store_for_file(tmp_path / "rebuilt.db")
    try:
        report = verify(ledger, store, projections)
        assert report.ok, report.problems
        rebuild(LedgerLog(ledger), clean, projections, batch_size=500)
        for projection in projections:
            assert store.position(projection) == last, projection.name
            assert (
                store.load_view(projection).contents() == clean.load_view(projection).contents()
            ), f"{projection.name} differs from a clean rebuild"
        positions = store.load_view(next(p for p in projections if p.name == "positions"))
    finally:
        store.close()
        clean.close()
    expected: Counter[str] = Counter()
    for trade in sandbox.trades:
        sign = 1 if sandbox.orders[trade["order_id"]].side.value == "BUY" else -1
        expected[trade["tradingsymbol"]] += sign * int(trade["quantity"])
    for step in plan:
        if step["op"] == "manual":
            sign = 1 if step["side"] == "BUY" else -1
            expected[step["symbol"]] += sign * sum(q for _, q, _ in step["fills"])
    held: Counter[str] = Counter()
    for row in positions.rows("positions"):
        held[row.tradingsymbol] += row.net_quantity
    nonzero = {symbol: net for symbol, net in held.items() if net}
    assert nonzero == {symbol: net for symbol, net in expected.items() if net}, (held, expected)


@pytest.mark.parametrize("then", ["modified-at-kite", "dispatch-first"])
def test_killed_between_adopting_an_outside_order_and_recording_it_accepted(
    then: str, database_url: str, tmp_path: Path, launcher: Launcher
) -> None:
    """SIGKILL just after reconciliation adopted an order placed outside the ledger
    (`Submitted` committed), before it recorded Kite's acceptance. Then the outside order
    is modified at Kite, or the next life dispatches before it reconciles: either way the
    order is adopted once, and never placed at Kite a second time."""
    points, log = tmp_path / "points.log", tmp_path / "life.log"
    with KiteSandbox(seed=5) as sandbox:
        kite = client(sandbox)
        outside = place_at_kite(kite, quantity=5, price="800.00", tag=OUTSIDE_TAG)

        def life(mode: str, **extra: Any) -> Life:
            return Life(
                url=database_url,
                root=sandbox.root,
                acks=str(tmp_path / "acks.jsonl"),
                points=str(points),
                plan_seed=1,
                plan_steps=0,
                seed=1,
                kind=None,
                chance=0.0,
                mode=mode,
                batch_size=10,
                **extra,
            )

        launcher.start(life("run", only_point="reconciliation:write-committed:Submitted"), log)
        status = launcher.wait(30)
        if status is None:
            launcher.kill_worker()
        assert status is not None, f"the kill point was never reached:\n{_tail(log)}"
        assert os.WIFSIGNALED(status), f"ended by itself ({status}):\n{_tail(log)}"
        assert points.read_text().split() == ["reconciliation:write-committed:Submitted"]
        with open_ledger(database_url) as ledger:
            adopted = ledger.find_order(ACCOUNT, f"kite-{outside}")
            assert adopted.broker_order_id is None  # adopted; its acceptance not recorded

        if then == "modified-at-kite":
            kite.modify_order(variety="regular", order_id=outside, price="801.00")
        launcher.start(life("finish", dispatch_first=then == "dispatch-first"), log)
        status = launcher.wait(60)
        if status is None:
            launcher.kill_worker()
        assert status == 0, f"the clean life failed ({status}):\n{_tail(log)}"

        assert list(sandbox.orders) == [outside], "the adopted order was placed at Kite again"
        with open_ledger(database_url) as ledger:
            orders = ledger.all_orders()
            events = ledger.count_events()
        assert [o.client_order_id for o in orders] == [f"kite-{outside}"]
        assert orders[0].broker_order_id == outside
        assert orders[0].price == sandbox.orders[outside].price
    report(
        "kill_points",
        kills=1,
        backend="postgres" if database_url.startswith("postgresql") else "sqlite",
        kind=f"adoption-{then}",
        acked_commands=0,
        events_checked=events,
    )
