"""The process that tests/e2e/test_kill_points.py kills with SIGKILL, again and again.

It runs as a small launcher (`python -m tests.e2e.kill_child`): the launcher pays for the
imports once, then forks one worker per life when the test asks for one (a JSON line on
stdin), prints the worker's pid, and prints how the worker ended once it has. Each worker
is a fresh process: it opens the ledger, the outbox, the Kite client and the projection
store from scratch, so nothing but what is durable survives a kill.

A worker runs the whole workload in one loop, each pass:

* the strategy: the next step of a seeded plan (submit orders for Kite, modify and cancel
  them; and "manual" orders whose acceptance and fills the strategy records itself, one
  fill deliberately twice). Every command the ledger acknowledges is appended to the ack
  file, flushed and fsync'ed after the call returns, so "acknowledged" is provable. A new
  life resumes the plan after the last line of that file;
* the dispatcher, placing orders, modifications and cancellations at the sandbox;
* polling (reconciliation): converges orders and fills, and adopts orders placed at the
  sandbox from outside the ledger;
* the projection runner: one small batch, or every third pass a pipelined catch-up (as
  `kite-ledger rebuild` folds).

Kill points: a life is armed for one kind (command, projection, placement, reconciliation)
and, at every kill point of that kind it passes, kills itself (SIGKILL) with a probability
drawn from its seed (the more often it passed that point, the less likely): inside a write
transaction before it commits, just after a commit, between a command's return and its
ack, after the outbox claim and before the request leaves, after the sandbox has the order
and before `Accepted` is recorded, after a fetch from the sandbox and before what it says
is recorded, inside a projection batch's transaction, after a batch. The test also kills
lives at random moments from outside. Each self-kill notes its point in the points file
first.

`mode` "finish" arms nothing: it completes the plan, settles with the sandbox and catches
the projections up, then exits 0.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from kiteconnect import KiteConnect

from ledger.application import OrderLedger, open_ledger
from ledger.commands import (
    CancelOrder,
    ModifyOrder,
    RecordAccepted,
    RecordCancelled,
    RecordFill,
    SubmitOrder,
)
from ledger.domain.errors import LedgerError
from ledger.domain.identity import order_id_for
from ledger.domain.order import Order
from ledger.domain.values import Exchange, Source
from ledger.kite.gateway import KiteGateway
from ledger.kite.limiter import RateLimiter
from ledger.kite.outbox import Outbox
from projections import all_projections
from projections.runner import LedgerLog, ProjectionRunner
from projections.store import store_for_ledger_url

ACCOUNT = "ZD1234"
KINDS = ("command", "projection", "placement", "reconciliation")
GRACE = 1.0  # seconds the dispatcher waits for an earlier attempt to show up at the sandbox
REFERENCE = {  # the sandbox's opening prices, and the tick sizes (instruments.csv)
    "SBIN": (Decimal("812.35"), Decimal("0.05")),
    "INFY": (Decimal("1900.0"), Decimal("0.1")),
    "RELIANCE": (Decimal("1450.0"), Decimal("0.1")),
    "HDFCBANK": (Decimal("1720.05"), Decimal("0.05")),
}


# ---------------------------------------------------------------------------- the plan


def build_plan(seed: int, steps: int) -> list[dict[str, Any]]:
    """The strategy's steps, the same for every life of one run (and for the test)."""
    rng = random.Random(seed)
    plan: list[dict[str, Any]] = []
    kite_orders: list[str] = []
    for index in range(steps):
        roll = rng.random()
        symbol = rng.choice(sorted(REFERENCE))
        reference, tick = REFERENCE[symbol]
        side = rng.choice(("BUY", "SELL"))
        sign = 1 if side == "BUY" else -1
        if roll < 0.45 or len(kite_orders) < 3:
            # marketable (fills over the next steps) or far from the market (stays open)
            ticks = rng.choice((2, 3, -30, -40))
            coid = f"g-{seed}-{index}"
            plan.append(
                {
                    "op": "submit",
                    "coid": coid,
                    "symbol": symbol,
                    "side": side,
                    "quantity": rng.choice((5, 10, 20, 40)),
                    "price": str(reference + sign * ticks * tick),
                    "validity": "IOC" if rng.random() < 0.1 else "DAY",
                }
            )
            kite_orders.append(coid)
        elif roll < 0.65:
            quantity = rng.choice((10, 20, 30))
            price = reference + rng.randint(-5, 5) * tick
            fills: list[list[Any]] = []
            left = quantity
            while left and len(fills) < 3:
                part = min(left, rng.choice((5, 10)))
                fills.append([f"mt-{seed}-{index}-{len(fills)}", part, str(price)])
                left -= part
            plan.append(
                {
                    "op": "manual",
                    "coid": f"m-{seed}-{index}",
                    "symbol": symbol,
                    "side": side,
                    "quantity": quantity,
                    "price": str(price),
                    "broker_id": f"M{seed}x{index}",
                    "fills": fills,
                    "cancel": left > 0 and rng.random() < 0.7,
                }
            )
        elif roll < 0.82:
            coid = rng.choice(kite_orders)
            step = next(s for s in plan if s.get("coid") == coid)
            tick = REFERENCE[step["symbol"]][1]
            price = Decimal(step["price"]) + (1 if step["side"] == "BUY" else -1) * 4 * tick
            plan.append({"op": "modify", "coid": coid, "price": str(price)})
        else:
            plan.append({"op": "cancel", "coid": rng.choice(kite_orders)})
    return plan


def commands_of(step: dict[str, Any]) -> list[str]:
    """The commands one plan step issues, in order (a life resumes within a step)."""
    if step["op"] != "manual":
        return [step["op"]]
    names = ["submit", "accept"] + [f"fill:{i}" for i in range(len(step["fills"]))]
    names.append("fill:0")  # the same trade again: must not count twice
    if step["cancel"]:
        names.append("cancelled")
    return names


def order_id(coid: str) -> UUID:
    return order_id_for(ACCOUNT, coid)


# ---------------------------------------------------------------------------- kill points


class KillSwitch:
    """Kills the process at kill points of the armed kind, with probability `chance`."""

    def __init__(
        self, kind: str | None, chance: float, seed: int, points: Path, only: str | None = None
    ) -> None:
        self.kind = kind
        self.chance = chance
        self.only = only  # "kind:name": kill at the first pass of this one point instead
        self.rng = random.Random(seed)
        self.points = points
        self.context = "start"
        self.seen: dict[str, int] = {}

    @contextmanager
    def within(self, context: str) -> Iterator[None]:
        previous, self.context = self.context, context
        try:
            yield
        finally:
            self.context = previous

    def point(self, name: str, kind: str | None = None) -> None:
        kind = kind or self.context
        if self.only is not None:
            if f"{kind}:{name}" != self.only:
                return
        elif kind != self.kind:
            return
        else:
            # Rarer points weigh more: a point passed often (every poll fetches the order
            # book) would otherwise take most of the kills.
            seen = self.seen[name] = self.seen.get(name, 0) + 1
            if self.rng.random() >= self.chance * 2 / (1 + seen):
                return
        with open(self.points, "a", encoding="utf-8") as out:
            out.write(f"{kind}:{name}\n")
            out.flush()
            os.fsync(out.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def install_write_points(ledger: OrderLedger, switch: KillSwitch) -> None:
    """Kill points inside every write transaction of the log (rows inserted, not yet
    committed) and just after it commits."""
    recorder: Any = ledger.recorder
    name = next(
        name
        for name in ("_insert_rows", "_fetch_ids_after_insert_events", "_insert_events")
        if hasattr(recorder, name)
    )
    inner = getattr(recorder, name)

    def in_transaction(cursor: Any, stored: Any, *args: Any, **kwargs: Any) -> Any:
        result = inner(cursor, stored, *args, **kwargs)
        what = re.split(r"[.:]", stored[-1].topic)[-1] if stored else "nothing"
        switch.point(f"write-in-transaction:{what}")
        return result

    setattr(recorder, name, in_transaction)
    save = ledger._save_order

    def saved(order: Any) -> None:
        events = list(order.pending_events)
        save(order)
        switch.point(f"write-committed:{type(events[-1]).__name__ if events else 'nothing'}")

    ledger._save_order = saved  # type: ignore[method-assign]


def install_gateway_points(gateway: KiteGateway, outbox: Outbox, switch: KillSwitch) -> None:
    claim = outbox.claim

    def claimed(*args: Any, **kwargs: Any) -> bool:
        won = claim(*args, **kwargs)
        if won:
            switch.point(f"claimed-{args[1]}-before-send")
        return won

    outbox.claim = claimed  # type: ignore[method-assign]
    call = gateway.call

    def called(method: str, *args: Any, **kwargs: Any) -> Any:
        result = call(method, *args, **kwargs)
        if method in ("place_order", "modify_order", "cancel_order"):
            switch.point(f"sandbox-did-{method}-not-recorded")
        else:
            switch.point(f"fetched-{method}-not-recorded")
        return result

    gateway.call = called  # type: ignore[method-assign]


# ---------------------------------------------------------------------------- the strategy


class Strategy:
    """Runs the plan; resumes after the last command in the ack file."""

    def __init__(
        self, ledger: OrderLedger, plan: list[dict[str, Any]], acks: Path, switch: KillSwitch
    ) -> None:
        self.ledger = ledger
        self.plan = plan
        self.switch = switch
        self.step, self.sub = 0, 0
        if acks.exists():
            raw = acks.read_bytes()
            complete = raw[: raw.rfind(b"\n") + 1]  # a line cut short by a kill never counted
            if len(complete) != len(raw):
                with open(acks, "r+b") as out:
                    out.truncate(len(complete))
                    os.fsync(out.fileno())
            for line in complete.decode().splitlines():
                entry = json.loads(line)
                self.step, self.sub = entry["step"], entry["sub"] + 1
            if self.step < len(plan) and self.sub >= len(commands_of(plan[self.step])):
                self.step, self.sub = self.step + 1, 0
        self._out = open(acks, "a", encoding="utf-8")  # noqa: SIM115 (open for the life)

    @property
    def done(self) -> bool:
        return self.step >= len(self.plan)

    def run_step(self) -> None:
        """The rest of the current step, command by command."""
        if self.done:
            return
        step = self.plan[self.step]
        names = commands_of(step)
        while self.sub < len(names):
            self._issue(step, names[self.sub])
            self.sub += 1
        self.step, self.sub = self.step + 1, 0

    def _note(self, entry: dict[str, Any]) -> None:
        self._out.write(json.dumps({"step": self.step, "sub": self.sub, **entry}) + "\n")
        self._out.flush()
        os.fsync(self._out.fileno())

    def _issue(self, step: dict[str, Any], name: str) -> None:
        try:
            order, details = self._call(step, name)
        except LedgerError as error:  # refused: nothing was acknowledged
            self._note({"cmd": name, "refused": f"{type(error).__name__}: {error}"})
            return
        self.switch.point("returned-before-ack")
        self._note(
            {
                "cmd": name.split(":")[0],
                "coid": step["coid"],
                "order_id": str(order.id),
                "version": order.version,
                **details,
            }
        )
        self.switch.point("acked")

    def _call(self, step: dict[str, Any], name: str) -> tuple[Order, dict[str, Any]]:
        ledger = self.ledger
        oid = order_id(step["coid"])
        if name == "submit":
            command = SubmitOrder.parse(
                {
                    "account": ACCOUNT,
                    "client_order_id": step["coid"],
                    "exchange": "NSE",
                    "tradingsymbol": step["symbol"],
                    "side": step["side"],
                    "quantity": step["quantity"],
                    "order_type": "LIMIT",
                    "product": "CNC",
                    "price": step["price"],
                    "validity": step.get("validity", "DAY"),
                    "strategy": "killer",
                }
            )
            return ledger.submit(command), {}
        if name == "accept":
            broker_id = step["broker_id"]
            update = RecordAccepted(order_id=oid, broker_order_id=broker_id, source=Source.LEDGER)
            return ledger.record(update), {"broker_id": broker_id}
        if name.startswith("fill:"):
            trade_id, quantity, price = step["fills"][int(name.split(":")[1])]
            fill = RecordFill(
                order_id=oid,
                trade_id=trade_id,
                exchange=Exchange.NSE,
                tradingsymbol=step["symbol"],
                quantity=quantity,
                price=Decimal(price),
                source=Source.LEDGER,
            )
            return ledger.record(fill), {"trade_id": trade_id}
        if name == "cancelled":
            cancelled = RecordCancelled(order_id=oid, reason="strategy", source=Source.LEDGER)
            return ledger.record(cancelled), {}
        if name == "modify":
            modify = ModifyOrder(order_id=oid, price=Decimal(step["price"]))
            return ledger.request_modify(modify), {"price": step["price"]}
        if name == "cancel":
            return ledger.request_cancel(CancelOrder(order_id=oid, reason="strategy")), {}
        raise AssertionError(name)


# ---------------------------------------------------------------------------- one life


@dataclass
class Life:
    url: str
    root: str
    acks: str
    points: str
    plan_seed: int
    plan_steps: int
    seed: int
    kind: str | None
    chance: float
    mode: str  # "run" | "finish"
    batch_size: int
    only_point: str | None = None  # kill at the first pass of this point ("kind:name")
    dispatch_first: bool = False  # start by dispatching, before the start-up reconciliation


def settled(gateway: KiteGateway) -> bool:
    """Nothing left for the dispatcher: every Kite order placed, no request pending."""
    for order in gateway.open_orders():
        if order.client_order_id.startswith("m-"):
            continue
        if order.broker_order_id is None or order.pending is not None:
            return False
    return True


def run_life(life: Life) -> None:
    switch = KillSwitch(life.kind, life.chance, life.seed, Path(life.points), life.only_point)
    ledger = open_ledger(life.url)
    install_write_points(ledger, switch)
    assert ledger.storage is not None
    outbox = Outbox(ledger.storage)
    kite = KiteConnect("sandbox_key", "sandbox_token", root=life.root, timeout=10)
    gateway = KiteGateway(
        ledger,
        kite,
        outbox=outbox,
        account=ACCOUNT,
        limiter=RateLimiter({"orders": ((1.0, 1000),), "other": ((1.0, 1000),)}),
        unknown_outcome_grace=GRACE,
        send_lease=GRACE,  # a killed life's claim runs out soon after
    )
    install_gateway_points(gateway, outbox, switch)
    store = store_for_ledger_url(life.url)
    inner_transaction = store.transaction
    # Which way the runner is folding: batch by batch (run_once), or pipelined (catch_up,
    # as `kite-ledger rebuild` does: one batch written on a thread while the next folds).
    way = {"name": "batch"}

    @contextmanager
    def transaction() -> Iterator[Any]:
        with inner_transaction() as cursor:
            yield cursor
            if switch.context == "projection":  # rows and position written, not committed
                switch.point(f"inside-{way['name']}-transaction")

    store.transaction = transaction  # type: ignore[method-assign]
    runner = ProjectionRunner(
        LedgerLog(ledger),
        store,
        all_projections(),
        batch_size=life.batch_size,
        on_batch=lambda _count, _last: switch.point(f"{way['name']}-committed", "projection"),
    )
    strategy = Strategy(
        ledger, build_plan(life.plan_seed, life.plan_steps), Path(life.acks), switch
    )
    print("ready", flush=True)
    # As the service starts: the strategy finishes what it was doing when it died (a manual
    # order must have its acceptance before any dispatcher sees it), then reconcile.
    with switch.within("command"):
        strategy.run_step()
    if life.dispatch_first:
        with switch.within("placement"):
            gateway.dispatch()
    with switch.within("reconciliation"):
        gateway.reconcile()
    deadline = time.monotonic() + 60
    quiet = 0
    passes = 0
    while time.monotonic() < deadline:
        passes += 1
        with switch.within("command"):
            strategy.run_step()
        with switch.within("placement"):
            dispatched = gateway.dispatch()
        with switch.within("reconciliation"):
            polled = gateway.poll() if passes % 2 == 0 or life.mode == "finish" else None
        with switch.within("projection"):
            if passes % 3 == 0:
                way["name"] = "catch-up"
                runner.catch_up()
                way["name"] = "batch"
            else:
                runner.run_once()
        if life.mode != "finish":
            continue
        busy = any(vars(dispatched).values()) or polled is None or polled.recorded > 0
        quiet = 0 if busy or not strategy.done or not settled(gateway) else quiet + 1
        if quiet >= 2:
            runner.catch_up()
            print("done", passes, flush=True)
            return
        time.sleep(0.1)
    raise SystemExit(f"not settled after {passes} passes")


# ---------------------------------------------------------------------------- the launcher


def _die_with_parent() -> None:
    """SIGKILL this process when its parent goes (Linux), so nothing is left behind."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _fork_life(request: dict[str, Any]) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        _die_with_parent()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        run_life(Life(**request["life"]))
    except SystemExit as stop:
        print(stop, file=sys.stderr, flush=True)
        code = 2
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    _die_with_parent()
    print("launcher", os.getpid(), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        pid = _fork_life(json.loads(line))
        print("pid", pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print("exit", pid, status, flush=True)


if __name__ == "__main__":
    main()
