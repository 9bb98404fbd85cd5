"""Wire shapes of `/fine_tuning/jobs`, mirroring OpenAI's `CreateFineTuningJobRequest`,
`FineTuningJob`, `FineTuningJobEvent`, `FineTuningJobCheckpoint` and their list envelopes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from tunehouse.api.request import OpenAIRequest
from tunehouse.store.schema import CheckpointRow, EventRow, JobRow
from tunehouse.train.options import options_summary


class CreateJobRequest(OpenAIRequest):
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: dict[str, Any] | None = None
    method: dict[str, Any] | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, Any] | None = None
    integrations: list[dict[str, Any]] | None = None
    training: dict[str, Any] = Field(
        default_factory=dict,
        description=f"tunehouse's own options (send with extra_body). {options_summary()}.",
    )
    # The legacy API's classification metrics (send with extra_body; jobs/classification.py).
    compute_classification_metrics: bool | None = None
    classification_n_classes: int | None = None
    classification_positive_class: str | None = None
    classification_betas: list[float] | None = None


class JobError(BaseModel):
    code: str
    message: str
    param: str | None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str]
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    integrations: list[dict[str, Any]] | None
    seed: int
    estimated_finish: int | None
    method: dict[str, Any]
    metadata: dict[str, str] | None

    @classmethod
    def from_row(cls, row: JobRow) -> FineTuningJob:
        return cls(
            id=row.id,
            created_at=row.created_at,
            error=JobError(**row.error) if row.error else None,
            fine_tuned_model=row.fine_tuned_model,
            finished_at=row.finished_at,
            hyperparameters=row.hyperparameters,
            model=row.model,
            organization_id=row.organization_id,
            result_files=row.result_files or [],
            status=row.status,
            trained_tokens=row.trained_tokens,
            training_file=row.training_file,
            validation_file=row.validation_file,
            integrations=row.integrations,
            seed=row.seed,
            estimated_finish=row.estimated_finish if row.status == "running" else None,
            method=row.method,
            metadata=row.job_metadata,
        )


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any]

    @classmethod
    def from_row(cls, row: EventRow) -> JobEvent:
        return cls(
            id=row.id,
            created_at=row.created_at,
            level=row.level,
            message=row.message,
            type=row.type,
            data=row.data or {},
        )


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEvent]
    has_more: bool


class JobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, float]

    @classmethod
    def from_row(cls, row: CheckpointRow) -> JobCheckpoint:
        metrics = {k: float(v) for k, v in row.metrics.items() if isinstance(v, int | float)}
        return cls(
            id=row.id,
            created_at=row.created_at,
            fine_tuned_model_checkpoint=row.fine_tuned_model_checkpoint,
            fine_tuning_job_id=row.job_id,
            step_number=row.step_number,
            metrics=metrics,
        )


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobCheckpoint]
    first_id: str | None
    last_id: str | None
    has_more: bool
