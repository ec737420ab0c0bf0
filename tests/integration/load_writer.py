"""A writer process for the load test: `python -m tests.integration.load_writer URL TAG N`
issues N commands (orders of submit, accept and two fills) and prints what was
acknowledged as JSON on its last line."""

from __future__ import annotations

import json
import sys

from ledger.application import open_ledger
from tests.integration.load_work import issue


def main() -> None:
    url, tag, commands = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ledger = open_ledger(url)
    try:
        acknowledged = issue(ledger, tag, commands)
    finally:
        ledger.close()
    print(json.dumps({"tag": tag, "orders": acknowledged}))


if __name__ == "__main__":
    main()
