"""Running one eval run, item by item: build the prompt from the item, sample the model (completions
runs) or take the sample the item came with (jsonl runs), grade it with every testing criterion, and
write the output item together with the run's new counters in one transaction.

So a run survives its worker: a run picked up again skips the items it already has and its counters
match its output items at every moment. A run found cancelled or deleted stops before its next item.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tunehouse.errors import ServerBusy, TunehouseError
from tunehouse.eval import records
from tunehouse.eval.data_sources import SourceEntry, read_entries, sampling_of
from tunehouse.eval.definitions import grader_of
from tunehouse.eval.graders import GradeResult, ModelCaller, Sample, grade
from tunehouse.eval.graders.core import GradeFailed
from tunehouse.eval.graders.template import lookup, render
from tunehouse.ids import new_id
from tunehouse.serve.engine import Generation
from tunehouse.store.schema import EvalOutputItemRow, EvalRunRow

Sampler = Callable[[str, "list[dict[str, Any]] | str", dict[str, Any]], Generation]
"""(model, messages or raw prompt, sampling settings) → the model's answer; see `sampler.EngineSampler`."""
BUSY_RETRY_SECONDS = 1.0


class RunInterrupted(Exception):
    """The worker is stopping: the run goes back to the queue and resumes after its last written item."""


@dataclass(frozen=True)
class RunTools:
    """What running an eval needs from its worker."""

    sample: Sampler
    call_model: ModelCaller
    should_stop: Callable[[], bool]


@dataclass
class _Outcome:
    """One item's sample (wire shape), the Sample its graders saw, and how it was produced."""

    record: dict[str, Any]
    sample: Sample | None  # None when producing it failed
    generation: Generation | None = None


def _text(content: Any) -> str:
    """A template message's content as text: a string, a text part, or a list of text parts."""
    parts = content if isinstance(content, list) else [content]
    return "".join(part["text"] if isinstance(part, dict) else part for part in parts)


def _prompt(input_messages: dict[str, Any], item: dict[str, Any]) -> list[dict[str, Any]] | str:
    """The chat messages (or, for an item_reference to a string, the raw prompt) this item asks."""
    if input_messages["type"] == "item_reference":
        value = lookup(input_messages["item_reference"], item=item, sample=None)
        if isinstance(value, str):
            return value
        if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
            raise GradeFailed(
                f"{input_messages['item_reference']} is not a list of messages (each with a role and content).",
                "invalid_variable_error",
            )
        return [{"role": m["role"], "content": _text(m.get("content") or "")} for m in value]
    return [
        {"role": m["role"], "content": render(_text(m["content"]), item=item, sample=None)}
        for m in input_messages["template"]
    ]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "cached_tokens": 0,
    }


def _generate(tools: RunTools, model: str, prompt: list[dict[str, Any]] | str, sampling: dict[str, Any]) -> Generation:
    """The model's answer, waiting while the engine's line is full; RunInterrupted if the worker stops."""
    while True:
        if tools.should_stop():
            raise RunInterrupted
        try:
            return tools.sample(model, prompt, sampling)
        except ServerBusy:
            time.sleep(BUSY_RETRY_SECONDS)


def _sampled(run: EvalRunRow, item: dict[str, Any], tools: RunTools) -> _Outcome:
    """A completions run's item: its prompt sent to the run's model."""
    source, sampling = run.data_source, sampling_of(run.data_source)
    model = source["model"]
    record: dict[str, Any] = {
        "input": [],
        "output": [],
        "finish_reason": "",
        "model": model,
        "usage": _usage(0, 0),
        "error": None,
        "temperature": sampling["temperature"],
        "max_completion_tokens": sampling["max_completion_tokens"],
        "top_p": sampling["top_p"],
        "seed": sampling["seed"],
    }
    try:
        prompt = _prompt(source["input_messages"], item)
        record["input"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        generation = _generate(tools, model, prompt, sampling)
    except GradeFailed as failure:
        record["error"] = {"code": failure.error_type, "message": failure.message}
        return _Outcome(record, None)
    except TunehouseError as exc:  # the model cannot answer this item: an errored item, not a failed run
        record["error"] = {"code": exc.code or "sample_error", "message": exc.message}
        return _Outcome(record, None)
    record.update(
        output=[{"role": "assistant", "content": generation.text}],
        finish_reason=generation.finish_reason,
        usage=_usage(generation.prompt_tokens, generation.completion_tokens),
    )
    return _Outcome(record, Sample.from_text(generation.text), generation)


def _given(sample: dict[str, Any] | None) -> _Outcome:
    """A jsonl run's item: the sample it came with (`output_text`, or a chat completion's `choices`)."""
    sample = sample or {}
    text = sample.get("output_text")
    if text is None:
        choices = sample.get("choices") or [{}]
        text = ((choices[0] or {}).get("message") or {}).get("content")
    text = text if isinstance(text, str) else ("" if text is None else json.dumps(text))
    graded = Sample.from_text(text, sample.get("output_tools"))
    if "output_json" in sample:  # given as such, not parsed from the text
        graded = replace(graded, output_json=sample["output_json"])
    usage = sample.get("usage") or {}
    record = {
        "input": sample.get("input") or [],
        "output": [{"role": "assistant", "content": text}] if sample else [],
        "finish_reason": sample.get("finish_reason") or "",
        "model": sample.get("model") or "",
        "usage": _usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
        "error": None,
        "temperature": sample.get("temperature"),
        "max_completion_tokens": sample.get("max_completion_tokens"),
        "top_p": sample.get("top_p"),
        "seed": sample.get("seed"),
    }
    return _Outcome(record, graded)


def _result(criterion: dict[str, Any], result: GradeResult) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": criterion["id"],
        "type": criterion["type"],
        "score": result.score,
        "passed": result.passed,
        "sample": result.details or None,
    }
    if result.error is not None:
        entry.update(error=result.error, error_type=result.error_type)
    return entry


@dataclass
class _Counters:
    """A run's counters, as the run row holds them; each output item adds to them."""

    result_counts: dict[str, int]
    per_testing_criteria_results: list[dict[str, Any]]
    per_model_usage: list[dict[str, Any]]

    @classmethod
    def of(cls, run: EvalRunRow) -> _Counters:
        return cls(
            dict(run.result_counts),
            [dict(entry) for entry in run.per_testing_criteria_results],
            [dict(entry) for entry in run.per_model_usage],
        )

    def add(
        self, results: list[dict[str, Any]], errored: bool, model: str | None, generation: Generation | None
    ) -> None:
        self.result_counts["total"] += 1
        if errored:
            self.result_counts["errored"] += 1
        elif all(r["passed"] for r in results):
            self.result_counts["passed"] += 1
        else:
            self.result_counts["failed"] += 1
        by_criterion = {entry["testing_criteria"]: entry for entry in self.per_testing_criteria_results}
        for result in results:
            by_criterion[result["name"]]["passed" if result["passed"] else "failed"] += 1
        if model is not None and generation is not None:
            usage = next((u for u in self.per_model_usage if u["model_name"] == model), None)
            if usage is None:
                usage = {"model_name": model, "invocation_count": 0, **_usage(0, 0)}
                self.per_model_usage.append(usage)
            usage["invocation_count"] += 1
            usage["prompt_tokens"] += generation.prompt_tokens
            usage["completion_tokens"] += generation.completion_tokens
            usage["total_tokens"] += generation.prompt_tokens + generation.completion_tokens

    def values(self) -> dict[str, Any]:
        return {
            "result_counts": self.result_counts,
            "per_testing_criteria_results": self.per_testing_criteria_results,
            "per_model_usage": self.per_model_usage,
        }


def _still_running(run_id: str) -> bool:
    current = records.find_run(run_id)
    return current is not None and current.status == "in_progress"


def _grade_entry(
    run: EvalRunRow, criteria: list[dict[str, Any]], entry: SourceEntry, tools: RunTools, counters: _Counters
) -> EvalOutputItemRow:
    outcome = _sampled(run, entry.item, tools) if run.data_source["type"] == "completions" else _given(entry.sample)
    results = []
    if outcome.sample is not None:
        for criterion in criteria:
            result = grade(
                grader_of(criterion),
                item=entry.item,
                sample=outcome.sample,
                call_model=tools.call_model,
                pass_threshold=criterion.get("pass_threshold"),
            )
            results.append(_result(criterion, result))
    errored = outcome.sample is None or any("error" in r for r in results)
    counters.add(results, errored, run.model, outcome.generation)
    return EvalOutputItemRow(
        id=new_id("outputitem_"),
        run_id=run.id,
        eval_id=run.eval_id,
        created_at=int(time.time()),
        status="pass" if results and not errored and all(r["passed"] for r in results) else "fail",
        datasource_item_id=entry.index,
        datasource_item=entry.item,
        sample=outcome.record,
        results=results,
    )


def execute_run(run_id: str, tools: RunTools) -> None:
    """Run a claimed (`in_progress`) run to its end: `completed`, or `failed` when its data source
    cannot be read. Returns early, leaving the run as it is, when it was cancelled or deleted;
    raises RunInterrupted when `tools.should_stop()` turns true between items."""
    run = records.find_run(run_id)
    if run is None or run.status != "in_progress":
        return
    try:
        criteria = records.get_eval(run.eval_id).testing_criteria
        entries = read_entries(run.data_source["source"])
    except TunehouseError as exc:  # its file was deleted, or the eval meanwhile
        error = {"code": exc.code or "invalid_data_source", "message": exc.message}
        records.update_run(run_id, only_if_status={"in_progress"}, status="failed", error=error)
        return
    done = records.done_item_ids(run_id)
    counters = _Counters.of(run)
    for entry in entries:
        if entry.index in done:
            continue
        if tools.should_stop():
            raise RunInterrupted
        if not _still_running(run_id):
            return
        item = _grade_entry(run, criteria, entry, tools, counters)
        if not records.record_output_item(item, counters.values()):
            return
    records.update_run(run_id, only_if_status={"in_progress"}, status="completed")
