"""Creating, validating and cancelling fine-tuning jobs — the logic behind `/fine_tuning/jobs`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from tunehouse.config import settings
from tunehouse.errors import Conflict, InvalidRequest, InvalidValue, TunehouseError
from tunehouse.ids import new_id
from tunehouse.jobs.classification import OPTIONS_KEY, check_job_classes, classification_settings
from tunehouse.jobs.email import check_notify_email
from tunehouse.jobs.integrations import check_integrations
from tunehouse.jobs.records import ACTIVE_STATES, TERMINAL_STATES, add_event, get_job, update_job
from tunehouse.models.catalog import ModelInfo, get_model
from tunehouse.store.db import session
from tunehouse.store.files import file_path, get_file
from tunehouse.store.projects import org_name, owner
from tunehouse.store.schema import JobRow
from tunehouse.train.hyperparams import check_hyperparameters
from tunehouse.train.options import check_training_options

METHOD_TYPES = {"supervised", "dpo"}


@dataclass
class JobRequest:
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: dict[str, Any] | None = None
    method: dict[str, Any] | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    compute_classification_metrics: bool | None = None
    classification_n_classes: int | None = None
    classification_positive_class: str | None = None
    classification_betas: list[float] | None = None


def fine_tuned_model_name(job: JobRow) -> str:
    """`ft:{base}:{org}:{suffix}:{id}` as OpenAI names them; the id is the job id's random tail, `{org}`
    the organization for the default project and the project's name for any other."""
    org = job.organization_id.removeprefix("org-") if job.project_id is None else org_name(job.project_id)
    return f"ft:{job.model}:{org}:{job.suffix or ''}:{job.id[-8:]}"


def _resolve_method(request: JobRequest) -> dict[str, Any]:
    """One `method` object from either the deprecated `hyperparameters` or `method`, as OpenAI does."""
    method = dict(request.method or {"type": "supervised"})
    method_type = method.get("type", "supervised")
    if not isinstance(method_type, str) or method_type not in METHOD_TYPES:
        raise InvalidValue(f"Unsupported method.type {method_type!r}. Supported: supervised, dpo.", param="method.type")
    section = method.get(method_type) or {}
    if not isinstance(section, dict) or not isinstance(section.get("hyperparameters") or {}, dict):
        raise InvalidRequest(
            f"method.{method_type} must be an object such as {{'hyperparameters': {{'n_epochs': 3}}}}.",
            param=f"method.{method_type}",
        )
    section = dict(section)
    hyperparameters = dict(section.get("hyperparameters") or {})
    if request.hyperparameters:
        if hyperparameters and request.method:
            raise InvalidRequest(
                "Give hyperparameters either at the top level (deprecated) or under method, not both.",
                param="hyperparameters",
            )
        hyperparameters = dict(request.hyperparameters)
    check_hyperparameters(hyperparameters, f"method.{method_type}.hyperparameters")
    if method_type == "supervised" and "beta" in hyperparameters:
        raise InvalidRequest("beta is a DPO hyperparameter.", param="method.supervised.hyperparameters.beta")
    defaults = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
    if method_type == "dpo":
        defaults["beta"] = "auto"
    section["hyperparameters"] = {**defaults, **hyperparameters}
    return {"type": method_type, method_type: section}


def _check_request(request: JobRequest) -> ModelInfo:
    """Refuse what cannot train (naming the parameter); the model the job starts from."""
    base = get_model(request.model, param="model")
    if base.kind == "checkpoint":
        raise InvalidRequest("Fine-tune from a fine-tuned model, not from a checkpoint.", param="model")
    for param, file_id in (("training_file", request.training_file), ("validation_file", request.validation_file)):
        if file_id is None:
            continue
        row = get_file(file_id, param=param)
        if row.purpose != "fine-tune":
            raise InvalidRequest(
                f"File {file_id} has purpose '{row.purpose}'; {param} needs a file uploaded with purpose 'fine-tune'.",
                param=param,
            )
    if request.suffix is not None and not 1 <= len(request.suffix) <= 64:
        raise InvalidRequest("suffix must be 1 to 64 characters long.", param="suffix")
    if request.seed is not None and not 0 <= request.seed <= 2_147_483_647:
        raise InvalidRequest("seed must be between 0 and 2147483647.", param="seed")
    if request.metadata is not None:
        if len(request.metadata) > 16:
            raise InvalidRequest("metadata can hold at most 16 pairs.", param="metadata")
        for key, value in request.metadata.items():
            if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
                raise InvalidRequest(
                    f"metadata['{key}']: keys are at most 64 characters, values strings of at most 512.",
                    param="metadata",
                )
        check_notify_email(request.metadata)
    for param, part in (("method", request.method), ("integrations", request.integrations)):
        _reject_non_finite(part, param)
    if request.integrations is not None:
        check_integrations(request.integrations)
    check_training_options(request.training)
    return base


def _reject_non_finite(value: Any, param: str) -> None:
    """NaN and ±Infinity (which JSON bodies may carry) have no JSON form to store or echo back."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"{param} must be a finite number, not {value!r}.", param=param)
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_non_finite(item, f"{param}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_non_finite(item, f"{param}[{index}]")


def _classification_options(request: JobRequest, method_type: str) -> dict[str, Any]:
    """The job's classification settings as its training options keep them (none if not asked for)."""
    settings = classification_settings(
        request.compute_classification_metrics,
        request.classification_n_classes,
        request.classification_positive_class,
        request.classification_betas,
        validation_file=request.validation_file,
        method_type=method_type,
    )
    return {OPTIONS_KEY: settings.as_dict()} if settings is not None else {}


def create_job(request: JobRequest) -> JobRow:
    method = _resolve_method(request)
    start = _check_request(request)
    org = settings().organization
    row = JobRow(
        id=new_id("ftjob-"),
        created_at=int(time.time()),
        model=request.model,
        organization_id=f"org-{org}",
        training_file=request.training_file,
        validation_file=request.validation_file,
        status="validating_files",
        method=method,
        hyperparameters=dict(method[method["type"]]["hyperparameters"]),
        training_options=dict(request.training) | _classification_options(request, method["type"]),
        suffix=request.suffix,
        seed=request.seed if request.seed is not None else int(time.time_ns() % 2_147_483_647),
        job_metadata=request.metadata,
        integrations=request.integrations,
        result_files=[],
        project_id=owner(),
    )
    with session() as s:
        s.add(row)
    add_event(row.id, f"Created fine-tuning job: {row.id}")
    if start.id != request.model:  # the job keeps the name it was given; its model records the weights
        add_event(row.id, f"Model '{request.model}' is an alias: this job fine-tunes {start.id}")
    return row


def cancel_job(job_id: str) -> JobRow:
    """Mark a job cancelled; the worker sees it and stops the trainer within a second or two."""
    job = get_job(job_id)
    if job.status in TERMINAL_STATES or not update_job(
        job_id,
        only_if_status={"validating_files", "queued", "running", "pausing", "paused"},
        status="cancelled",
        finished_at=int(time.time()),
        estimated_finish=None,
    ):
        raise Conflict(f"Job {job_id} has already {get_job(job_id).status}; it cannot be cancelled.", param=None)
    add_event(job_id, "Job was cancelled")
    return get_job(job_id)


_PAUSE_REFUSALS = {
    "validating_files": "pause it once its files are validated and it is queued.",
    "pausing": "it stops at its next step.",
    "paused": "it is already paused.",
}
_RESUME_REFUSALS = {"pausing": "resume it once it is paused (at its next step)."}


def pause_job(job_id: str) -> JobRow:
    """Pause a job: a queued one at once; a running one at its trainer's next step boundary, after a
    checkpoint (`pausing`, then `paused` when the trainer has stopped; the worker passes the request on)."""
    if update_job(job_id, only_if_status={"queued"}, status="paused"):
        add_event(job_id, "Job paused before it started; resume it to queue it again")
    elif update_job(job_id, only_if_status={"running"}, status="pausing"):
        add_event(job_id, "Job pausing: training stops at the next step, after writing a checkpoint")
    else:
        status = get_job(job_id).status
        why = _PAUSE_REFUSALS.get(status, "only a queued or running job can be paused.")
        raise Conflict(f"Job {job_id} has status '{status}': {why}", param=None)
    return get_job(job_id)


def resume_job(job_id: str) -> JobRow:
    """Queue a paused job again; its trainer continues exactly from the checkpoint written at the pause."""
    if not update_job(job_id, only_if_status={"paused"}, status="queued"):
        status = get_job(job_id).status
        why = _RESUME_REFUSALS.get(status, "only a paused job can be resumed.")
        raise Conflict(f"Job {job_id} has status '{status}': {why}", param=None)
    add_event(job_id, "Job resumed: queued to continue from its last checkpoint")
    return get_job(job_id)


def fail_job(job_id: str, code: str, message: str, param: str | None = None) -> None:
    """Record a failure on a job still in progress, with an error event."""
    if update_job(
        job_id,
        only_if_status={"validating_files", "queued", *ACTIVE_STATES},
        status="failed",
        finished_at=int(time.time()),
        estimated_finish=None,
        error={"code": code, "message": message, "param": param},
    ):
        add_event(job_id, message, level="error")


def validate_job_files(job_id: str) -> bool:
    """The `validating_files` step: the same validator as `tunehouse data validate`.

    Fails the job naming the first problem's line and field; warnings and train/valid overlap become
    warning events. Returns whether the job may be queued.
    """
    from tunehouse.data.validate import validate_file

    job = get_job(job_id)
    formats = {"supervised": None, "dpo": "preference"}
    wanted = formats[job.method.get("type", "supervised")]
    for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
        if file_id is None:
            continue
        try:
            row = get_file(file_id, param=param)
        except TunehouseError as exc:
            fail_job(job_id, "file_not_found", exc.message, param)
            return False
        add_event(job_id, f"Validating {param.replace('_', ' ')}: {file_id} ({row.filename})")
        report = validate_file(file_path(row), format=wanted, min_examples=10 if param == "training_file" else 1)
        if not report.ok:
            first = report.errors[0]
            more = f" (and {len(report.errors) - 1} more problems)" if len(report.errors) > 1 else ""
            fail_job(
                job_id,
                f"invalid_{param}",
                f"Invalid file format for {param} {file_id} ({row.filename}): {first.message}. Fix: {first.fix}{more}",
                param,
            )
            return False
        if wanted is None and report.format == "preference":
            fail_job(
                job_id,
                f"invalid_{param}",
                f"{param} {file_id} holds preference (DPO) examples; use method type 'dpo' for them.",
                param,
            )
            return False
        for problem in report.warnings[:20]:
            add_event(job_id, f"{param}: {problem.message}", level="warn")
    if job.validation_file:
        from tunehouse.data.validate import overlap

        leak = overlap(file_path(get_file(job.training_file)), file_path(get_file(job.validation_file)))
        if leak.n_overlapping:
            add_event(
                job_id,
                f"{leak.n_overlapping} validation examples also appear in the training file; validation "
                "metrics will look better than they are. Keep the two sets mutually exclusive "
                "(`tunehouse data split`).",
                level="warn",
            )
    try:
        check_job_classes(job)
    except TunehouseError as exc:
        fail_job(job_id, exc.code or "invalid_validation_file", exc.message, exc.param)
        return False
    return update_job(job_id, only_if_status={"validating_files"}, status="queued")
