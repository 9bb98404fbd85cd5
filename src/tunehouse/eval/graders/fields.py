"""Checks of a grader's fields that name the exact path of what is wrong (`grader.graders.a.input`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from tunehouse.errors import InvalidRequest


def require_object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param} must be an object, got {type(value).__name__}.", param=param)
    return value


def check_keys(obj: dict[str, Any], param: str, *, required: Iterable[str], optional: Iterable[str] = ()) -> None:
    """A 400 for a missing required field or one the grader type does not have (a typo, most likely)."""
    required = tuple(required)
    known = set(required) | set(optional)
    for key in required:
        if obj.get(key) is None:
            raise InvalidRequest(f"Missing required parameter: '{param}.{key}'.", param=f"{param}.{key}")
    for key in obj:
        if key not in known:
            raise InvalidRequest(
                f"Unknown parameter: '{param}.{key}'. A {obj.get('type')} grader takes {', '.join(sorted(known))}.",
                param=f"{param}.{key}",
            )


def require_str(obj: dict[str, Any], key: str, param: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"{param}.{key} must be a string, got {type(value).__name__}.", param=f"{param}.{key}")
    return value


def require_choice(obj: dict[str, Any], key: str, param: str, choices: Iterable[str]) -> str:
    value = require_str(obj, key, param)
    choices = tuple(choices)
    if value not in choices:
        raise InvalidRequest(
            f"Invalid value for {param}.{key}: {value!r}. Expected one of {', '.join(choices)}.",
            param=f"{param}.{key}",
        )
    return value


def require_str_list(obj: dict[str, Any], key: str, param: str) -> list[str]:
    value = obj.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(entry, str) for entry in value):
        raise InvalidRequest(f"{param}.{key} must be a non-empty list of strings.", param=f"{param}.{key}")
    return list(value)


def optional_number(
    obj: dict[str, Any], key: str, param: str, *, minimum: float | None = None, maximum: float | None = None
) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"{param}.{key} must be a finite number, got {value!r}.", param=f"{param}.{key}")
    if minimum is not None and value < minimum:
        raise InvalidRequest(f"{param}.{key} must be at least {minimum}, got {value}.", param=f"{param}.{key}")
    if maximum is not None and value > maximum:
        raise InvalidRequest(f"{param}.{key} must be at most {maximum}, got {value}.", param=f"{param}.{key}")
    return float(value)
