"""Tables. Portable SQLAlchemy types only (JSON, not SQLite-specific SQL), so PostgreSQL works later.

Each list the API pages through has an integer `seq` so "newest first, after=<id>" is an index
lookup rather than a comparison of string ids written by several processes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class FileRow(Base):
    __tablename__ = "files"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    filename: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(Integer)
    purpose: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="processed")
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    blob: Mapped[str] = mapped_column(String(512))
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # none: the default project


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_seq", "status", "seq"),)  # the queue: its oldest jobs first

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(512))
    organization_id: Mapped[str] = mapped_column(String(128))
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # none: the default project
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    # What the user asked for ("auto" kept) and what training used, resolved at start.
    method: Mapped[dict[str, Any]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    training_options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    job_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    integrations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(Integer, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    worker_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(nullable=True)
    # The worker that holds the job (`workers.id`) and until when; another may take it once expired.
    worker_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    lease_expires_at: Mapped[float | None] = mapped_column(nullable=True)


class EventRow(Base):
    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id"), index=True)
    created_at: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id"), index=True)
    created_at: Mapped[int] = mapped_column(Integer)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(600))
    path: Mapped[str] = mapped_column(String(1024))


class ModelRow(Base):
    """Every model id the API answers to: registered base models, fine-tuned models, checkpoints."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(600), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # base | fine-tuned | checkpoint
    created: Mapped[int] = mapped_column(Integer)
    owned_by: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(String(1024))
    base_model: Mapped[str | None] = mapped_column(String(600), nullable=True)
    adapter: Mapped[bool] = mapped_column(Boolean, default=False)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # none: default or base


class AliasRow(Base):
    """A model name that stands for another model (`tunehouse models alias`, or a migration)."""

    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(String(600), primary_key=True)
    target: Mapped[str] = mapped_column(String(600))
    created: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))  # user | migration


class MigrationRow(Base):
    """A fine-tuning job carried over from another OpenAI-compatible server (`tunehouse migrate`): how far
    it got, so a second run skips what is done and resumes what is not."""

    __tablename__ = "migrations"
    __table_args__ = (UniqueConstraint("source_url", "source_job_id"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_url: Mapped[str] = mapped_column(String(1024))
    source_job_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(32))  # the last step done (migrate/state.py STAGES)
    source_job: Mapped[dict[str, Any]] = mapped_column(JSON)  # the job as the source reported it
    files: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # source file id -> the copy here
    golden: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # the source model's answers
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the job re-created here
    fine_tuned_model: Mapped[str | None] = mapped_column(String(600), nullable=True)
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)  # source model ids now naming models here
    comparison: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # why the last run stopped short


class EvalRow(Base):
    """An eval of the Evals API: the shape of its items and the graders every run applies."""

    __tablename__ = "evals"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[float] = mapped_column()  # to the microsecond: `order_by=updated_at` pages by it
    data_source_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    testing_criteria: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    eval_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # none: the default project


class EvalRunRow(Base):
    """One run of an eval over a data source; its counters grow as the worker writes output items."""

    __tablename__ = "eval_runs"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    eval_id: Mapped[str] = mapped_column(String(64), ForeignKey("evals.id"), index=True)
    name: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued | in_progress | completed | failed | canceled
    model: Mapped[str | None] = mapped_column(String(600), nullable=True)
    data_source: Mapped[dict[str, Any]] = mapped_column(JSON)
    run_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    total_items: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result_counts: Mapped[dict[str, int]] = mapped_column(JSON)
    per_testing_criteria_results: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    per_model_usage: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    error: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    worker_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(nullable=True)


class EvalOutputItemRow(Base):
    """One data source item of a run: the sample the model gave and each grader's result."""

    __tablename__ = "eval_output_items"
    __table_args__ = (UniqueConstraint("run_id", "datasource_item_id"),)  # a resumed run never grades twice

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("eval_runs.id"), index=True)
    eval_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(8))  # pass | fail
    datasource_item_id: Mapped[int] = mapped_column(Integer)
    datasource_item: Mapped[dict[str, Any]] = mapped_column(JSON)
    sample: Mapped[dict[str, Any]] = mapped_column(JSON)
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


class WebhookEndpointRow(Base):
    """A URL that receives signed event deliveries (`/v1/webhook_endpoints`, OpenAI's shape)."""

    __tablename__ = "webhook_endpoints"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # none: the one project
    name: Mapped[str] = mapped_column(String(256))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(128))  # `whsec_` + base64, shown once
    previous_secret: Mapped[str | None] = mapped_column(String(128), nullable=True)  # also signs until:
    previous_secret_expires_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[int] = mapped_column(Integer)


class OutboxRow(Base):
    """One notification to deliver — an event to one webhook endpoint, or one email — written in the
    transaction that ended its job or run, and tried until it is delivered or too old (`store/outbox.py`)."""

    __tablename__ = "outbox"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    event_id: Mapped[str] = mapped_column(String(64), index=True)  # `evt_…`: the same for every endpoint
    event_type: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str] = mapped_column(String(64), index=True)  # the job or eval run
    created_at: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(8))  # webhook | email
    endpoint_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    recipient: Mapped[str | None] = mapped_column(String(320), nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # the webhook body, or the email's subject and text
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float | None] = mapped_column(nullable=True, index=True)
    claimed_until: Mapped[float | None] = mapped_column(nullable=True)  # a sender holds it until then
    delivered_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class DeliveryAttemptRow(Base):
    """One try of an outbox row: when, the HTTP status (or SMTP reply) it got, and why it failed."""

    __tablename__ = "outbox_attempts"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(64), ForeignKey("outbox.id"), index=True)
    attempted_at: Mapped[float] = mapped_column()
    success: Mapped[bool] = mapped_column(Boolean)
    response_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class ProjectRow(Base):
    """A project of the admin API (`/v1/organization/projects`): its keys see only its own objects."""

    __tablename__ = "projects"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(Integer)
    archived_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ServiceAccountRow(Base):
    """A project's service account: the owner of one API key."""

    __tablename__ = "service_accounts"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))  # member | none
    created_at: Mapped[int] = mapped_column(Integer)


class ApiKeyRow(Base):
    """A project API key, kept as the SHA-256 of its value (shown once, at creation)."""

    __tablename__ = "api_keys"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    service_account_id: Mapped[str] = mapped_column(String(64), ForeignKey("service_accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    digest: Mapped[str] = mapped_column(String(64), unique=True, index=True)  # sha256 hex of the key
    redacted_value: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(Integer)
    last_used_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class WorkerRow(Base):
    """A `tunehouse worker` (or a server's own worker): what it can run and what it runs now, kept
    fresh by its heartbeats (`jobs/leases.py`)."""

    __tablename__ = "workers"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(16))  # cpu | cuda
    gpus: Mapped[int] = mapped_column(Integer)
    gpu_memory_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the smallest GPU's
    started_at: Mapped[int] = mapped_column(Integer)
    heartbeat_at: Mapped[float] = mapped_column()
    current_job: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # idle | busy | stopped
