"""HTTP for `/evals`: evals (create, list, retrieve, update, delete), their runs (create, list,
retrieve, cancel, delete) and the runs' output items (list, retrieve). Runs are executed by the
worker, never in the request; a run's `report_url` is its page on this server's dashboard."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from tunehouse.api.evals.protocol import (
    CreateEvalRequest,
    CreateRunRequest,
    UpdateEvalRequest,
    eval_object,
    list_object,
    output_item_object,
    run_object,
)
from tunehouse.api.pagination import check_limit
from tunehouse.errors import InvalidRequest
from tunehouse.eval import definitions, records, runs

router = APIRouter()
RUN_STATUSES = ("queued", "in_progress", "completed", "canceled", "failed")


def _choice(value: str | None, choices: tuple[str, ...], param: str) -> None:
    if value is not None and value not in choices:
        raise InvalidRequest(
            f"Invalid value for {param}: {value!r}. Expected one of {', '.join(choices)}.", param=param
        )


def _origin(request: Request) -> str:
    return str(request.base_url)


@router.post("/evals", status_code=201)
def create_eval(body: CreateEvalRequest) -> dict[str, Any]:
    row = definitions.create_eval(
        data_source_config=body.data_source_config,
        testing_criteria=body.testing_criteria,
        name=body.name,
        metadata=body.metadata,
    )
    return eval_object(row)


@router.get("/evals")
def list_evals(
    after: str | None = None,
    limit: int = Query(20),
    order: str = Query("asc"),
    order_by: str = Query("created_at"),
) -> dict[str, Any]:
    _choice(order, ("asc", "desc"), "order")
    _choice(order_by, ("created_at", "updated_at"), "order_by")
    page = records.list_evals(after, check_limit(limit, 100), order, order_by)
    return list_object([eval_object(row) for row in page.items], page.has_more)


@router.get("/evals/{eval_id}")
def retrieve_eval(eval_id: str) -> dict[str, Any]:
    return eval_object(records.get_eval(eval_id))


@router.post("/evals/{eval_id}")
def update_eval(eval_id: str, body: UpdateEvalRequest) -> dict[str, Any]:
    return eval_object(definitions.update_eval(eval_id, name=body.name, metadata=body.metadata))


@router.delete("/evals/{eval_id}")
def delete_eval(eval_id: str) -> dict[str, Any]:
    records.delete_eval(eval_id)
    return {"object": "eval.deleted", "deleted": True, "eval_id": eval_id}


@router.post("/evals/{eval_id}/runs", status_code=201)
def create_run(eval_id: str, body: CreateRunRequest, request: Request) -> dict[str, Any]:
    row = runs.create_run(eval_id, data_source=body.data_source, name=body.name, metadata=body.metadata)
    return run_object(row, _origin(request))


@router.get("/evals/{eval_id}/runs")
def list_runs(
    eval_id: str,
    request: Request,
    after: str | None = None,
    limit: int = Query(20),
    order: str = Query("asc"),
    status: str | None = None,
) -> dict[str, Any]:
    _choice(order, ("asc", "desc"), "order")
    _choice(status, RUN_STATUSES, "status")
    page = records.list_runs(eval_id, after, check_limit(limit, 100), order, status)
    return list_object([run_object(row, _origin(request)) for row in page.items], page.has_more)


@router.get("/evals/{eval_id}/runs/{run_id}")
def retrieve_run(eval_id: str, run_id: str, request: Request) -> dict[str, Any]:
    return run_object(records.get_run(eval_id, run_id), _origin(request))


@router.post("/evals/{eval_id}/runs/{run_id}")
@router.post("/evals/{eval_id}/runs/{run_id}/cancel")
def cancel_run(eval_id: str, run_id: str, request: Request) -> dict[str, Any]:
    """OpenAI's reference names `POST …/runs/{run_id}`; the SDK posts to `…/cancel`. Both cancel."""
    return run_object(runs.cancel_run(eval_id, run_id), _origin(request))


@router.delete("/evals/{eval_id}/runs/{run_id}")
def delete_run(eval_id: str, run_id: str) -> dict[str, Any]:
    records.delete_run(eval_id, run_id)
    return {"object": "eval.run.deleted", "deleted": True, "run_id": run_id}


@router.get("/evals/{eval_id}/runs/{run_id}/output_items")
def list_output_items(
    eval_id: str,
    run_id: str,
    after: str | None = None,
    limit: int = Query(20),
    order: str = Query("asc"),
    status: str | None = None,
) -> dict[str, Any]:
    _choice(order, ("asc", "desc"), "order")
    _choice(status, ("pass", "fail"), "status")
    page = records.list_output_items(eval_id, run_id, after, check_limit(limit, 100), order, status)
    return list_object([output_item_object(row) for row in page.items], page.has_more)


@router.get("/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}")
def retrieve_output_item(eval_id: str, run_id: str, output_item_id: str) -> dict[str, Any]:
    return output_item_object(records.get_output_item(eval_id, run_id, output_item_id))
