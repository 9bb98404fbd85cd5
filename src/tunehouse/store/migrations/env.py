"""Alembic's environment: runs on the connection `store/migrate.py` hands it (already inside the
transaction that holds the upgrade lock), or, from the `alembic` command line, on `sqlalchemy.url`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from tunehouse.store.schema import Base


def _run(connection: Connection) -> None:
    # SQLite alters a table by copying it (batch mode); `compare_type` lets autogenerate see type changes.
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "set sqlalchemy.url, or run migrations through tunehouse.store.migrate"
    with create_engine(url).begin() as connection:
        _run(connection)


main()
