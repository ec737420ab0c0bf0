"""`python -m ledger` runs the `kite-ledger` command line."""

from __future__ import annotations

from ledger.cli import main

main()
