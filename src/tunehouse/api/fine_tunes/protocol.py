"""Wire shapes of the legacy `/fine-tunes` API (OpenAI spec of 2023-09): `fine-tune` objects whose
file lists hold File objects, and `fine-tune-event`s."""

from __future__ import annotations

from typing import Any

from tunehouse.api.files.protocol import FileObject
from tunehouse.api.request import OpenAIRequest
from tunehouse.jobs.classification import job_settings
from tunehouse.jobs.records import all_events
from tunehouse.store.files import get_file
from tunehouse.store.schema import EventRow, JobRow

DEFAULT_MODEL = "curie"  # OpenAI's default for legacy fine-tunes; an alias (models/aliases.py)
LEGACY_STATUS = {"validating_files": "pending", "queued": "pending"}


class CreateFineTuneRequest(OpenAIRequest):
    training_file: str
    validation_file: str | None = None
    model: str = DEFAULT_MODEL
    n_epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    suffix: str | None = None
    compute_classification_metrics: bool | None = None
    classification_n_classes: int | None = None
    classification_positive_class: str | None = None
    classification_betas: list[float] | None = None


def legacy_event(row: EventRow) -> dict[str, Any]:
    return {"object": "fine-tune-event", "created_at": row.created_at, "level": row.level, "message": row.message}


def _file_objects(file_ids: list[str | None]) -> list[dict[str, Any]]:
    objects = []
    for file_id in file_ids:
        if file_id is None:
            continue
        try:
            objects.append(FileObject.from_row(get_file(file_id)).to_wire())
        except Exception:  # a deleted file: the legacy object still names it
            objects.append({"id": file_id, "object": "file", "status": "deleted"})
    return objects


def _classification_hyperparams(job: JobRow) -> dict[str, Any]:
    """The classification options a legacy fine-tune shows among its hyperparams, where it has them."""
    settings = job_settings(job)
    if settings is None:
        return {}
    shown: dict[str, Any] = {"compute_classification_metrics": True, "classification_n_classes": settings.n_classes}
    if settings.positive_class is not None:
        shown["classification_positive_class"] = settings.positive_class
        shown["classification_betas"] = list(settings.betas)
    return shown


def legacy_fine_tune(job: JobRow, with_events: bool = True) -> dict[str, Any]:
    hyper = job.hyperparameters
    body: dict[str, Any] = {
        "id": job.id,
        "object": "fine-tune",
        "created_at": job.created_at,
        "updated_at": job.finished_at or job.created_at,
        "model": job.model,
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": job.organization_id,
        "status": LEGACY_STATUS.get(job.status, job.status),
        "hyperparams": {
            "n_epochs": hyper.get("n_epochs"),
            "batch_size": hyper.get("batch_size"),
            "learning_rate_multiplier": hyper.get("learning_rate_multiplier"),
            "prompt_loss_weight": 0.0,  # prompt tokens are never trained
            **_classification_hyperparams(job),
        },
        "training_files": _file_objects([job.training_file]),
        "validation_files": _file_objects([job.validation_file]),
        "result_files": _file_objects(list(job.result_files or [])),
    }
    if with_events:
        body["events"] = [legacy_event(e) for e in all_events(job.id)]
    return body
