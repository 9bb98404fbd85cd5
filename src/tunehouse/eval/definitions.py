"""Evals: what a request may define (a custom item schema, graders as testing criteria, metadata),
checked field by field so a mistake is a 400 naming it, and the rows that hold them.

`logs` and `stored_completions` data sources need a log of past completions, which tunehouse does
not keep: they are refused with a message saying so, rather than accepted and never filled.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from tunehouse.errors import InvalidRequest
from tunehouse.eval import records
from tunehouse.eval.graders import validate_grader
from tunehouse.ids import new_id
from tunehouse.store.schema import EvalRow

THRESHOLD_REQUIRED = {"text_similarity"}
THRESHOLD_OPTIONAL = {"python", "score_model", "multi"}
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
        "output_tools": {"type": "array", "items": {"type": "object"}},
        "finish_reason": {"type": "string"},
    },
    "required": ["output_text"],
}
"""The `sample` namespace a run fills when its data source samples a model."""


def check_metadata(value: Any, param: str = "metadata") -> dict[str, str] | None:
    """OpenAI's metadata rule: at most 16 pairs, keys of at most 64 characters, string values of at most 512."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param} must be an object of string keys and values.", param=param)
    if len(value) > 16:
        raise InvalidRequest(f"{param} can hold at most 16 pairs.", param=param)
    for key, text in value.items():
        if len(key) > 64 or not isinstance(text, str) or len(text) > 512:
            raise InvalidRequest(
                f"{param}['{key}']: keys are at most 64 characters, values strings of at most 512.", param=param
            )
    return dict(value)


def check_name(value: Any, param: str = "name") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 512:
        raise InvalidRequest(f"{param} must be a string of at most 512 characters.", param=param)
    return value


def check_data_source_config(config: Any) -> dict[str, Any]:
    """The stored form of `data_source_config`: `{"type": "custom", "item_schema", "include_sample_schema"}`."""
    param = "data_source_config"
    if not isinstance(config, dict):
        raise InvalidRequest(f"{param} must be an object.", param=param)
    kind = config.get("type")
    if kind in ("logs", "stored_completions"):
        raise InvalidRequest(
            f"{param}.type '{kind}' is not supported: tunehouse keeps no log of past completions to evaluate. "
            "Use 'custom' with an item_schema, and a jsonl or completions data source in each run.",
            param=f"{param}.type",
        )
    if kind != "custom":
        raise InvalidRequest(f"Invalid value for {param}.type: {kind!r}. Expected 'custom'.", param=f"{param}.type")
    unknown = set(config) - {"type", "item_schema", "include_sample_schema"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequest(f"Unknown parameter: '{param}.{name}'.", param=f"{param}.{name}")
    schema = config.get("item_schema")
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{param}.item_schema must be a JSON schema object.", param=f"{param}.item_schema")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequest(
            f"{param}.item_schema is not a valid JSON schema: {exc.message}", param=f"{param}.item_schema"
        ) from None
    include_sample = config.get("include_sample_schema", False)
    if not isinstance(include_sample, bool):
        raise InvalidRequest(
            f"{param}.include_sample_schema must be a boolean.", param=f"{param}.include_sample_schema"
        )
    return {"type": "custom", "item_schema": schema, "include_sample_schema": include_sample}


def wire_data_source_config(config: dict[str, Any]) -> dict[str, Any]:
    """The eval object's `data_source_config`: the JSON schema of a run's `item` (and `sample`) namespaces."""
    properties = {"item": config["item_schema"]}
    if config.get("include_sample_schema"):
        properties["sample"] = SAMPLE_SCHEMA
    return {
        "type": "custom",
        "schema": {"type": "object", "properties": properties, "required": list(properties)},
    }


def check_testing_criteria(criteria: Any) -> list[dict[str, Any]]:
    """Each criterion a grader that `validate_grader` accepts, named, with `pass_threshold` where its
    type has one; each gets an `id` (`{name}-{uuid}`) that results are reported under."""
    if not isinstance(criteria, list) or not criteria:
        raise InvalidRequest("testing_criteria must be a non-empty list of graders.", param="testing_criteria")
    checked = []
    for index, criterion in enumerate(criteria):
        param = f"testing_criteria[{index}]"
        if not isinstance(criterion, dict):
            raise InvalidRequest(f"{param} must be a grader object.", param=param)
        grader = {k: v for k, v in criterion.items() if k not in ("pass_threshold", "id")}
        if not isinstance(grader.get("name"), str) or not grader["name"]:
            raise InvalidRequest(f"Missing required parameter: '{param}.name'.", param=f"{param}.name")
        kind = grader.get("type")
        threshold = criterion.get("pass_threshold")
        if kind in THRESHOLD_REQUIRED and threshold is None:
            raise InvalidRequest(
                f"Missing required parameter: '{param}.pass_threshold' (a {kind} grader passes at or above it).",
                param=f"{param}.pass_threshold",
            )
        if threshold is not None and kind not in THRESHOLD_REQUIRED | THRESHOLD_OPTIONAL:
            raise InvalidRequest(
                f"{param}.pass_threshold does not apply to a {kind} grader.", param=f"{param}.pass_threshold"
            )
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
            raise InvalidRequest(f"{param}.pass_threshold must be a number.", param=f"{param}.pass_threshold")
        stored = dict(validate_grader(grader, param=param))
        stored["id"] = f"{grader['name']}-{uuid.uuid4()}"
        if threshold is not None:
            stored["pass_threshold"] = float(threshold)
        checked.append(stored)
    return checked


def grader_of(criterion: dict[str, Any]) -> dict[str, Any]:
    """The grader a stored criterion holds, without the eval's own `id` and `pass_threshold`."""
    return {k: v for k, v in criterion.items() if k not in ("id", "pass_threshold")}


def create_eval(
    *,
    data_source_config: Any,
    testing_criteria: Any,
    name: Any = None,
    metadata: Any = None,
) -> EvalRow:
    config = check_data_source_config(data_source_config)
    criteria = check_testing_criteria(testing_criteria)
    now = int(time.time())
    row = EvalRow(
        id=new_id("eval_"),
        name=check_name(name) or "Untitled eval",
        created_at=now,
        updated_at=time.time(),
        data_source_config=config,
        testing_criteria=criteria,
        eval_metadata=check_metadata(metadata),
    )
    return records.add_eval(row)


def update_eval(eval_id: str, *, name: Any = None, metadata: Any = None) -> EvalRow:
    """Rename an eval or replace its metadata; a field left out (or null) is kept."""
    values: dict[str, Any] = {}
    if (checked_name := check_name(name)) is not None:
        values["name"] = checked_name
    if (checked_metadata := check_metadata(metadata)) is not None:
        values["eval_metadata"] = checked_metadata
    return records.update_eval(eval_id, **values)
