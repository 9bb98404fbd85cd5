"""The reporter that fans the trainer's reports out to the job's trackers, and which trackers a job gets."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

from tunehouse.errors import TunehouseError
from tunehouse.jobs.records import add_event, get_job
from tunehouse.jobs.tracking.base import MLFLOW_URI_ENV, JobContext, Tracker, numeric_metrics
from tunehouse.jobs.tracking.mlflow_run import MlflowTracker
from tunehouse.jobs.tracking.wandb_run import WandbTracker
from tunehouse.store.schema import JobRow
from tunehouse.train.reporting import Reporter


def failure_reason(exc: Exception) -> str:
    """A tracker's failure in a few words for the job's events: tunehouse's own message, else the
    exception's type and HTTP status, never the remote service's text (it may echo anything back)."""
    if isinstance(exc, TunehouseError | ValueError):
        return f"{type(exc).__name__}: {exc}"[:300]
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None) or getattr(exc, "status_code", None)
    return type(exc).__name__ + (f", HTTP {status}" if status else "")


class TrackedReporter:
    """A `Reporter` that forwards to the job's reporter first, then to each live tracker."""

    def __init__(self, inner: Reporter, context: JobContext, trackers: list[Tracker]) -> None:
        self.inner = inner
        self.context = context
        self.trackers: list[Tracker] = []
        self._closed = False
        for tracker in trackers:
            if self._guard(tracker, "start", tracker.start, context, appended=False):
                self.trackers.append(tracker)
        if self.trackers:
            atexit.register(self.abort)  # a crash or a cancel still closes the runs, as failed

    def _guard(self, tracker: Tracker, what: str, call: Any, *args: Any, appended: bool = True) -> bool:
        try:
            call(*args)
            return True
        except Exception as exc:  # a tracker must never take training down with it
            add_event(
                self.context.job_id,
                f"{tracker.label} tracking failed ({what}: {failure_reason(exc)}); "
                f"it is turned off for this job, training continues.",
                level="warn",
            )
            if appended and tracker in self.trackers:
                self.trackers.remove(tracker)
            with contextlib.suppress(Exception):
                tracker.abort()
            return False

    # Reporter protocol -------------------------------------------------------------------------
    def message(self, text: str, level: str = "info") -> None:
        self.inner.message(text, level)

    def metrics(self, step: int, total_steps: int, data: dict[str, Any]) -> None:
        self.inner.metrics(step, total_steps, data)
        values = numeric_metrics(data)
        values["epoch"] = self.context.epoch(step, total_steps)
        for tracker in list(self.trackers):
            self._guard(tracker, "metrics", tracker.metrics, step, values)

    def checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None:
        self.inner.checkpoint(step, path, metrics)
        for tracker in list(self.trackers):
            self._guard(tracker, "checkpoint", tracker.checkpoint, step, str(path), metrics)

    def progress(self, step: int, total_steps: int, seconds_per_step: float) -> None:
        self.inner.progress(step, total_steps, seconds_per_step)

    # End of training ---------------------------------------------------------------------------
    def finish(self, result_csv: bytes, model_dir: Path, fine_tuned_model: str) -> None:
        for tracker in list(self.trackers):
            self._guard(tracker, "finish", tracker.finish, result_csv, Path(model_dir), fine_tuned_model)
        self.trackers = []
        self._closed = True

    def abort(self) -> None:  # noqa: B027 - optional hook
        if self._closed:
            return
        self._closed = True
        for tracker in self.trackers:
            with contextlib.suppress(Exception):
                tracker.abort()
        self.trackers = []


def job_context(job: JobRow, trainer_config: Any = None) -> JobContext:
    """Config to log: the job as the API shows it (resolved hyperparameters) plus the trainer's knobs."""
    hyperparameters = dict(job.hyperparameters or {})
    config: dict[str, Any] = {
        "job_id": job.id,
        "model": job.model,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "hyperparameters": hyperparameters,
        "method": job.method,
        "seed": job.seed,
        "suffix": job.suffix,
        "training": job.training_options or {},
        "metadata": job.job_metadata or {},
    }
    if dataclasses.is_dataclass(trainer_config) and not isinstance(trainer_config, type):
        config["trainer"] = {
            k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(trainer_config).items()
        }
    n_epochs = hyperparameters.get("n_epochs")
    return JobContext(
        job_id=job.id,
        base_model=job.model,
        n_epochs=n_epochs if isinstance(n_epochs, int) else 1,
        config=config,
        tags=["tunehouse/finetune", f"tunehouse/{job.model}", f"tunehouse/{job.id}"],
    )


def trackers_for(job: JobRow) -> list[Tracker]:
    """W&B for each `wandb` integration; MLflow for an `mlflow` integration or when the server sets
    TUNEHOUSE_MLFLOW_TRACKING_URI (then every job is logged there)."""
    trackers: list[Tracker] = []
    integrations = job.integrations or []
    for integration in integrations:
        if integration.get("type") == "wandb":
            trackers.append(WandbTracker(integration.get("wandb") or {}))
    mlflow_entries = [i.get("mlflow") or {} for i in integrations if i.get("type") == "mlflow"]
    if mlflow_entries or os.environ.get(MLFLOW_URI_ENV):
        trackers.append(MlflowTracker(mlflow_entries[0] if mlflow_entries else {}))
    return trackers


def attach_trackers(reporter: Reporter, job: JobRow, trainer_config: Any = None) -> TrackedReporter:
    """Wrap the job's reporter with the trackers it asked for (none: a plain pass-through)."""
    fresh = get_job(job.id)  # hyperparameters were resolved after `job` was read
    return TrackedReporter(reporter, job_context(fresh, trainer_config), trackers_for(fresh))
