"""`multi`: several named graders, combined by `calculate_output` (see `formula`).

`graders` is an object of named graders, as OpenAI's guide writes it (a list is read as graders
named by their `name`); the names are what the formula refers to. A multi grader holds no multi
grader. The sub-graders' scores are reported beside the combined one; if one of them fails, the
multi grader fails with its error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunehouse.errors import InvalidRequest
from tunehouse.eval.graders.core import GradeFailed, GradeResult
from tunehouse.eval.graders.fields import check_keys, require_object, require_str
from tunehouse.eval.graders.formula import FormulaError, evaluate, parse

ValidateOne = Callable[[dict[str, Any], str], dict[str, Any]]
GradeOne = Callable[[dict[str, Any]], GradeResult]


def _named(graders: Any, param: str) -> dict[str, Any]:
    if isinstance(graders, list):
        named = {}
        for index, grader in enumerate(graders):
            name = require_object(grader, f"{param}.graders[{index}]").get("name")
            if not isinstance(name, str) or name in named:
                raise InvalidRequest(
                    f"{param}.graders[{index}].name must be a name no other grader of the list has.",
                    param=f"{param}.graders[{index}].name",
                )
            named[name] = grader
        return named
    if isinstance(graders, dict) and graders.get("type") is not None and isinstance(graders.get("name"), str):
        return {graders["name"]: graders}  # one grader, as OpenAI's schema types the field
    graders = require_object(graders, f"{param}.graders")
    if not graders:
        raise InvalidRequest(f"{param}.graders must name at least one grader.", param=f"{param}.graders")
    return graders


def validate(grader: dict[str, Any], param: str, validate_one: ValidateOne) -> dict[str, Any]:
    """`validate_one(sub_grader, its_param)` checks each sub-grader (multi excluded by the caller)."""
    check_keys(grader, param, required=("type", "name", "graders", "calculate_output"))
    require_str(grader, "name", param)
    graders = {}
    for key, sub in _named(grader["graders"], param).items():
        if not key.isidentifier():
            raise InvalidRequest(
                f"{param}.graders has a grader named {key!r}: the formula refers to graders by name, so a name "
                "must be letters, digits and underscores, not starting with a digit.",
                param=f"{param}.graders.{key}",
            )
        sub_param = f"{param}.graders.{key}"
        if require_object(sub, sub_param).get("type") == "multi":
            raise InvalidRequest(f"{sub_param}: a multi grader cannot hold a multi grader.", param=f"{sub_param}.type")
        graders[key] = validate_one(sub, sub_param)
    try:
        parse(require_str(grader, "calculate_output", param), graders)
    except FormulaError as error:
        raise InvalidRequest(f"{param}.calculate_output: {error}", param=f"{param}.calculate_output") from None
    return {**grader, "graders": graders}


def grade(grader: dict[str, Any], *, grade_one: GradeOne, pass_threshold: float | None) -> GradeResult:
    """`grade_one(sub_grader)` grades each sub-grader of the (validated) `grader` on the same item."""
    results = {key: grade_one(sub) for key, sub in grader["graders"].items()}
    details: dict[str, Any] = {
        "sub_rewards": {key: result.score for key, result in results.items()},
        "sub_results": {key: result.details for key, result in results.items()},
    }
    for key, result in results.items():
        if result.error is not None:
            raise GradeFailed(f"Grader {key!r} failed: {result.error}", result.error_type or "other_error", details)
    try:
        score = evaluate(grader["calculate_output"], details["sub_rewards"])
    except FormulaError as error:
        raise GradeFailed(str(error), "formula_parse_error", details) from None
    threshold = 1.0 if pass_threshold is None else pass_threshold
    return GradeResult(score=score, passed=score >= threshold, details=details)
