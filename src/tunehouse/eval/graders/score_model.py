"""`score_model`: a model reads the templated messages and answers a score within `range` (default [0, 1]).

The reply is read as OpenAI's structured output (`{"result": 0.8, ...}`), a bare number, or, for a
model that adds words, the first number in it. A reply with no number, or one outside `range`, is
the item's `model_grader_parse_error`. Passes at `pass_threshold`, or the top of `range` without one.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from tunehouse.errors import InvalidRequest
from tunehouse.eval.graders.core import GradeFailed, GradeResult, ModelCaller, Sample
from tunehouse.eval.graders.fields import check_keys, require_str
from tunehouse.eval.graders.model_input import ask, render_messages, validate_messages, validate_sampling

NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
DEFAULT_RANGE = [0.0, 1.0]


def validate(grader: dict[str, Any], param: str) -> dict[str, Any]:
    check_keys(grader, param, required=("type", "name", "input", "model"), optional=("range", "sampling_params"))
    require_str(grader, "name", param)
    require_str(grader, "model", param)
    validate_messages(grader, param)
    validate_sampling(grader, param)
    bounds = grader.get("range", DEFAULT_RANGE)
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
        or not bounds[0] < bounds[1]
    ):
        raise InvalidRequest(f"{param}.range must be two finite numbers, the lower first.", param=f"{param}.range")
    return {**grader, "range": [float(b) for b in bounds]}


def parse_score(reply: str) -> float | None:
    """The score in `reply`, or None when there is none."""
    try:
        parsed: Any = json.loads(reply)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        parsed = parsed.get("result", parsed.get("score"))
    if isinstance(parsed, int | float) and not isinstance(parsed, bool):
        return float(parsed)
    match = NUMBER.search(reply)
    return float(match.group()) if match else None


def grade(
    grader: dict[str, Any],
    *,
    item: dict[str, Any],
    sample: Sample,
    call_model: ModelCaller,
    pass_threshold: float | None,
) -> GradeResult:
    reply, details = ask(grader, call_model, render_messages(grader, item=item, sample=sample))
    low, high = grader["range"]
    score = parse_score(reply)
    if score is None or not low <= score <= high:
        found = "no number" if score is None else f"{score:g}, outside [{low:g}, {high:g}]"
        raise GradeFailed(
            f"The grader model's reply holds {found}: {reply[:200]!r}", "model_grader_parse_error", details
        )
    threshold = high if pass_threshold is None else pass_threshold
    return GradeResult(score=score, passed=score >= threshold, details=details)
