"""What every grader shares: the sample it grades, the result it gives, how it reaches a model.

A grader never raises for a problem of the thing it grades (a model that answers off-format, a
python grader that loops, an item that lacks a templated field): it returns a GradeResult whose
`error` says what went wrong, with score 0 and `passed` False, so one bad item never stops an eval
run or crashes the server. `GradeFailed` carries such a problem from deep inside a grader to the
one place (`tunehouse.eval.graders.grade`) that turns it into that result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

ErrorType = Literal[
    "formula_parse_error",
    "sample_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "unresponsive_reward_error",
    "other_error",
]
"""The kinds of failure OpenAI's RunGraderResponse flags in `metadata.errors`."""


@dataclass(frozen=True)
class Sample:
    """What the model produced for one item: the `sample` namespace of templates and python graders."""

    output_text: str
    output_json: Any | None = None
    """`output_text` parsed, when it is JSON; else None."""
    output_tools: list[dict[str, Any]] | None = None
    """The tool calls the model made, in the chat completion's `tool_calls` shape."""

    @classmethod
    def from_text(cls, text: str, output_tools: list[dict[str, Any]] | None = None) -> Sample:
        """A sample from the model's text, `output_json` filled when that text is JSON."""
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = None
        return cls(output_text=text, output_json=parsed, output_tools=output_tools)

    def as_dict(self) -> dict[str, Any]:
        return {"output_text": self.output_text, "output_json": self.output_json, "output_tools": self.output_tools}


@dataclass(frozen=True)
class GradeResult:
    score: float
    passed: bool
    """score >= pass_threshold, or the grader type's own rule (string_check: a match; label_model: a passing label)."""
    details: dict[str, Any] = field(default_factory=dict)
    """Sub-scores (multi), the model grader's reply and token usage, the python grader's stdout…"""
    error: str | None = None
    """Why the grader failed (timeout, memory, an unknown template field, an off-format reply): score 0, passed False."""
    error_type: ErrorType | None = None
    """Which kind of failure `error` is, as OpenAI's RunGraderResponse names them."""


@dataclass(frozen=True)
class ModelReply:
    """A model's answer with its token usage, when the caller knows it."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ModelCaller(Protocol):
    """How score_model and label_model graders reach a model: chat `messages` (role, text content) and
    `sampling` (`temperature`, `top_p`, `seed`, `max_tokens`, each optional) in, the reply out.
    Raises for a model that cannot answer (unknown, unreachable); the grader reports it."""

    def __call__(self, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> str | ModelReply: ...


class GradeFailed(Exception):
    """A grader could not grade this item; `grade` turns it into an error GradeResult."""

    def __init__(self, message: str, error_type: ErrorType, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_type: ErrorType = error_type
        self.details = details or {}
