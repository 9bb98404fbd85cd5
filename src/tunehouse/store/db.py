"""Engine and sessions. One engine per database URL per process; on first use the schema is brought to
the newest revision (`store/migrations`), so a store made by an older release is upgraded in place.

SQLite is opened in WAL mode with a busy timeout because the server and the trainer child process
write to it at the same time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from tunehouse.config import settings
from tunehouse.errors import InvalidRequest
from tunehouse.store import migrations


@lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    migrations.upgrade(engine)
    return engine


def engine() -> Engine:
    return _engine(settings().database_url)


def revisions() -> tuple[set[str], set[str]]:
    """The schema revisions the store is at (empty: a store not yet opened by this release), and the
    newest ones this code has — read without upgrading anything."""
    url = settings().database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return set(), migrations.heads()
    reader = create_engine(url)
    try:
        with reader.connect() as connection:
            return migrations.current(connection), migrations.heads()
    finally:
        reader.dispose()


@lru_cache(maxsize=8)
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=_engine(url), expire_on_commit=False)


def checkpoint() -> None:
    """Fold SQLite's write-ahead log into the database file, so `tunehouse.db` alone is whole (a naive
    copy of it after a clean stop has every table and row). Other databases need nothing."""
    if engine().dialect.name == "sqlite":
        with engine().connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def backup(target: Path) -> None:
    """A consistent copy of the database at `target`, taken while servers and trainers write to it
    (SQLite's `VACUUM INTO`: one read transaction, so the copy is one moment of the store)."""
    if engine().dialect.name != "sqlite":
        raise InvalidRequest("tunehouse backup copies SQLite stores; back PostgreSQL up with pg_dump.")
    if target.exists():
        raise InvalidRequest(f"{target} already exists; name a new file.", param="target")
    target.parent.mkdir(parents=True, exist_ok=True)
    with engine().connect() as connection:
        connection.exec_driver_sql("VACUUM INTO ?", (str(target),))


@contextmanager
def session() -> Iterator[Session]:
    """A transaction: committed when the block ends, rolled back if it raises."""
    maker = _sessionmaker(settings().database_url)
    with maker() as s, s.begin():
        yield s
