"""Classification metrics as OpenAI's legacy fine-tunes computed them (`compute_classification_metrics`).

At the end of every epoch the trainer scores each validation example (`train/classify.py`): the
probability of every class label after the prompt, normalised over the classes. These functions turn
those scores into the legacy results file's columns, computed by scikit-learn: a binary job (the
positive class predicted where its probability is at least 0.5) reports `classification/accuracy`,
`/precision`, `/recall`, `/auroc`, `/auprc` and `/f{beta}` for each beta (`f1.0` by default); a
multiclass job (the most probable class predicted) reports `classification/accuracy` and
`classification/weighted_f1_score`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    fbeta_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from tunehouse.train.classify import label_of

THRESHOLD = 0.5
"""The legacy API's fixed decision threshold on the positive class's probability."""
DEFAULT_BETAS = (1.0,)


@dataclass(frozen=True)
class ClassificationSettings:
    """What a job asked for: how many classes, which is positive (binary) and the F-beta betas."""

    n_classes: int
    positive_class: str | None = None
    betas: tuple[float, ...] = DEFAULT_BETAS

    @property
    def binary(self) -> bool:
        return self.n_classes == 2

    def columns(self) -> list[str]:
        """The result file's classification columns, in the legacy file's order."""
        if not self.binary:
            return ["classification/accuracy", "classification/weighted_f1_score"]
        names = ["accuracy", "precision", "recall", "auroc", "auprc"] + [beta_name(b) for b in self.betas]
        return [f"classification/{name}" for name in names]

    def as_dict(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "positive_class": self.positive_class, "betas": list(self.betas)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClassificationSettings:
        return cls(values["n_classes"], values.get("positive_class"), tuple(values.get("betas") or DEFAULT_BETAS))


def beta_name(beta: float) -> str:
    """`f1.0`, `f0.5`, `f2.0`: the legacy column's name for F-beta, the beta written as a float.

    >>> beta_name(1), beta_name(0.6)
    ('f1.0', 'f0.6')
    """
    return f"f{float(beta)}"


def class_set(examples: Iterable[dict[str, Any]]) -> list[str]:
    """The classes of a classification dataset: its distinct labels (completions, or the final
    assistant replies of chat examples), sorted.

    >>> class_set([{"prompt": "a", "completion": " no"}, {"prompt": "b", "completion": " yes"},
    ...            {"prompt": "c", "completion": " no"}])
    [' no', ' yes']
    """
    return sorted({label_of(example) for example in examples})


def find_positive_class(classes: Sequence[str], positive_class: str) -> str | None:
    """The class `positive_class` names: the same text, else the one class equal to it up to leading
    and trailing whitespace (seed 003 names `"positive"` for completions `" positive"`); None if none.

    >>> find_positive_class([" negative", " positive"], "positive")
    ' positive'
    """
    if positive_class in classes:
        return positive_class
    loose = [c for c in classes if c.strip() == positive_class.strip()]
    return loose[0] if len(loose) == 1 else None


def _defined(value: float) -> float | None:
    """A finite metric as a float; None where scikit-learn found it undefined (NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def classification_metrics(
    settings: ClassificationSettings,
    classes: Sequence[str],
    labels: Sequence[int],
    probabilities: Sequence[Sequence[float]],
) -> dict[str, float | None]:
    """The `classification/*` metrics of one scoring of the validation set.

    `labels[i]` is example i's true class (an index into `classes`), `probabilities[i][c]` the
    probability the model gave class c, normalised over the classes. A metric the data leaves
    undefined (AUROC or AUPRC without both classes among the labels) is None.
    """
    if not labels:
        return dict.fromkeys(settings.columns())
    if not settings.binary:
        predicted = [max(range(len(p)), key=p.__getitem__) for p in probabilities]
        return {
            "classification/accuracy": float(accuracy_score(labels, predicted)),
            "classification/weighted_f1_score": float(f1_score(labels, predicted, average="weighted", zero_division=0)),
        }
    if settings.positive_class is None:
        raise ValueError("a binary classification needs its positive class")
    positive = classes.index(settings.positive_class)
    truth = [int(label == positive) for label in labels]
    scores = [p[positive] for p in probabilities]
    predicted = [int(score >= THRESHOLD) for score in scores]
    both_present = len(set(truth)) == 2
    metrics: dict[str, float | None] = {
        "classification/accuracy": float(accuracy_score(truth, predicted)),
        "classification/precision": float(precision_score(truth, predicted, zero_division=0)),
        "classification/recall": float(recall_score(truth, predicted, zero_division=0)),
        "classification/auroc": None,
        "classification/auprc": None,
    }
    if both_present:
        with warnings.catch_warnings():  # undefined cases are None, not a warning in the trainer's log
            warnings.simplefilter("ignore")
            metrics["classification/auroc"] = _defined(roc_auc_score(truth, scores))
            metrics["classification/auprc"] = _defined(average_precision_score(truth, scores))
    for beta in settings.betas:
        metrics[f"classification/{beta_name(beta)}"] = float(fbeta_score(truth, predicted, beta=beta, zero_division=0))
    return metrics
