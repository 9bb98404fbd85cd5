"""Aggregate scores of a run, per testing criterion, from its output items' results (wire shape), so
the job's summary event and `tunehouse eval` report a comparison the same way; and, for a classifier,
the classification metrics of the answers a model generated."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tunehouse.eval.classification import ClassificationSettings, classification_metrics, find_positive_class

OTHER_CLASS = "(another class)"
RANKING_METRICS = ("classification/auroc", "classification/auprc")


@dataclass(frozen=True)
class CriterionScore:
    name: str
    passed: int
    graded: int
    mean_score: float

    @property
    def pass_rate(self) -> float:
        return self.passed / self.graded if self.graded else 0.0


def criterion_scores(
    criteria: list[dict[str, Any]], item_results: Iterable[list[dict[str, Any]]]
) -> list[CriterionScore]:
    """Per criterion (in the eval's order): items passed, items graded, mean score.

    `item_results` holds each output item's `results`; a result is matched to its criterion by id.
    """
    sums = {c["id"]: [0, 0, 0.0] for c in criteria}
    for results in item_results:
        for result in results:
            tally = sums.get(result["name"])
            if tally is not None:
                tally[0] += int(bool(result["passed"]))
                tally[1] += 1
                tally[2] += float(result["score"])
    return [
        CriterionScore(
            c["name"], int(sums[c["id"]][0]), int(sums[c["id"]][1]), sums[c["id"]][2] / max(1, sums[c["id"]][1])
        )
        for c in criteria
    ]


def describe_change(before: list[CriterionScore], after: list[CriterionScore]) -> str:
    """`Exact match 10% → 60%, Similarity (fuzzy_match) mean 0.42 → 0.87` for two runs of one eval."""
    parts = []
    for old, new in zip(before, after, strict=True):
        parts.append(
            f"{new.name} {old.pass_rate:.0%} → {new.pass_rate:.0%} passed "
            f"(mean score {old.mean_score:.2f} → {new.mean_score:.2f})"
        )
    return "; ".join(parts)


def answer_classification(
    settings: ClassificationSettings, expected: list[str], answers: list[str]
) -> dict[str, float | None]:
    """The `classification/*` metrics of generated answers against the expected labels.

    Each answer is a hard prediction: the class it equals (exactly, else up to surrounding
    whitespace); an answer that is none of the classes is a wrong prediction. So a base model and its
    fine-tune are scored alike. Hard predictions rank nothing, so AUROC and AUPRC are left out; the
    fine-tune's own per-epoch metrics, from its next-token probabilities, are in the job's result file.

    >>> settings = ClassificationSettings(2, "positive")
    >>> metrics = answer_classification(settings, [" positive", " negative"], ["positive", "maybe"])
    >>> metrics["classification/accuracy"], metrics["classification/f1.0"]
    (0.5, 0.6666666666666666)
    """
    seen = sorted(set(expected))
    positive = None
    if settings.binary and settings.positive_class is not None:
        positive = find_positive_class(seen, settings.positive_class) or settings.positive_class
    classes = sorted(set(seen) | ({positive} if positive else set()))
    if len(classes) < 2:  # one class among these labels: a wrong answer still needs another to be
        classes.append(OTHER_CLASS)
    labels, probabilities = [], []
    for truth, answer in zip(expected, answers, strict=True):
        label = classes.index(truth)
        predicted = find_positive_class(classes, answer) or classes[(label + 1) % len(classes)]
        labels.append(label)
        probabilities.append([1.0 if c == predicted else 0.0 for c in classes])
    scored = ClassificationSettings(2, positive, settings.betas) if positive else ClassificationSettings(len(classes))
    metrics = classification_metrics(scored, classes, labels, probabilities)
    return {k: v for k, v in metrics.items() if k not in RANKING_METRICS}


def describe_classification(before: dict[str, float | None], after: dict[str, float | None]) -> str:
    """`classification/accuracy 0.50 → 0.92, classification/f1.0 0.40 → 0.91` for two models' answers."""
    return ", ".join(
        f"{name} {before[name]:.2f} → {after[name]:.2f}"
        for name in after
        if before.get(name) is not None and after[name] is not None
    )
