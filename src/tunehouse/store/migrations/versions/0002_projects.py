"""Projects and keys: the `projects`, `service_accounts` and `api_keys` tables, and a `project_id` on
every owned table (files, jobs, models, evals). Existing rows keep NULL: the default project's, the
one single-user mode has always used (`store/projects.py`).

Revision ID: 0002_projects
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_projects"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNED = ("files", "jobs", "models", "evals")


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("archived_at", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_projects_id", "projects", ["id"], unique=True)
    op.create_table(
        "service_accounts",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_service_accounts_id", "service_accounts", ["id"], unique=True)
    op.create_index("ix_service_accounts_project_id", "service_accounts", ["project_id"], unique=False)
    op.create_table(
        "api_keys",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("service_account_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("redacted_value", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("last_used_at", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["service_account_id"], ["service_accounts.id"]),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_api_keys_id", "api_keys", ["id"], unique=True)
    op.create_index("ix_api_keys_digest", "api_keys", ["digest"], unique=True)
    op.create_index("ix_api_keys_project_id", "api_keys", ["project_id"], unique=False)
    op.create_index("ix_api_keys_service_account_id", "api_keys", ["service_account_id"], unique=False)
    for table in OWNED:
        op.add_column(table, sa.Column("project_id", sa.String(length=64), nullable=True))
        op.create_index(f"ix_{table}_project_id", table, ["project_id"], unique=False)


def downgrade() -> None:
    for table in OWNED:
        op.drop_index(f"ix_{table}_project_id", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("project_id")
    for table in ("api_keys", "service_accounts", "projects"):
        op.drop_table(table)
