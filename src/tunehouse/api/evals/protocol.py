"""Wire shapes of `/evals`, mirroring OpenAI's `CreateEvalRequest`, `Eval`, `CreateEvalRunRequest`,
`EvalRun`, `EvalRunOutputItem` and their list envelopes.

Request bodies keep the nested objects as JSON: the eval service checks them field by field, so a
mistake deep inside a grader or a data source is a 400 naming its exact path.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from tunehouse.eval.definitions import wire_data_source_config
from tunehouse.store.schema import EvalOutputItemRow, EvalRow, EvalRunRow


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateEvalRequest(_Request):
    data_source_config: Any
    testing_criteria: Any
    name: Any = None
    metadata: Any = None


class UpdateEvalRequest(_Request):
    name: Any = None
    metadata: Any = None


class CreateRunRequest(_Request):
    data_source: Any
    name: Any = None
    metadata: Any = None


def eval_object(row: EvalRow) -> dict[str, Any]:
    return {
        "object": "eval",
        "id": row.id,
        "name": row.name,
        "created_at": row.created_at,
        "data_source_config": wire_data_source_config(row.data_source_config),
        "testing_criteria": row.testing_criteria,
        "metadata": row.eval_metadata,
    }


def report_url(origin: str, row: EvalRunRow) -> str:
    """The run's page on this server's dashboard."""
    return f"{origin.rstrip('/')}/#/evals/{row.eval_id}/runs/{row.id}"


def run_object(row: EvalRunRow, origin: str) -> dict[str, Any]:
    return {
        "object": "eval.run",
        "id": row.id,
        "eval_id": row.eval_id,
        "name": row.name,
        "created_at": row.created_at,
        "status": row.status,
        "model": row.model,
        "data_source": row.data_source,
        "metadata": row.run_metadata,
        "report_url": report_url(origin, row),
        "result_counts": row.result_counts,
        "per_testing_criteria_results": row.per_testing_criteria_results,
        "per_model_usage": row.per_model_usage,
        "error": row.error,
    }


def output_item_object(row: EvalOutputItemRow) -> dict[str, Any]:
    return {
        "object": "eval.run.output_item",
        "id": row.id,
        "run_id": row.run_id,
        "eval_id": row.eval_id,
        "created_at": row.created_at,
        "status": row.status,
        "datasource_item_id": row.datasource_item_id,
        "datasource_item": row.datasource_item,
        "sample": row.sample,
        "results": row.results,
    }


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else "",
        "last_id": data[-1]["id"] if data else "",
        "has_more": has_more,
    }
