"""Workers on several machines: the `workers` table, each job's lease (the worker holding it and until
when), so a job whose worker vanished is taken by another (`jobs/claims.py`), and an index on
(status, seq) that hands claims the oldest queued jobs without sorting the queue.

Revision ID: 0002_workers
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_workers"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(length=16), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("gpu_memory_mb", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.Integer(), nullable=False),
        sa.Column("heartbeat_at", sa.Double(), nullable=False),
        sa.Column("current_job", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_workers_id", "workers", ["id"], unique=True)
    op.add_column("jobs", sa.Column("worker_id", sa.String(length=64), nullable=True))
    op.add_column("jobs", sa.Column("lease_expires_at", sa.Double(), nullable=True))
    op.create_index("ix_jobs_worker_id", "jobs", ["worker_id"], unique=False)
    op.create_index("ix_jobs_status_seq", "jobs", ["status", "seq"], unique=False)  # claims read the queue in order


def downgrade() -> None:
    op.drop_index("ix_jobs_status_seq", table_name="jobs")
    op.drop_index("ix_jobs_worker_id", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("worker_id")
    op.drop_index("ix_workers_id", table_name="workers")
    op.drop_table("workers")
