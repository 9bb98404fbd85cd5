"""`auto` hyperparameters, resolved from the dataset the way OpenAI documents them.

- n_epochs: aim for 3 epochs; small datasets get more (so at least ~100 example-passes, at most 25
  epochs), very large ones fewer (at most ~25,000 example-passes, at least 1).
- batch_size: about 0.2 % of the examples, between 1 and 256 (OpenAI's legacy rule).
- learning_rate_multiplier: 1.0. The learning rate is `multiplier × base rate`, the base rate being
  2e-4 for LoRA and 2e-5 for full fine-tuning (the usual safe rates for 100M–8B models).
- beta (DPO): 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tunehouse.errors import InvalidRequest

LORA_BASE_LEARNING_RATE = 2e-4
FULL_BASE_LEARNING_RATE = 2e-5


def auto_n_epochs(n_examples: int) -> int:
    target = 3
    if n_examples <= 0:
        return target
    if target * n_examples < 100:
        return min(25, 100 // n_examples)
    if target * n_examples > 25_000:
        return max(1, 25_000 // n_examples)
    return target


def auto_batch_size(n_examples: int) -> int:
    return max(1, min(256, math.ceil(n_examples * 0.002)))


@dataclass(frozen=True)
class ResolvedHyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float | None = None

    def as_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
            "n_epochs": self.n_epochs,
        }
        if self.beta is not None:
            values["beta"] = self.beta
        return values


def _is_auto(value: Any) -> bool:
    return value is None or value == "auto"


def check_hyperparameters(values: dict[str, Any], param_prefix: str) -> None:
    """Reject out-of-range values at job creation, naming the field (OpenAI's ranges)."""
    ranges = {
        "batch_size": (1, 256, int),
        "n_epochs": (1, 50, int),
        "learning_rate_multiplier": (0.0, None, float),
        "beta": (0.0, 2.0, float),
    }
    for name, value in values.items():
        if name not in ranges:
            raise InvalidRequest(f"Unknown hyperparameter '{name}'.", param=f"{param_prefix}.{name}")
        if _is_auto(value):
            continue
        low, high, kind = ranges[name]
        ok_type = isinstance(value, int | float) and not isinstance(value, bool)
        if kind is int and ok_type and float(value).is_integer():
            value = int(value)
        if not ok_type or (kind is int and not isinstance(value, int)):
            raise InvalidRequest(
                f"Invalid value for {name}: expected 'auto' or {'an integer' if kind is int else 'a number'}, "
                f"got {value!r}.",
                param=f"{param_prefix}.{name}",
            )
        exclusive_low = name in ("learning_rate_multiplier", "beta")
        if (value <= low if exclusive_low else value < low) or (high is not None and value > high):
            bound = f"greater than {low}" if exclusive_low else f"at least {low}"
            upper = f" and at most {high}" if high is not None else ""
            raise InvalidRequest(
                f"Invalid value for {name}: {value!r}; it must be {bound}{upper}.",
                param=f"{param_prefix}.{name}",
            )


def resolve_hyperparameters(requested: dict[str, Any], n_examples: int, method: str) -> ResolvedHyperparameters:
    """Replace every `auto` (or missing) value with its rule's value for this dataset."""
    n_epochs = requested.get("n_epochs")
    batch_size = requested.get("batch_size")
    multiplier = requested.get("learning_rate_multiplier")
    beta = requested.get("beta")
    return ResolvedHyperparameters(
        n_epochs=auto_n_epochs(n_examples) if _is_auto(n_epochs) else int(n_epochs),
        batch_size=auto_batch_size(n_examples) if _is_auto(batch_size) else int(batch_size),
        learning_rate_multiplier=1.0 if _is_auto(multiplier) else float(multiplier),
        beta=(0.1 if _is_auto(beta) else float(beta)) if method == "dpo" else None,
    )
