"""Classification metrics against cases worked by hand: what the legacy results file's
`classification/*` columns hold for a scoring of the validation set."""

from __future__ import annotations

import pytest

from tunehouse.eval.classification import (
    ClassificationSettings,
    beta_name,
    class_set,
    classification_metrics,
    find_positive_class,
)

BINARY = [" negative", " positive"]


def rows(positive_probabilities: list[float]) -> list[list[float]]:
    """Class probabilities of a binary scoring, from p(positive): `[p(negative), p(positive)]`."""
    return [[1 - p, p] for p in positive_probabilities]


def test_binary_metrics_at_threshold_one_half_worked_by_hand() -> None:
    # truth:     pos  pos  pos  pos  neg  neg
    # p(pos):    0.9  0.8  0.3  0.2  0.6  0.1
    # predicted: pos  pos  neg  neg  pos  neg     (p >= 0.5)
    # TP = 2, FN = 2, FP = 1, TN = 1
    # accuracy  = (TP + TN) / 6 = 3/6
    # precision = TP / (TP + FP) = 2/3;  recall = TP / (TP + FN) = 2/4
    # F-beta = (1 + b²) P R / (b² P + R):
    #   F1   = 2 (2/3)(1/2) / (2/3 + 1/2)          = 4/7
    #   F0.5 = 1.25 (1/3) / (0.25 (2/3) + 1/2)     = 5/8
    #   F2   = 5 (1/3) / (4 (2/3) + 1/2)           = 10/19
    # AUROC: the share of (positive, negative) pairs ranked right. Positives 0.9, 0.8, 0.3, 0.2
    #   against negatives 0.6, 0.1: 0.9 and 0.8 beat both, 0.3 and 0.2 beat only 0.1 → 6/8.
    # AUPRC (average precision, Σ ΔR·P down the ranking 0.9+ 0.8+ 0.6- 0.3+ 0.2+ 0.1-):
    #   R rises by 1/4 at 0.9 (P 1), 0.8 (P 1), 0.3 (P 3/4), 0.2 (P 4/5)
    #   → (1 + 1 + 3/4 + 4/5) / 4 = 0.8875
    settings = ClassificationSettings(2, " positive", betas=(1.0, 0.5, 2.0))
    metrics = classification_metrics(settings, BINARY, [1, 1, 1, 1, 0, 0], rows([0.9, 0.8, 0.3, 0.2, 0.6, 0.1]))
    assert list(metrics) == settings.columns()
    assert metrics == {
        "classification/accuracy": pytest.approx(3 / 6),
        "classification/precision": pytest.approx(2 / 3),
        "classification/recall": pytest.approx(2 / 4),
        "classification/auroc": pytest.approx(6 / 8),
        "classification/auprc": pytest.approx(0.8875),
        "classification/f1.0": pytest.approx(4 / 7),
        "classification/f0.5": pytest.approx(5 / 8),
        "classification/f2.0": pytest.approx(10 / 19),
    }


def test_the_positive_class_may_be_either_column_and_exactly_one_half_counts_as_positive() -> None:
    # " negative" is positive here: its probability is the first column.
    # truth: pos neg; p(pos) 0.5 0.5 → both predicted positive: TP 1, FP 1 → precision 1/2, recall 1
    settings = ClassificationSettings(2, " negative")
    metrics = classification_metrics(settings, BINARY, [0, 1], [[0.5, 0.5], [0.5, 0.5]])
    assert metrics["classification/accuracy"] == pytest.approx(1 / 2)
    assert metrics["classification/precision"] == pytest.approx(1 / 2)
    assert metrics["classification/recall"] == pytest.approx(1.0)
    assert metrics["classification/auroc"] == pytest.approx(1 / 2)  # a tie is half a right ranking


def test_multiclass_accuracy_and_support_weighted_f1_worked_by_hand() -> None:
    # truth:     a a b b c c
    # predicted: a b b b c a    (the most probable class)
    # accuracy = 4/6
    # a: TP 1, FP 1 (the last c), FN 1 → P 1/2, R 1/2, F1 1/2
    # b: TP 2, FP 1 (the second a), FN 0 → P 2/3, R 1, F1 4/5
    # c: TP 1, FP 0, FN 1 → P 1, R 1/2, F1 2/3
    # weighted by support (2 each): (1/2 + 4/5 + 2/3) / 3 = 59/90
    probabilities = [
        [0.7, 0.2, 0.1],
        [0.3, 0.6, 0.1],
        [0.1, 0.8, 0.1],
        [0.2, 0.5, 0.3],
        [0.1, 0.1, 0.8],
        [0.5, 0.1, 0.4],
    ]
    metrics = classification_metrics(ClassificationSettings(3), ["a", "b", "c"], [0, 0, 1, 1, 2, 2], probabilities)
    assert metrics == {
        "classification/accuracy": pytest.approx(4 / 6),
        "classification/weighted_f1_score": pytest.approx(59 / 90),
    }


def test_rankings_are_undefined_without_both_classes_and_nothing_is_scored_on_no_examples() -> None:
    settings = ClassificationSettings(2, " positive")
    only_positives = classification_metrics(settings, BINARY, [1, 1], rows([0.9, 0.4]))
    assert only_positives["classification/auroc"] is None
    assert only_positives["classification/auprc"] is None
    assert only_positives["classification/recall"] == pytest.approx(1 / 2)
    assert classification_metrics(settings, BINARY, [], []) == dict.fromkeys(settings.columns())


def test_columns_are_named_as_in_the_legacy_results_file() -> None:
    assert ClassificationSettings(2, " positive").columns() == [
        "classification/accuracy",
        "classification/precision",
        "classification/recall",
        "classification/auroc",
        "classification/auprc",
        "classification/f1.0",
    ]
    assert ClassificationSettings(7).columns() == ["classification/accuracy", "classification/weighted_f1_score"]
    assert [beta_name(b) for b in (0.6, 1, 1.5, 2)] == ["f0.6", "f1.0", "f1.5", "f2.0"]


def test_classes_are_the_distinct_labels_of_either_format() -> None:
    examples = [
        {"prompt": "Loved it\n\n###\n\n", "completion": " positive"},
        {"prompt": "Hated it\n\n###\n\n", "completion": " negative"},
        {"messages": [{"role": "user", "content": "Meh"}, {"role": "assistant", "content": " positive"}]},
    ]
    assert class_set(examples) == [" negative", " positive"]


def test_the_positive_class_is_found_up_to_surrounding_whitespace_when_unambiguous() -> None:
    assert find_positive_class(BINARY, " positive") == " positive"
    assert find_positive_class(BINARY, "positive") == " positive"  # seed 003's spelling
    assert find_positive_class(BINARY, "neutral") is None
    assert find_positive_class(["yes", " yes"], "yes ") is None
