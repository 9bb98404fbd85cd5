"""`auto` hyperparameters, resolved from the dataset the way OpenAI documents them.

- n_epochs: aim for 3 epochs; small datasets get more (so at least ~100 example-passes, at most 25
  epochs), very large ones fewer (at most ~25,000 example-passes, at least 1).
- batch_size: about 0.2 % of the examples, between 1 and 256 (OpenAI's legacy rule).
- learning_rate_multiplier: 1.0. The learning rate is `multiplier × base rate`, the base rate being
  2e-4 for LoRA and 2e-5 for full fine-tuning (the usual safe rates for 100M–8B models). An explicit
  multiplier must be finite, above 0 and at most 100.
- beta (DPO): 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tunehouse.errors import InvalidRequest

LORA_BASE_LEARNING_RATE = 2e-4
FULL_BASE_LEARNING_RATE = 2e-5
MAX_LEARNING_RATE_MULTIPLIER = 100.0
"""OpenAI caps no multiplier; tunehouse refuses rates over 100× the base, where training only diverges."""


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


HYPERPARAMETER_RANGES: dict[str, tuple[float, float, type]] = {
    "batch_size": (1, 256, int),
    "n_epochs": (1, 50, int),
    "learning_rate_multiplier": (0.0, MAX_LEARNING_RATE_MULTIPLIER, float),
    "beta": (0.0, 2.0, float),
}
"""(low, high, type) of each hyperparameter; OpenAI's ranges, with the multiplier capped by tunehouse."""
EXCLUSIVE_LOW = {"learning_rate_multiplier", "beta"}


def check_hyperparameters(values: dict[str, Any], param_prefix: str) -> None:
    """Reject unknown names, non-finite numbers and out-of-range values at job creation, naming the field."""
    for name, value in values.items():
        param = f"{param_prefix}.{name}"
        if name not in HYPERPARAMETER_RANGES:
            raise InvalidRequest(f"Unknown hyperparameter '{name}'.", param=param)
        if _is_auto(value):
            continue
        low, high, kind = HYPERPARAMETER_RANGES[name]
        ok_type = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if kind is int and ok_type and float(value).is_integer():
            value = int(value)
        if not ok_type or (kind is int and not isinstance(value, int)):
            expected = "an integer" if kind is int else "a finite number"
            raise InvalidRequest(
                f"Invalid value for {name}: expected 'auto' or {expected}, got {value!r}.", param=param
            )
        exclusive_low = name in EXCLUSIVE_LOW
        if (value <= low if exclusive_low else value < low) or value > high:
            bound = f"greater than {low:g}" if exclusive_low else f"at least {low:g}"
            raise InvalidRequest(
                f"Invalid value for {name}: {values[name]!r}; it must be {bound} and at most {high:g}.", param=param
            )


def resolve_hyperparameters(requested: dict[str, Any], n_examples: int, method: str) -> ResolvedHyperparameters:
    """Replace every `auto` (or missing) value with its rule's value for this dataset."""
    n_epochs: Any = requested.get("n_epochs")
    batch_size: Any = requested.get("batch_size")
    multiplier: Any = requested.get("learning_rate_multiplier")
    beta: Any = requested.get("beta")
    return ResolvedHyperparameters(
        n_epochs=auto_n_epochs(n_examples) if _is_auto(n_epochs) else int(n_epochs),
        batch_size=auto_batch_size(n_examples) if _is_auto(batch_size) else int(batch_size),
        learning_rate_multiplier=1.0 if _is_auto(multiplier) else float(multiplier),
        beta=(0.1 if _is_auto(beta) else float(beta)) if method == "dpo" else None,
    )
