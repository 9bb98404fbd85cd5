"""Graders in OpenAI's shapes: score a model's sample for one dataset item.

`validate_grader` checks a grader object (a 400 naming the exact field) and returns it normalised;
`grade` scores one sample with it. The types, one module each: string_check, text_similarity,
score_model, label_model, python, multi. score_model and label_model reach their model through a
`ModelCaller` (`engine_caller` for the models this server serves, `openai_caller` for any
OpenAI-compatible endpoint). A grader never raises for what it grades: failures come back in
`GradeResult.error`, score 0.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tunehouse.errors import InvalidRequest
from tunehouse.eval.graders import (
    label_model,
    multi,
    python_grader,
    score_model,
    string_check,
    text_similarity,
)
from tunehouse.eval.graders.callers import engine_caller, openai_caller, routing_caller
from tunehouse.eval.graders.core import ErrorType, GradeFailed, GradeResult, ModelCaller, ModelReply, Sample
from tunehouse.eval.graders.fields import require_object
from tunehouse.eval.graders.template import check_template, render

__all__ = [
    "GRADER_TYPES",
    "ErrorType",
    "GradeResult",
    "ModelCaller",
    "ModelReply",
    "Sample",
    "check_template",
    "engine_caller",
    "grade",
    "openai_caller",
    "render",
    "routing_caller",
    "validate_grader",
]

logger = logging.getLogger(__name__)
GRADER_TYPES = ("string_check", "text_similarity", "score_model", "label_model", "python", "multi")
_VALIDATORS = {
    "string_check": string_check.validate,
    "text_similarity": text_similarity.validate,
    "score_model": score_model.validate,
    "label_model": label_model.validate,
    "python": python_grader.validate,
}


def _validate_single(grader: Any, param: str) -> dict[str, Any]:
    grader = require_object(grader, param)
    kind = grader.get("type")
    if kind not in GRADER_TYPES:
        raise InvalidRequest(
            f"Invalid value for {param}.type: {kind!r}. Expected one of {', '.join(GRADER_TYPES)}.",
            param=f"{param}.type",
        )
    if kind == "multi":
        raise InvalidRequest(f"{param}: a multi grader cannot hold a multi grader.", param=f"{param}.type")
    return _VALIDATORS[kind](grader, param)


def validate_grader(grader: Any, *, param: str = "grader") -> dict[str, Any]:
    """`grader` checked (InvalidRequest naming the exact field path, e.g. `grader.graders.a.input`)
    and normalised (defaults filled in: score_model's `range`; multi's `graders` as named graders)."""
    grader = require_object(grader, param)
    if grader.get("type") == "multi":
        return multi.validate(grader, param, _validate_single)
    return _validate_single(grader, param)


def _grade_checked(
    grader: dict[str, Any],
    item: dict[str, Any],
    sample: Sample,
    call_model: ModelCaller,
    pass_threshold: float | None,
) -> GradeResult:
    kind = grader["type"]
    if kind == "string_check":
        return string_check.grade(grader, item=item, sample=sample)
    if kind == "text_similarity":
        return text_similarity.grade(grader, item=item, sample=sample, pass_threshold=pass_threshold)
    if kind == "score_model":
        return score_model.grade(grader, item=item, sample=sample, call_model=call_model, pass_threshold=pass_threshold)
    if kind == "label_model":
        return label_model.grade(grader, item=item, sample=sample, call_model=call_model)
    if kind == "python":
        return python_grader.grade(grader, item=item, sample=sample, pass_threshold=pass_threshold)
    return multi.grade(
        grader,
        grade_one=lambda sub: _grade_one(sub, item, sample, call_model, None),
        pass_threshold=pass_threshold,
    )


def _grade_one(
    grader: dict[str, Any],
    item: dict[str, Any],
    sample: Sample,
    call_model: ModelCaller,
    pass_threshold: float | None,
) -> GradeResult:
    started = time.perf_counter()
    try:
        result = _grade_checked(grader, item, sample, call_model, pass_threshold)
    except GradeFailed as failure:
        result = GradeResult(
            score=0.0, passed=False, details=failure.details, error=failure.message, error_type=failure.error_type
        )
    except Exception as error:  # a metric library that chokes on this item fails the item, never the run
        logger.exception("grader %r failed on an item", grader.get("name"))
        result = GradeResult(
            score=0.0, passed=False, error=f"{type(error).__name__}: {error}", error_type="other_error"
        )
    return GradeResult(
        score=result.score,
        passed=result.passed,
        details={**result.details, "execution_time": time.perf_counter() - started},
        error=result.error,
        error_type=result.error_type,
    )


def grade(
    grader: dict[str, Any],
    *,
    item: dict[str, Any],
    sample: Sample,
    call_model: ModelCaller,
    pass_threshold: float | None = None,
) -> GradeResult:
    """Score `sample` for `item` with `grader` (validated here; InvalidRequest if it is not a grader).

    `passed` is score >= `pass_threshold`, or the type's own rule: string_check on a match,
    label_model on a passing label, the others at full marks (1, or score_model's range top) when no
    threshold is given. A failure to grade this item is `error` and `error_type`, with score 0.
    """
    return _grade_one(validate_grader(grader), item, sample, call_model, pass_threshold)
