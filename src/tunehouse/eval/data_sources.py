"""A run's data source: checked when the run is created (every field, every line of its items against
the eval's item schema), then read again by the worker that runs it.

Two types: `jsonl` (items, each with an optional pre-filled `sample`, graded as they are) and
`completions` (each item's prompt is sampled from a model this server serves). Items come inline
(`file_content`) or from an uploaded file (`file_id`): any JSONL file, each line either
`{"item": {...}, "sample": {...}}` or, for a plain line such as a fine-tuning example, the item itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from jsonschema import Draft202012Validator

from tunehouse.errors import DataValidationError, InvalidRequest, ModelNotFound
from tunehouse.eval.graders.template import check_template
from tunehouse.models.catalog import get_model
from tunehouse.store.files import file_path, get_file

ROLES = ("user", "assistant", "system", "developer")
CONTENT_PART_TYPES = ("input_text", "output_text")
SAMPLING_KEYS = ("temperature", "max_completion_tokens", "top_p", "seed")
SAMPLING_BOUNDS: dict[str, tuple[float, float]] = {
    "temperature": (0, 2),
    "max_completion_tokens": (1, 1_000_000),
    "top_p": (0, 1),
    "seed": (-(2**63), 2**63 - 1),
}
UNSUPPORTED_SAMPLING = ("response_format", "tools", "reasoning_effort", "text")
DEFAULT_SAMPLING: dict[str, Any] = {"temperature": 1.0, "max_completion_tokens": 512, "top_p": 1.0, "seed": 42}
"""What a completions run samples with where `sampling_params` leaves a field out (OpenAI's defaults;
512 tokens rather than a hosted model's thousands, since answers are generated here)."""


@dataclass(frozen=True)
class SourceEntry:
    """One line of a data source: its `item` and, for jsonl runs, the `sample` it was given."""

    index: int
    item: dict[str, Any]
    sample: dict[str, Any] | None


def _require(obj: dict[str, Any], key: str, param: str) -> Any:
    if obj.get(key) is None:
        raise InvalidRequest(f"Missing required parameter: '{param}.{key}'.", param=f"{param}.{key}")
    return obj[key]


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param} must be an object.", param=param)
    return value


def _entry(line: Any, index: int, where: str, param: str) -> SourceEntry:
    if not isinstance(line, dict):
        raise InvalidRequest(f"{where}: each item must be a JSON object.", param=param)
    if "item" not in line:
        return SourceEntry(index, line, None)
    item, sample = line["item"], line.get("sample")
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where}: 'item' must be a JSON object.", param=param)
    if sample is not None and not isinstance(sample, dict):
        raise InvalidRequest(f"{where}: 'sample' must be a JSON object.", param=param)
    return SourceEntry(index, item, sample)


def _file_entries(file_id: str, param: str) -> list[SourceEntry]:
    row = get_file(file_id, param=param)
    entries: list[SourceEntry] = []
    try:
        with open(file_path(row), "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InvalidRequest(f"{file_id} line {number}: not valid JSON ({exc}).", param=param) from None
                entries.append(_entry(value, len(entries), f"{file_id} line {number}", param))
    except OSError as exc:
        raise DataValidationError(f"{file_id} could not be read: {exc.strerror}.", param=param) from None
    return entries


def read_entries(source: dict[str, Any], param: str = "data_source.source") -> list[SourceEntry]:
    """The items of a (checked) source, in order; a TunehouseError if its file is gone or unreadable."""
    if source["type"] == "file_id":
        return _file_entries(source["id"], f"{param}.id")
    return [
        _entry(line, index, f"{param}.content[{index}]", f"{param}.content[{index}]")
        for index, line in enumerate(source["content"])
    ]


def _check_source(source: Any, item_schema: dict[str, Any], param: str) -> dict[str, Any]:
    source = _object(source, param)
    kind = source.get("type")
    if kind == "file_content":
        content = _require(source, "content", param)
        if not isinstance(content, list):
            raise InvalidRequest(f"{param}.content must be a list of items.", param=f"{param}.content")
        checked = {"type": "file_content", "content": content}
    elif kind == "file_id":
        file_id = _require(source, "id", param)
        if not isinstance(file_id, str):
            raise InvalidRequest(f"{param}.id must be a file id.", param=f"{param}.id")
        checked = {"type": "file_id", "id": file_id}
    elif kind in ("stored_completions", "responses"):
        raise InvalidRequest(
            f"{param}.type '{kind}' is not supported: tunehouse keeps no log of past completions or responses. "
            "Give the items as 'file_content' or 'file_id'.",
            param=f"{param}.type",
        )
    else:
        raise InvalidRequest(
            f"Invalid value for {param}.type: {kind!r}. Expected 'file_content' or 'file_id'.", param=f"{param}.type"
        )
    entries = read_entries(checked, param)
    if not entries:
        raise InvalidRequest(f"{param} holds no items.", param=param)
    validator = Draft202012Validator(item_schema)
    for entry in entries:
        error = next(iter(validator.iter_errors(entry.item)), None)
        if error is not None:
            where = f"item {entry.index}" if kind == "file_id" else f"{param}.content[{entry.index}].item"
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            raise InvalidRequest(
                f"{where}{path} does not match the eval's item_schema: {error.message}.", param=f"{param}"
            )
    return checked


def _check_content(content: Any, param: str) -> None:
    """A message's content: text, one text part, or a list of text parts; templates refer to `item`."""
    parts = content if isinstance(content, list) else [content]
    for index, part in enumerate(parts):
        where = f"{param}[{index}]" if isinstance(content, list) else param
        if isinstance(part, dict):
            if part.get("type") not in CONTENT_PART_TYPES or not isinstance(part.get("text"), str):
                raise InvalidRequest(
                    f"{where} must be text or a part of type {' or '.join(CONTENT_PART_TYPES)} with 'text' "
                    "(images and audio are not supported).",
                    param=where,
                )
            part = part["text"]
        if not isinstance(part, str):
            raise InvalidRequest(f"{where} must be a string or a text part.", param=where)
        check_template(part, where, namespaces=("item",))


def _check_input_messages(messages: Any, param: str) -> dict[str, Any]:
    messages = _object(messages, param)
    kind = messages.get("type")
    if kind == "item_reference":
        reference = _require(messages, "item_reference", param)
        if not isinstance(reference, str) or not reference.startswith("item."):
            raise InvalidRequest(
                f"{param}.item_reference must name a field of the item, e.g. 'item.messages'.",
                param=f"{param}.item_reference",
            )
        check_template("{{" + reference + "}}", f"{param}.item_reference", namespaces=("item",))
        return {"type": "item_reference", "item_reference": reference}
    if kind != "template":
        raise InvalidRequest(
            f"Invalid value for {param}.type: {kind!r}. Expected 'template' or 'item_reference'.", param=f"{param}.type"
        )
    template = _require(messages, "template", param)
    if not isinstance(template, list) or not template:
        raise InvalidRequest(f"{param}.template must be a non-empty list of messages.", param=f"{param}.template")
    for index, message in enumerate(template):
        where = f"{param}.template[{index}]"
        message = _object(message, where)
        if message.get("role") not in ROLES:
            raise InvalidRequest(
                f"Invalid value for {where}.role: {message.get('role')!r}. Expected one of {', '.join(ROLES)}.",
                param=f"{where}.role",
            )
        _check_content(_require(message, "content", where), f"{where}.content")
    return {"type": "template", "template": template}


def _check_sampling(params: Any, param: str) -> dict[str, Any]:
    params = _object(params or {}, param)
    for key, value in params.items():
        if value is None:
            continue
        if key in UNSUPPORTED_SAMPLING:
            raise InvalidRequest(f"{param}.{key} is not supported by tunehouse's eval runs.", param=f"{param}.{key}")
        if key not in SAMPLING_KEYS:
            raise InvalidRequest(
                f"Unknown parameter: '{param}.{key}'. Expected {', '.join(SAMPLING_KEYS)}.", param=f"{param}.{key}"
            )
    checked = {k: params[k] for k in SAMPLING_KEYS if params.get(k) is not None}
    for key, value in checked.items():
        low, high = SAMPLING_BOUNDS[key]
        integer = key in ("max_completion_tokens", "seed")
        kind = int if integer else int | float
        if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
            raise InvalidRequest(
                f"{param}.{key} must be {'an integer' if integer else 'a number'} from {low} to {high}.",
                param=f"{param}.{key}",
            )
    return checked


def check_run_data_source(data_source: Any, item_schema: dict[str, Any]) -> dict[str, Any]:
    """The stored form of a run's `data_source`; a 400 naming the first field (or line) that is wrong."""
    param = "data_source"
    data_source = _object(data_source, param)
    kind = data_source.get("type")
    if kind == "responses":
        raise InvalidRequest(
            "data_source.type 'responses' is not supported: tunehouse serves chat completions. "
            "Use 'completions' to sample a model, or 'jsonl' for outputs you already have.",
            param="data_source.type",
        )
    if kind not in ("jsonl", "completions"):
        raise InvalidRequest(
            f"Invalid value for data_source.type: {kind!r}. Expected 'jsonl' or 'completions'.",
            param="data_source.type",
        )
    source = _check_source(_require(data_source, "source", param), item_schema, f"{param}.source")
    if kind == "jsonl":
        return {"type": "jsonl", "source": source}
    model = _require(data_source, "model", param)
    if not isinstance(model, str):
        raise InvalidRequest("data_source.model must be a model id.", param="data_source.model")
    try:
        get_model(model)
    except ModelNotFound as exc:
        raise ModelNotFound(exc.message, param="data_source.model") from None
    return {
        "type": "completions",
        "source": source,
        "input_messages": _check_input_messages(
            _require(data_source, "input_messages", param), f"{param}.input_messages"
        ),
        "model": model,
        "sampling_params": _check_sampling(data_source.get("sampling_params"), f"{param}.sampling_params"),
    }


def sampling_of(data_source: dict[str, Any]) -> dict[str, Any]:
    """A completions run's sampling settings, defaults filled in."""
    return {**DEFAULT_SAMPLING, **data_source.get("sampling_params", {})}
