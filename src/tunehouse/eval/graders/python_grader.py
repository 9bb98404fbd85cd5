"""`python`: the grader's `source` defines `grade(sample, item) -> float`, run in a separate process."""

from __future__ import annotations

from typing import Any

from tunehouse.eval.graders.core import GradeFailed, GradeResult, Sample
from tunehouse.eval.graders.fields import check_keys, require_str


def validate(grader: dict[str, Any], param: str) -> dict[str, Any]:
    check_keys(grader, param, required=("type", "name", "source"), optional=("image_tag",))
    require_str(grader, "name", param)
    require_str(grader, "source", param)
    return dict(grader)


def grade(grader: dict[str, Any], *, item: dict[str, Any], sample: Sample, pass_threshold: float | None) -> GradeResult:
    raise GradeFailed("python graders are not available yet.", "python_grader_server_error")
