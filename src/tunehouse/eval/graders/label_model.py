"""`label_model`: a model reads the templated messages and answers one of `labels`; the item passes
when that label is one of `passing_labels` (score 1, else 0).

The reply is read as OpenAI's structured output (`{"result": "positive"}`), a bare label (case,
quotes and a final full stop aside), or, for a model that adds words, the label it names first.
A reply that names no label is the item's `model_grader_parse_error`. `sampling_params`, as
score_model has them, is tunehouse's addition (to bound a local model's reply, say).
"""

from __future__ import annotations

import json
import re
from typing import Any

from tunehouse.errors import InvalidRequest
from tunehouse.eval.graders.core import GradeFailed, GradeResult, ModelCaller, Sample
from tunehouse.eval.graders.fields import check_keys, require_str, require_str_list
from tunehouse.eval.graders.model_input import ask, render_messages, validate_messages, validate_sampling


def validate(grader: dict[str, Any], param: str) -> dict[str, Any]:
    check_keys(
        grader,
        param,
        required=("type", "name", "input", "model", "labels", "passing_labels"),
        optional=("sampling_params",),  # tunehouse's: OpenAI's label_model samples as it sees fit
    )
    require_str(grader, "name", param)
    require_str(grader, "model", param)
    validate_messages(grader, param)
    validate_sampling(grader, param)
    labels = require_str_list(grader, "labels", param)
    for index, label in enumerate(require_str_list(grader, "passing_labels", param)):
        if label not in labels:
            raise InvalidRequest(
                f"{param}.passing_labels[{index}] is {label!r}, which is not one of {param}.labels.",
                param=f"{param}.passing_labels[{index}]",
            )
    return dict(grader)


def parse_label(reply: str, labels: list[str]) -> str | None:
    """The label `reply` gives, or None when it names none."""
    try:
        parsed: Any = json.loads(reply)
    except ValueError:
        parsed = reply
    if isinstance(parsed, dict):
        parsed = parsed.get("result", parsed.get("label"))
    if isinstance(parsed, str):
        bare = parsed.strip().strip("\"'`*").rstrip(".").strip().casefold()
        for label in labels:
            if label.casefold() == bare:
                return label
    found = [
        (match.start(), label)
        for label in labels
        if (match := re.search(rf"(?<!\w){re.escape(label)}(?!\w)", reply, flags=re.IGNORECASE))
    ]
    return min(found, key=lambda hit: (hit[0], -len(hit[1])))[1] if found else None  # first; longest there


def grade(grader: dict[str, Any], *, item: dict[str, Any], sample: Sample, call_model: ModelCaller) -> GradeResult:
    reply, details = ask(grader, call_model, render_messages(grader, item=item, sample=sample))
    label = parse_label(reply, grader["labels"])
    if label is None:
        raise GradeFailed(
            f"The grader model's reply names none of the labels {grader['labels']}: {reply[:200]!r}",
            "model_grader_parse_error",
            details,
        )
    passed = label in grader["passing_labels"]
    return GradeResult(score=1.0 if passed else 0.0, passed=passed, details={**details, "label": label})
