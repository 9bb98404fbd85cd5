"""Metadata (SQLAlchemy: SQLite by default, any SQLAlchemy URL such as PostgreSQL) and blobs on disk."""
