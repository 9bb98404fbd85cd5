"""The golden set: the source model's own answers, recorded before the copy trains, to compare the new
model's answers with afterwards.

The prompts are the first examples of the job's validation file — or, for a job without one, the
last examples of its training file (which the model has seen; the record says so). Each prompt is
asked greedily (temperature 0): chat messages as a chat completion, a legacy prompt as a completion.
A source model that no longer answers (its base retired) leaves a golden set that says why it is empty;
a prompt the source refuses (400) is left out, and counted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from tunehouse.eval.heldout import answer_tokens, heldout_item
from tunehouse.migrate import GOLDEN_SIZE
from tunehouse.migrate.source import ModelGone, PromptRefused, Source
from tunehouse.store.files import file_path, get_file


def _examples(path: Path) -> Iterator[dict[str, Any]]:
    """The file's examples; lines that are not JSON objects are skipped (the job's validation reports them)."""
    with path.open("rb") as fh:
        for line in fh:
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                yield value


def golden_prompts(training_file: str, validation_file: str | None, size: int) -> tuple[list[dict[str, Any]], str]:
    """The golden items (`input`, `expected`) from the files copied here, and where they come from."""
    if validation_file is not None:
        row = get_file(validation_file)
        items: list[dict[str, Any]] = []
        for example in _examples(file_path(row)):
            if len(items) >= size:
                break
            if (item := heldout_item(example)) is not None:
                items.append(item)
        return items, f"the first {len(items)} examples of the validation file {row.filename}"
    row = get_file(training_file)
    last: deque[dict[str, Any]] = deque(maxlen=size)
    for example in _examples(file_path(row)):
        if (item := heldout_item(example)) is not None:
            last.append(item)
    return list(last), (
        f"the last {len(last)} examples of the training file {row.filename} (the job has no validation file, "
        "so these are examples the model was trained on)"
    )


def record_golden(
    source: Source,
    *,
    job_id: str,
    model: str,
    training_file: str,
    validation_file: str | None,
    size: int = GOLDEN_SIZE,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """Ask the source's `model` each golden prompt; the golden set as the migration stores it."""
    items, origin = golden_prompts(training_file, validation_file, size)
    max_tokens = answer_tokens(items)
    golden: dict[str, Any] = {"model": model, "origin": origin, "max_tokens": max_tokens, "items": [], "skipped": None}
    refused: list[str] = []
    for index, item in enumerate(items):
        try:
            golden["items"].append({**item, "source": source.answer(model, item["input"], max_tokens, job_id)})
        except ModelGone as gone:
            return golden | {"items": [], "skipped": f"the source no longer serves {model} ({gone})"}
        except PromptRefused as refusal:
            refused.append(str(refusal))
        progress(index + 1, len(items))
    if refused:
        golden["origin"] += f"; {len(refused)} prompts left out, which the source refused ({refused[0]})"
    return golden
