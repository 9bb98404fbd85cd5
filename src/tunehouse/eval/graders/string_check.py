"""`string_check`: compare the rendered `input` with the rendered `reference`.

As OpenAI defines the operations: `eq` the same string, `ne` a different one, `like` the input
contains the reference, `ilike` it does so ignoring case. Score 1 or 0; it passes on 1.
"""

from __future__ import annotations

from typing import Any

from tunehouse.eval.graders.core import GradeResult, Sample
from tunehouse.eval.graders.fields import check_keys, require_choice, require_str
from tunehouse.eval.graders.template import check_template, render

OPERATIONS = ("eq", "ne", "like", "ilike")


def validate(grader: dict[str, Any], param: str) -> dict[str, Any]:
    check_keys(grader, param, required=("type", "name", "input", "reference", "operation"))
    require_str(grader, "name", param)
    for key in ("input", "reference"):
        check_template(require_str(grader, key, param), f"{param}.{key}")
    require_choice(grader, "operation", param, OPERATIONS)
    return dict(grader)


def compare(operation: str, text: str, reference: str) -> bool:
    if operation == "eq":
        return text == reference
    if operation == "ne":
        return text != reference
    if operation == "like":
        return reference in text
    return reference.casefold() in text.casefold()  # ilike


def grade(grader: dict[str, Any], *, item: dict[str, Any], sample: Sample) -> GradeResult:
    text = render(grader["input"], item=item, sample=sample)
    reference = render(grader["reference"], item=item, sample=sample)
    matched = compare(grader["operation"], text, reference)
    return GradeResult(score=1.0 if matched else 0.0, passed=matched, details={"input": text, "reference": reference})
