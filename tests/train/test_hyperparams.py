"""`auto` hyperparameters follow OpenAI's documented rules; explicit values are range-checked."""

from __future__ import annotations

import pytest

from tunehouse.errors import InvalidRequest
from tunehouse.train.hyperparams import (
    auto_batch_size,
    auto_n_epochs,
    check_hyperparameters,
    resolve_hyperparameters,
)


@pytest.mark.parametrize(("n", "epochs"), [(5, 20), (10, 10), (33, 3), (40, 3), (8000, 3), (9000, 2), (30000, 1)])
def test_auto_epochs(n: int, epochs: int) -> None:
    assert auto_n_epochs(n) == epochs


@pytest.mark.parametrize(("n", "batch"), [(10, 1), (500, 1), (501, 2), (10_000, 20), (1_000_000, 256)])
def test_auto_batch_size(n: int, batch: int) -> None:
    assert auto_batch_size(n) == batch


def test_resolve_keeps_explicit_values_and_fills_auto() -> None:
    resolved = resolve_hyperparameters({"n_epochs": 2, "batch_size": "auto"}, 100, "supervised")
    assert resolved.as_dict() == {"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 1.0}
    assert resolve_hyperparameters({}, 100, "dpo").beta == 0.1


@pytest.mark.parametrize(
    "values",
    [
        {"n_epochs": 51},
        {"n_epochs": 1.5},
        {"batch_size": 0},
        {"batch_size": True},
        {"learning_rate_multiplier": 0},
        {"learning_rate_multiplier": float("nan")},
        {"learning_rate_multiplier": float("inf")},
        {"learning_rate_multiplier": float("-inf")},
        {"learning_rate_multiplier": 1e308},
        {"learning_rate_multiplier": 100.5},
        {"n_epochs": float("inf")},
        {"batch_size": float("nan")},
        {"beta": float("nan")},
        {"beta": 2.5},
        {"warmup": 3},
    ],
)
def test_out_of_range_values_are_rejected_with_the_field(values: dict) -> None:
    with pytest.raises(InvalidRequest) as err:
        check_hyperparameters(values, "method.supervised.hyperparameters")
    assert err.value.param == f"method.supervised.hyperparameters.{next(iter(values))}"


def test_integral_floats_are_accepted_for_integer_fields() -> None:
    check_hyperparameters({"n_epochs": 3.0, "batch_size": "auto"}, "hyperparameters")


def test_the_multiplier_cap_is_in_the_message() -> None:
    check_hyperparameters({"learning_rate_multiplier": 100}, "hyperparameters")
    with pytest.raises(InvalidRequest) as err:
        check_hyperparameters({"learning_rate_multiplier": 1e308}, "hyperparameters")
    assert "greater than 0 and at most 100" in err.value.message
