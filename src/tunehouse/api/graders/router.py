"""HTTP for `/fine_tuning/alpha/graders`: run a grader on one sample, or check one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from tunehouse.api.graders.protocol import RunGraderRequest, ValidateGraderRequest
from tunehouse.api.graders.serving import run_grader
from tunehouse.eval.graders import validate_grader

router = APIRouter()


@router.post("/fine_tuning/alpha/graders/run")
def run(body: RunGraderRequest, request: Request) -> dict[str, Any]:
    # A plain def: FastAPI runs it on a worker thread, where a python grader's child or a model
    # grader's generation may take their time without holding the event loop.
    return run_grader(request.app.state.engine, body.grader, body.model_sample, body.item or {}).model_dump()


@router.post("/fine_tuning/alpha/graders/validate")
def validate(body: ValidateGraderRequest) -> dict[str, Any]:
    return {"grader": validate_grader(body.grader)}
