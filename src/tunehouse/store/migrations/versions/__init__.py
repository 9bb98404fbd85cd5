"""One module per revision of the schema; Alembic loads them by path."""
