"""The store on a real PostgreSQL server (tests/postgres.py): what differs from SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from tunehouse.errors import InvalidRequest
from tunehouse.store.db import backup, checkpoint, engine, session
from tunehouse.store.schema import FileRow


@pytest.fixture
def on_postgres(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEHOUSE_DATABASE_URL", postgres_url)
    return postgres_url


def test_the_store_is_postgresql_and_keeps_rows(on_postgres: str) -> None:
    assert engine().dialect.name == "postgresql" and engine().dialect.driver == "psycopg"
    with session() as s:
        s.add(FileRow(id="file-pg1", filename="ü.jsonl", bytes=2**31 - 1, purpose="fine-tune", created_at=1, blob="x"))
    checkpoint()  # SQLite's WAL fold: nothing to do here, and no error
    with session() as s:
        assert s.scalars(select(FileRow.filename).where(FileRow.id == "file-pg1")).one() == "ü.jsonl"


def test_backup_names_pg_dump_and_writes_nothing(on_postgres: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="pg_dump"):
        backup(tmp_path / "copy.db")
    assert not (tmp_path / "copy.db").exists()
