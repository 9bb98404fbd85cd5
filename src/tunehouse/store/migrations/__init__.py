"""The store's schema migrations (Alembic), shipped inside the package and applied when a process first
opens the store.

The API process, its trainer children and workers on other machines may open one store at the same
moment, so an upgrade runs under a lock that every one of them takes: PostgreSQL's transaction-scoped
advisory lock, or SQLite's write lock (`BEGIN IMMEDIATE`). DDL runs in that same transaction, so an
upgrade that fails leaves the store as it was. A process that finds the store already at the newest
revisions takes no lock at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text

HERE = Path(__file__).resolve().parent
# Any 64-bit number both sides agree on: tunehouse's key for PostgreSQL's advisory lock.
_PG_LOCK_KEY = 0x7475_6E65_686F_7573  # "tunehous"


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built in code (no alembic.ini): the scripts in this package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def heads() -> set[str]:
    """The newest revisions of the scripts (several when branches have not been merged)."""
    return set(ScriptDirectory.from_config(config()).get_heads())


def current(connection: Connection) -> set[str]:
    """The revisions the store is at; empty for a new store or one made before migrations existed."""
    return set(MigrationContext.configure(connection).get_current_heads())


def upgrade(engine: Engine) -> None:
    """Bring the store at `engine` to every head revision, unless it is there already."""
    with engine.connect() as connection:
        if current(connection) == heads():
            return
    if engine.dialect.name == "sqlite":
        _upgrade_sqlite(engine)
    else:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            command.upgrade(config(connection), "heads")


def _upgrade_sqlite(engine: Engine) -> None:
    """pysqlite opens a transaction only before INSERT/UPDATE/DELETE, so DDL would run outside one and
    no lock would be held. This engine (used only here) issues `BEGIN IMMEDIATE` itself: the write lock
    is taken before the revision is read, and every statement of the upgrade commits or none does."""
    locked = create_engine(engine.url, connect_args={"timeout": 60})

    @event.listens_for(locked, "connect")
    def _manual_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA journal_mode=WAL")

    @event.listens_for(locked, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        with locked.begin() as connection:
            command.upgrade(config(connection), "heads")
    finally:
        locked.dispose()
