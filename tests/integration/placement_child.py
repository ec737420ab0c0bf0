"""A dispatcher process for the placement crash tests.

    python -m tests.integration.placement_child LEDGER_URL SANDBOX_ROOT before-send|wait

`before-send`: the process kills itself (SIGKILL) right after it noted in the outbox that
it is about to send, before the request leaves. `wait`: it sends, and the test kills it
while the sandbox holds the reply back (the broker has the order; the ledger has not
recorded `Accepted`).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from kiteconnect import KiteConnect

from ledger.application import open_ledger
from ledger.kite.gateway import KiteGateway
from ledger.kite.outbox import Outbox
from tests.kite_support import ACCOUNT


def main(url: str, root: str, mode: str) -> None:
    with open_ledger(url) as ledger:
        assert ledger.storage is not None
        outbox = Outbox(ledger.storage)
        if mode == "before-send":
            real_claim = outbox.claim

            def claim_then_die(*args: Any, **kwargs: Any) -> bool:
                won = real_claim(*args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)
                return won

            outbox.claim = claim_then_die  # type: ignore[method-assign]
        kite = KiteConnect("sandbox_key", "sandbox_token", root=root, timeout=30)
        # A short lease: the test's next dispatcher takes over soon after the kill.
        gateway = KiteGateway(ledger, kite, outbox=outbox, account=ACCOUNT, send_lease=0.5)
        print("dispatching", flush=True)
        gateway.dispatch()
        print("dispatched", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
