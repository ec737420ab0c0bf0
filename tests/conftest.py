"""Fixtures: the one integration suite runs against SQLite and against PostgreSQL.

PostgreSQL comes from `LEDGER_TEST_POSTGRES_URL` (default the local server). Each run makes
a fresh database and each test a fresh schema in it; both are dropped afterwards. Where no
server answers, the PostgreSQL half is skipped with a loud reason, unless
`LEDGER_REQUIRE_POSTGRES=1` (as in CI), when it fails instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase, ReadOnlyDatabase
from psycopg import sql

from ledger.application import OrderLedger, open_ledger
from tests.support import FakeClock

# Failing examples are kept in the repository, so a failure found once is tried on every
# run after it; CI only reads them.
_EXAMPLES = DirectoryBasedExampleDatabase(str(Path(__file__).parent / "hypothesis-examples"))
settings.register_profile(
    "default",
    database=_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "ci",
    parent=settings.get_profile("default"),
    database=ReadOnlyDatabase(_EXAMPLES),
    print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI") else "default")

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_admin_url() -> str:
    return os.environ.get("LEDGER_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def _postgres_required() -> bool:
    return os.environ.get("LEDGER_REQUIRE_POSTGRES", "") == "1"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh database for this run; yields its URL (without a schema)."""
    admin_url = postgres_admin_url()
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        reason = (
            f"PostgreSQL NOT TESTED: no server answers at {admin_url} ({error}). "
            "Set LEDGER_TEST_POSTGRES_URL, or LEDGER_REQUIRE_POSTGRES=1 to make this fail."
        )
        if _postgres_required():
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"ledger_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = admin_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty ledger database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "ledger.db")
        return
    database: str = request.getfixturevalue("postgres_database")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{database}?schema={schema}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    """A ledger URL on a fresh PostgreSQL schema of its own (for PostgreSQL-only tests);
    the schema is dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_database}?schema={schema}"
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


LedgerFactory = Callable[..., OrderLedger]


@pytest.fixture
def make_ledger(database_url: str) -> Iterator[LedgerFactory]:
    """Open ledgers on the test's database (as many as a test wants); closes them after."""
    opened: list[OrderLedger] = []

    def factory(**kwargs: Any) -> OrderLedger:
        kwargs.setdefault("clock", FakeClock())
        ledger = open_ledger(database_url, **kwargs)
        opened.append(ledger)
        return ledger

    yield factory
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(make_ledger: LedgerFactory) -> OrderLedger:
    return make_ledger()
