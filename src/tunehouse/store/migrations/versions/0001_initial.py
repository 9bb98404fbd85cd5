"""The schema of the first release with migrations (that of commit 37eb0f3), table by table.

Stores made before migrations existed already have these tables (made by `create_all`), and stores
made by still older releases have some of them: a table that exists is left as it is, so such a store
is brought to this revision in place, with its rows.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _create(name: str, *elements: sa.schema.SchemaItem) -> bool:
    """Create table `name` unless the store has it already; whether it was created (then index it)."""
    if sa.inspect(op.get_bind()).has_table(name):
        return False
    op.create_table(name, *elements)
    return True


def upgrade() -> None:
    if _create(
        "evals",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("data_source_config", sa.JSON(), nullable=False),
        sa.Column("testing_criteria", sa.JSON(), nullable=False),
        sa.Column("eval_metadata", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    ):
        op.create_index("ix_evals_id", "evals", ["id"], unique=True)

    if _create(
        "files",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("filename", sa.String(length=512), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_details", sa.Text(), nullable=True),
        sa.Column("blob", sa.String(length=512), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    ):
        op.create_index("ix_files_id", "files", ["id"], unique=True)
        op.create_index("ix_files_purpose", "files", ["purpose"], unique=False)

    if _create(
        "jobs",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=512), nullable=False),
        sa.Column("organization_id", sa.String(length=128), nullable=False),
        sa.Column("training_file", sa.String(length=64), nullable=False),
        sa.Column("validation_file", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("method", sa.JSON(), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("training_options", sa.JSON(), nullable=False),
        sa.Column("suffix", sa.String(length=64), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("job_metadata", sa.JSON(), nullable=True),
        sa.Column("integrations", sa.JSON(), nullable=True),
        sa.Column("fine_tuned_model", sa.String(length=512), nullable=True),
        sa.Column("finished_at", sa.Integer(), nullable=True),
        sa.Column("estimated_finish", sa.Integer(), nullable=True),
        sa.Column("trained_tokens", sa.Integer(), nullable=True),
        sa.Column("result_files", sa.JSON(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("worker_host", sa.String(length=255), nullable=True),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("heartbeat_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    ):
        op.create_index("ix_jobs_id", "jobs", ["id"], unique=True)
        op.create_index("ix_jobs_status", "jobs", ["status"], unique=False)

    _create(
        "migrations",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source_url", sa.String(length=1024), nullable=False),
        sa.Column("source_job_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("source_job", sa.JSON(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("golden", sa.JSON(), nullable=True),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("fine_tuned_model", sa.String(length=600), nullable=True),
        sa.Column("aliases", sa.JSON(), nullable=False),
        sa.Column("comparison", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("source_url", "source_job_id"),
    )

    _create(
        "model_aliases",
        sa.Column("name", sa.String(length=600), nullable=False),
        sa.Column("target", sa.String(length=600), nullable=False),
        sa.Column("created", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )

    _create(
        "models",
        sa.Column("id", sa.String(length=600), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created", sa.Integer(), nullable=False),
        sa.Column("owned_by", sa.String(length=128), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("base_model", sa.String(length=600), nullable=True),
        sa.Column("adapter", sa.Boolean(), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )

    if _create(
        "outbox",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("endpoint_id", sa.String(length=64), nullable=True),
        sa.Column("recipient", sa.String(length=320), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Double(), nullable=True),
        sa.Column("claimed_until", sa.Double(), nullable=True),
        sa.Column("delivered_at", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    ):
        op.create_index("ix_outbox_endpoint_id", "outbox", ["endpoint_id"], unique=False)
        op.create_index("ix_outbox_event_id", "outbox", ["event_id"], unique=False)
        op.create_index("ix_outbox_id", "outbox", ["id"], unique=True)
        op.create_index("ix_outbox_next_attempt_at", "outbox", ["next_attempt_at"], unique=False)
        op.create_index("ix_outbox_project_id", "outbox", ["project_id"], unique=False)
        op.create_index("ix_outbox_status", "outbox", ["status"], unique=False)
        op.create_index("ix_outbox_subject_id", "outbox", ["subject_id"], unique=False)

    if _create(
        "webhook_endpoints",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("event_types", sa.JSON(), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("previous_secret", sa.String(length=128), nullable=True),
        sa.Column("previous_secret_expires_at", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    ):
        op.create_index("ix_webhook_endpoints_id", "webhook_endpoints", ["id"], unique=True)
        op.create_index("ix_webhook_endpoints_project_id", "webhook_endpoints", ["project_id"], unique=False)

    if _create(
        "checkpoints",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("step_number", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("fine_tuned_model_checkpoint", sa.String(length=600), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("seq"),
    ):
        op.create_index("ix_checkpoints_id", "checkpoints", ["id"], unique=True)
        op.create_index("ix_checkpoints_job_id", "checkpoints", ["job_id"], unique=False)

    if _create(
        "eval_runs",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("eval_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=600), nullable=True),
        sa.Column("data_source", sa.JSON(), nullable=False),
        sa.Column("run_metadata", sa.JSON(), nullable=True),
        sa.Column("total_items", sa.Integer(), nullable=True),
        sa.Column("result_counts", sa.JSON(), nullable=False),
        sa.Column("per_testing_criteria_results", sa.JSON(), nullable=False),
        sa.Column("per_model_usage", sa.JSON(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("worker_host", sa.String(length=255), nullable=True),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("heartbeat_at", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(["eval_id"], ["evals.id"]),
        sa.PrimaryKeyConstraint("seq"),
    ):
        op.create_index("ix_eval_runs_eval_id", "eval_runs", ["eval_id"], unique=False)
        op.create_index("ix_eval_runs_id", "eval_runs", ["id"], unique=True)
        op.create_index("ix_eval_runs_status", "eval_runs", ["status"], unique=False)

    if _create(
        "events",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("seq"),
    ):
        op.create_index("ix_events_id", "events", ["id"], unique=True)
        op.create_index("ix_events_job_id", "events", ["job_id"], unique=False)

    if _create(
        "outbox_attempts",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(length=64), nullable=False),
        sa.Column("attempted_at", sa.Double(), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("response_status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["delivery_id"], ["outbox.id"]),
        sa.PrimaryKeyConstraint("seq"),
    ):
        op.create_index("ix_outbox_attempts_delivery_id", "outbox_attempts", ["delivery_id"], unique=False)

    if _create(
        "eval_output_items",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("eval_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("datasource_item_id", sa.Integer(), nullable=False),
        sa.Column("datasource_item", sa.JSON(), nullable=False),
        sa.Column("sample", sa.JSON(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["eval_runs.id"]),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("run_id", "datasource_item_id"),
    ):
        op.create_index("ix_eval_output_items_eval_id", "eval_output_items", ["eval_id"], unique=False)
        op.create_index("ix_eval_output_items_id", "eval_output_items", ["id"], unique=True)
        op.create_index("ix_eval_output_items_run_id", "eval_output_items", ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_table("eval_output_items")
    op.drop_table("outbox_attempts")
    op.drop_table("events")
    op.drop_table("eval_runs")
    op.drop_table("checkpoints")
    op.drop_table("webhook_endpoints")
    op.drop_table("outbox")
    op.drop_table("models")
    op.drop_table("model_aliases")
    op.drop_table("migrations")
    op.drop_table("jobs")
    op.drop_table("files")
    op.drop_table("evals")
