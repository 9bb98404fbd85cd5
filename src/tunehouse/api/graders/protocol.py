"""Wire shapes of `/fine_tuning/alpha/graders/{run,validate}`, as OpenAI's RunGraderRequest,
RunGraderResponse, ValidateGraderRequest and ValidateGraderResponse have them.

The grader object itself is checked field by field by `tunehouse.eval.graders.validate_grader`,
whose 400s name the exact path (`grader.graders.a.input`); here it is any object.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ValidateGraderRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    grader: dict[str, Any]


class RunGraderRequest(ValidateGraderRequest):
    model_sample: str
    item: dict[str, Any] | None = None


class GraderErrors(BaseModel):
    """One flag per kind of failure; `message` (tunehouse's own) says what failed whatever its kind."""

    formula_parse_error: bool = False
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False
    invalid_variable_error: bool = False
    other_error: bool = False
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    model_grader_server_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_server_error_details: str | None = None
    message: str | None = None


class GraderMetadata(BaseModel):
    name: str
    type: str
    errors: GraderErrors
    execution_time: float
    scores: dict[str, Any]
    token_usage: int | None
    sampled_model_name: str | None


class RunGraderResponse(BaseModel):
    reward: float
    metadata: GraderMetadata
    sub_rewards: dict[str, Any]
    model_grader_token_usage_per_model: dict[str, Any]
