"""Database URLs and the settings they turn into."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.persistence import StorageError, StorageSettings, guard_environment


def test_default_is_ledger_db(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    settings = StorageSettings.from_url(None)
    assert settings.backend == "sqlite"
    assert settings.sqlite_path == Path("ledger.db")


def test_environment_variable_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEDGER_DATABASE_URL", str(tmp_path / "x.db"))
    assert StorageSettings.from_url(None).sqlite_path == tmp_path / "x.db"


def test_sqlite_url_forms(tmp_path: Path) -> None:
    assert StorageSettings.from_url(f"sqlite:///{tmp_path}/a.db").sqlite_path == tmp_path / "a.db"
    assert StorageSettings.from_url(tmp_path / "b.db").env["PERSISTENCE_MODULE"] == (
        "eventsourcing.sqlite"
    )


def test_postgres_url() -> None:
    settings = StorageSettings.from_url(
        "postgresql://trader:s3cret@db.local:6543/ledger?schema=desk1"
    )
    assert settings.backend == "postgres"
    assert settings.env["POSTGRES_HOST"] == "db.local"
    assert settings.env["POSTGRES_PORT"] == "6543"
    assert settings.env["POSTGRES_USER"] == "trader"
    assert settings.env["POSTGRES_PASSWORD"] == "s3cret"
    assert settings.env["POSTGRES_DBNAME"] == "ledger"
    assert settings.env["POSTGRES_SCHEMA"] == "desk1"
    assert settings.env["POSTGRES_ENABLE_DB_FUNCTIONS"] == "n"
    assert "s3cret" not in settings.display
    assert "s3cret" not in repr(settings)


def test_postgres_default_schema() -> None:
    assert StorageSettings.from_url("postgres://u@h/d").postgres_schema == "kite_ledger"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/d", "unsupported scheme 'mysql'"),
        ("postgresql://u@h/", "no database name"),
        ("postgresql://u@h:99999/d", "bad port"),
        ("postgresql://u@h/d?sslmode=require", "unknown parameter"),
        ("postgresql://u@h/d?schema=drop;table", "schema"),
        (":memory:", "in-memory database would lose the log"),
        ("/no/such/dir/ledger.db", "directory /no/such/dir does not exist"),
    ],
)
def test_bad_urls_are_named(url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        StorageSettings.from_url(url)


def test_password_is_redacted_in_errors() -> None:
    with pytest.raises(StorageError) as caught:
        StorageSettings.from_url("postgresql://u:topsecret@h/")
    assert "topsecret" not in str(caught.value)


@pytest.mark.parametrize(
    "key", ["POSTGRES_ENABLE_DB_FUNCTIONS", "ORDERS_POSTGRES_ENABLE_DB_FUNCTIONS"]
)
def test_db_functions_are_refused(key: str) -> None:
    with pytest.raises(StorageError, match="table lock"):
        guard_environment({key: "y"}, "orders")
    guard_environment({key: "n"}, "orders")
