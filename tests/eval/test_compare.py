"""Scores per criterion and a classifier's metrics from generated answers, against hand-worked cases."""

from __future__ import annotations

import pytest

from tunehouse.eval.classification import ClassificationSettings
from tunehouse.eval.compare import (
    CriterionScore,
    answer_classification,
    criterion_scores,
    describe_change,
    describe_classification,
)

CRITERIA = [{"id": "Exact-1", "name": "Exact"}, {"id": "Fuzzy-2", "name": "Fuzzy"}]


def result(name: str, passed: bool, score: float) -> dict[str, object]:
    return {"name": name, "passed": passed, "score": score}


def test_criterion_scores_count_passes_and_average_scores_per_criterion() -> None:
    items = [
        [result("Exact-1", True, 1.0), result("Fuzzy-2", True, 1.0)],
        [result("Exact-1", False, 0.0), result("Fuzzy-2", True, 0.9)],
        [result("Exact-1", False, 0.0), result("Fuzzy-2", False, 0.2)],
        [],  # an item that could not be answered is graded by nothing
    ]
    exact, fuzzy = criterion_scores(CRITERIA, items)
    assert exact == CriterionScore("Exact", passed=1, graded=3, mean_score=pytest.approx(1 / 3))
    assert (fuzzy.passed, fuzzy.graded, fuzzy.mean_score) == (2, 3, pytest.approx(0.7))
    assert fuzzy.pass_rate == pytest.approx(2 / 3)


def test_describe_change_reads_before_and_after() -> None:
    before = [CriterionScore("Exact", 1, 4, 0.25)]
    after = [CriterionScore("Exact", 3, 4, 0.75)]
    assert describe_change(before, after) == "Exact 25% → 75% passed (mean score 0.25 → 0.75)"


def test_binary_answers_are_hard_predictions_and_nonsense_is_wrong() -> None:
    settings = ClassificationSettings(2, "positive")  # named without the labels' leading space
    expected = [" positive", " positive", " negative", " negative"]
    answers = [" positive", "I think so", " negative", " positive"]
    # truth 1,1,0,0; predicted 1, (nonsense: the other class) 0, 0, 1
    # accuracy 2/4; precision 1/2; recall 1/2; F1 0.5
    metrics = answer_classification(settings, expected, answers)
    assert metrics == {
        "classification/accuracy": 0.5,
        "classification/precision": 0.5,
        "classification/recall": 0.5,
        "classification/f1.0": 0.5,
    }


def test_a_single_class_among_the_labels_still_counts_nonsense_as_wrong() -> None:
    metrics = answer_classification(ClassificationSettings(2, " yes"), [" yes", " yes"], [" yes", "???"])
    assert metrics["classification/accuracy"] == 0.5 and metrics["classification/recall"] == 0.5


def test_multiclass_answers_give_accuracy_and_weighted_f1() -> None:
    expected = ["a", "b", "c", "a"]
    answers = ["a", "b", "x", "c"]  # right, right, nonsense (counted as the class after c: a), wrong
    # predicted a, b, a, c. Per class (support): a (2): P 1/2, R 1/2, F1 1/2; b (1): F1 1; c (1): F1 0
    metrics = answer_classification(ClassificationSettings(3), expected, answers)
    assert metrics["classification/accuracy"] == 0.5
    assert metrics["classification/weighted_f1_score"] == pytest.approx((2 * 0.5 + 1 * 1 + 1 * 0) / 4)


def test_describe_classification_skips_what_one_side_lacks() -> None:
    before = {"classification/accuracy": 0.25, "classification/f1.0": None}
    after = {"classification/accuracy": 0.75, "classification/f1.0": 0.8}
    assert describe_classification(before, after) == "classification/accuracy 0.25 → 0.75"
