"""Running a grader for one request: its model graders reach this server's own engine (and, for a
model it does not serve, TUNEHOUSE_GRADER_BASE_URL when set), and the result takes OpenAI's shape."""

from __future__ import annotations

from typing import Any

from tunehouse.api.graders.protocol import GraderErrors, GraderMetadata, RunGraderResponse
from tunehouse.config import settings
from tunehouse.eval.graders import (
    GradeResult,
    ModelCaller,
    Sample,
    engine_caller,
    grade,
    openai_caller,
    routing_caller,
    validate_grader,
)
from tunehouse.serve.engine import Engine


def server_caller(engine: Engine) -> ModelCaller:
    """The models this server serves, then the configured endpoint's."""
    config = settings()
    remote = openai_caller(config.grader_base_url, config.grader_api_key) if config.grader_base_url else None
    return routing_caller(engine_caller(engine), remote)


def _model_calls(details: dict[str, Any]) -> list[dict[str, Any]]:
    """The model grader replies in `details`: its own, or a multi grader's sub-graders'."""
    calls = [details] if "model" in details and "usage" in details else []
    for sub in (details.get("sub_results") or {}).values():
        calls += _model_calls(sub)
    return calls


def _errors(result: GradeResult) -> GraderErrors:
    if result.error_type is None:
        return GraderErrors()
    errors = GraderErrors.model_validate({result.error_type: True, "message": result.error})
    if result.error_type == "python_grader_runtime_error":
        errors.python_grader_runtime_error_details = result.error
    elif result.error_type == "model_grader_server_error":
        errors.model_grader_server_error_details = result.error
    return errors


def response(grader: dict[str, Any], result: GradeResult) -> RunGraderResponse:
    per_model: dict[str, dict[str, int]] = {}
    for call in _model_calls(result.details):
        usage = per_model.setdefault(
            call["model"], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0}
        )
        for key, value in call["usage"].items():
            usage[key] += value
    sub_rewards = result.details.get("sub_rewards", {})
    return RunGraderResponse(
        reward=result.score,
        metadata=GraderMetadata(
            name=grader["name"],
            type=grader["type"],
            errors=_errors(result),
            execution_time=result.details.get("execution_time", 0.0),
            scores=dict(sub_rewards),
            token_usage=sum(usage["total_tokens"] for usage in per_model.values()) if per_model else None,
            sampled_model_name=grader.get("model"),
        ),
        sub_rewards=dict(sub_rewards),
        model_grader_token_usage_per_model=per_model,
    )


def run_grader(engine: Engine, grader: dict[str, Any], model_sample: str, item: dict[str, Any]) -> RunGraderResponse:
    """Grade `model_sample` for `item`; a 400 for a grader that is not one, never for the sample."""
    grader = validate_grader(grader)
    result = grade(grader, item=item, sample=Sample.from_text(model_sample), call_model=server_caller(engine))
    return response(grader, result)
