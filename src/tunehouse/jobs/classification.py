"""A job's classification metrics (the legacy `compute_classification_metrics` and its options).

Both job APIs take `compute_classification_metrics`, `classification_n_classes`,
`classification_positive_class` and `classification_betas` (the 0.x SDK sends them to `/fine-tunes`,
the current one through `extra_body`). `classification_settings` checks them when the job is created
and the job keeps them in its training options; `job_classes` checks them against the classes the
job's files hold (while the files are validated, and again when training starts); and
`ClassificationReporter` turns the class probabilities the trainer reports at the end of every epoch
into the `classification/*` metrics of the job's events, its trackers and its result file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tunehouse.data.reader import iter_examples
from tunehouse.errors import DataValidationError, InvalidRequest
from tunehouse.eval.classification import ClassificationSettings, class_set, classification_metrics, find_positive_class
from tunehouse.store.files import file_path, get_file
from tunehouse.store.schema import JobRow
from tunehouse.train.classify import SCORES_KEY
from tunehouse.train.reporting import Reporter

OPTIONS_KEY = "classification"
"""Where a job's classification settings sit in its `training_options`."""
MAX_BETAS = 16


def classification_settings(
    compute_classification_metrics: bool | None,
    classification_n_classes: int | None,
    classification_positive_class: str | None,
    classification_betas: list[float] | None,
    *,
    validation_file: str | None,
    method_type: str,
) -> ClassificationSettings | None:
    """The job's settings from the four request fields, or None when it did not ask for
    classification metrics (the other three are then ignored, as the legacy API did: its CLI always
    sends the flag, false by default). Raises InvalidRequest naming the field that cannot work."""
    if not compute_classification_metrics:
        return None
    if validation_file is None:
        raise InvalidRequest(
            "compute_classification_metrics needs a validation_file: the metrics are computed on the "
            "validation set at the end of every epoch.",
            param="validation_file",
        )
    if method_type != "supervised":
        raise InvalidRequest(
            f"compute_classification_metrics applies to supervised fine-tuning, not to method type '{method_type}'.",
            param="compute_classification_metrics",
        )
    n_classes = classification_n_classes
    if n_classes is None or n_classes < 2:
        raise InvalidRequest(
            "compute_classification_metrics needs classification_n_classes: the number of classes (distinct "
            f"completions), at least 2; got {n_classes}.",
            param="classification_n_classes",
        )
    positive = classification_positive_class
    betas = classification_betas
    if n_classes == 2:
        if not positive:
            raise InvalidRequest(
                "A binary classification (classification_n_classes 2) needs classification_positive_class: the "
                "completion that is the positive class, e.g. ' positive'.",
                param="classification_positive_class",
            )
        if betas is not None and not (0 < len(betas) <= MAX_BETAS and all(math.isfinite(b) and b > 0 for b in betas)):
            raise InvalidRequest(
                f"classification_betas must be 1 to {MAX_BETAS} positive numbers, e.g. [0.5, 1, 2].",
                param="classification_betas",
            )
        return ClassificationSettings(2, positive, tuple(dict.fromkeys(float(b) for b in betas or (1.0,))))
    for field, value in (("classification_positive_class", positive), ("classification_betas", betas)):
        if value is not None:
            raise InvalidRequest(
                f"{field} applies to binary classification (classification_n_classes 2); this job has "
                f"{n_classes} classes, for which accuracy and weighted F1 are reported.",
                param=field,
            )
    return ClassificationSettings(n_classes)


def job_settings(job: JobRow) -> ClassificationSettings | None:
    """The classification settings a job was created with, or None."""
    stored = (job.training_options or {}).get(OPTIONS_KEY)
    return ClassificationSettings.from_dict(stored) if stored else None


def _examples(file_id: str) -> list[dict[str, Any]]:
    return [example for _, example in iter_examples(file_path(get_file(file_id)))]


def job_classes(
    settings: ClassificationSettings, train_examples: list[dict[str, Any]], valid_examples: list[dict[str, Any]]
) -> tuple[list[str], ClassificationSettings]:
    """The classes the job's examples hold, and its settings with the positive class named as the data
    names it. Raises DataValidationError, naming the setting, when they do not agree with the data."""
    classes = class_set([*train_examples, *valid_examples])
    if len(classes) != settings.n_classes:
        shown = ", ".join(repr(c) for c in classes[:10]) + (", …" if len(classes) > 10 else "")
        raise DataValidationError(
            f"classification_n_classes is {settings.n_classes}, but the training and validation files hold "
            f"{len(classes)} distinct labels ({shown}). Each distinct completion (or final assistant reply) is "
            "a class: set classification_n_classes to their number, or make the labels agree.",
            param="classification_n_classes",
            code="invalid_validation_file",
        )
    if settings.positive_class is None:
        return classes, settings
    positive = find_positive_class(classes, settings.positive_class)
    if positive is None:
        raise DataValidationError(
            f"classification_positive_class {settings.positive_class!r} is none of the classes the files hold: "
            f"{', '.join(repr(c) for c in classes)}.",
            param="classification_positive_class",
            code="invalid_validation_file",
        )
    return classes, ClassificationSettings(settings.n_classes, positive, settings.betas)


def check_job_classes(job: JobRow) -> None:
    """`job_classes` on the job's files, for the validation step: raises DataValidationError."""
    settings = job_settings(job)
    if settings is not None and job.validation_file is not None:
        job_classes(settings, _examples(job.training_file), _examples(job.validation_file))


def with_metrics(settings: ClassificationSettings, classes: list[str], data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a step's metrics) with the trainer's class scores, where it has them, replaced by the
    `classification/*` metrics they give."""
    scores = data.get(SCORES_KEY)
    if scores is None:
        return data
    rest = {k: v for k, v in data.items() if k != SCORES_KEY}
    return {**rest, **classification_metrics(settings, classes, scores["labels"], scores["probabilities"])}


class ClassificationReporter:
    """A `Reporter` that computes the classification metrics of the steps the trainer scored the
    validation set at and passes them on in place of the scores. The step's metrics event also keeps
    the scores themselves (`classification_predictions`: the classes, each example's true class and
    class probabilities), so the metrics can be recomputed, or at another threshold."""

    def __init__(self, inner: Reporter, settings: ClassificationSettings, classes: list[str]) -> None:
        self.inner = inner
        self.settings = settings
        self.classes = classes

    def message(self, text: str, level: str = "info") -> None:
        self.inner.message(text, level)

    def metrics(self, step: int, total_steps: int, data: dict[str, Any]) -> None:
        scores = data.get(SCORES_KEY)
        if scores is None:
            self.inner.metrics(step, total_steps, data)
            return
        values = with_metrics(self.settings, self.classes, data)
        summary = ", ".join(
            f"{name.removeprefix('classification/')}={value:.3f}"
            for name, value in values.items()
            if name.startswith("classification/") and value is not None
        )
        self.inner.message(f"Step {step}/{total_steps}: classification on the validation set: {summary}")
        predictions = {"classes": self.classes, **scores}
        self.inner.metrics(step, total_steps, {**values, "classification_predictions": predictions})

    def checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None:
        self.inner.checkpoint(step, path, with_metrics(self.settings, self.classes, metrics))

    def progress(self, step: int, total_steps: int, seconds_per_step: float) -> None:
        self.inner.progress(step, total_steps, seconds_per_step)
