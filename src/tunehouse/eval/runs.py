"""Eval runs as requests make them: created `queued` (a worker runs them, never the request), and
cancelled by marking them so; the worker stops a cancelled run before its next item."""

from __future__ import annotations

import time
from typing import Any

from tunehouse.errors import Conflict
from tunehouse.eval import records
from tunehouse.eval.data_sources import check_run_data_source
from tunehouse.eval.definitions import check_metadata, check_name
from tunehouse.ids import new_id
from tunehouse.store.schema import EvalRunRow


def empty_counts(criteria: list[dict[str, Any]]) -> dict[str, Any]:
    """The counters of a run that has graded nothing yet."""
    return {
        "result_counts": {"total": 0, "errored": 0, "failed": 0, "passed": 0},
        "per_testing_criteria_results": [{"testing_criteria": c["id"], "passed": 0, "failed": 0} for c in criteria],
        "per_model_usage": [],
    }


def create_run(eval_id: str, *, data_source: Any, name: Any = None, metadata: Any = None) -> EvalRunRow:
    """A queued run of `eval_id` over `data_source`, checked against the eval's item schema."""
    evaluation = records.get_eval(eval_id)
    source = check_run_data_source(data_source, evaluation.data_source_config["item_schema"])
    model = source.get("model")
    row = EvalRunRow(
        id=new_id("evalrun_"),
        eval_id=eval_id,
        name=check_name(name) or model or f"{source['type']} run",
        created_at=int(time.time()),
        status="queued",
        model=model,
        data_source=source,
        run_metadata=check_metadata(metadata),
        error=None,
        **empty_counts(evaluation.testing_criteria),
    )
    return records.add_run(row)


def cancel_run(eval_id: str, run_id: str) -> EvalRunRow:
    """Mark a queued or running run `canceled`; the worker stops at its next item, keeping what it graded."""
    records.get_run(eval_id, run_id)
    if not records.update_run(run_id, only_if_status=records.RUN_ACTIVE, status="canceled"):
        ended = records.get_run(eval_id, run_id).status
        raise Conflict(f"Eval run {run_id} is already {ended}; only a queued or running run can be canceled.")
    return records.get_run(eval_id, run_id)
