"""The offline rebuild's writer process: commits batches into a SQLite file.

Run by path (`python projections/sqlite_writer.py FILE`), so it imports nothing but the
standard library (about 12 MB, not the 77 MB of the folds' imports). It reads pickled
messages on stdin and answers each on stdout:

* `("write", check, statements, update)`: one transaction: `check` (SQL, parameters,
  {projection: expected position}) read first, holding the write lock; if a position is
  not the expected one nothing is written and the answer is `("conflict", name, expected,
  found)`; else every `(SQL, parameters)` of `statements`, then `update` (the tracking
  positions), then COMMIT: `("ok",)`. Any error rolls the transaction back and is answered
  `("error", exception)`.
* `None`: close; the answer is `("closed", peak RSS in kB)` (VmHWM, for the memory figure).

Why a process: in a thread, the writes took the GIL from the fold for every statement,
and a rebuild ran no faster with its writes in a thread than in line. In a process the
SQLite work runs on the other core while the fold goes on.
"""

from __future__ import annotations

import contextlib
import pickle
import sqlite3
import sys
from typing import Any, BinaryIO


def serve(path: str, requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer messages until `None` or the end of `requests`."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30, cached_statements=512)
    # The same settings as the rebuild's own connection to this file (a scratch file).
    conn.execute("PRAGMA journal_mode=MEMORY")
    conn.execute("PRAGMA synchronous=OFF")
    while True:
        try:
            message = pickle.load(requests)
        except EOFError:
            break
        if message is None:
            break
        try:
            _answer(answers, _write(conn, *message[1:]))
        except OSError:  # the rebuild is gone (killed): its partial file is thrown away
            break
    conn.close()
    with contextlib.suppress(OSError):  # the rebuild is gone (killed): nobody to tell
        _answer(answers, ("closed", _peak_kb()))


def _write(conn: sqlite3.Connection, check: Any, statements: Any, update: Any) -> tuple[Any, ...]:
    cur = conn.cursor()
    try:
        cur.execute("BEGIN IMMEDIATE")
        if check is not None:
            sql, parameters, expected = check
            cur.execute(sql, parameters)
            actual = {name: int(position) for name, position in cur.fetchall()}
            for name, wanted in expected.items():
                found = actual.get(name, 0)
                if found != wanted:
                    conn.rollback()
                    return ("conflict", name, wanted, found)
        for sql, parameters in statements:
            cur.execute(sql, parameters)
        cur.execute(*update)
        conn.commit()
    except Exception as error:
        if conn.in_transaction:
            conn.rollback()
        return ("error", error)
    return ("ok",)


def _answer(answers: BinaryIO, answer: tuple[Any, ...]) -> None:
    try:
        data = pickle.dumps(answer)
    except Exception:  # an error that does not pickle: its text
        data = pickle.dumps(("error", RuntimeError(repr(answer[-1]))))
    answers.write(data)
    answers.flush()


def _peak_kb() -> int:
    """This process's peak RSS in kB (0 where there is no /proc)."""
    try:
        with open("/proc/self/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


if __name__ == "__main__":
    serve(sys.argv[1], sys.stdin.buffer, sys.stdout.buffer)
