"""`tunehouse eval MODEL [MODEL...] --file valid.jsonl`: answer held-out prompts with each model on a
server and compare them side by side, as a job's own base-vs-fine-tuned eval does.

It builds the items from the file (`tunehouse.eval.heldout`: each example's prompt and expected
answer), uploads them, creates one eval and one run per model through the Evals API, follows the
runs with a progress bar, then prints a table of prompt / expected / each model's answer and
whether it passed, and each grader's scores per model.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from openai import OpenAI
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tunehouse.cli.client import DEFAULT_BASE_URL, ApiKey, AsJson, BaseUrl, api_errors, console, err_console, fail
from tunehouse.cli.client import make_client as make_openai_client
from tunehouse.cli.files import upload_file
from tunehouse.data.reader import iter_examples
from tunehouse.eval.compare import CriterionScore, criterion_scores
from tunehouse.eval.heldout import (
    DEFAULT_GRADERS,
    DEFAULT_THRESHOLD,
    GRADER_NAMES,
    INPUT_MESSAGES,
    ITEM_SCHEMA,
    answer_tokens,
    comparison_criteria,
    heldout_items,
)

RUN_ENDED = {"completed", "failed", "canceled"}
POLL_SECONDS = 0.5
CELL = 60  # characters of a prompt or an answer shown in the table


def _short(text: str) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= CELL else text[: CELL - 1] + "…"


def _prompt_text(item: dict[str, Any]) -> str:
    """What the table shows of an item's prompt: a raw prompt, or its last user message."""
    prompt = item["input"]
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt[-1]["content"]


def _items(path: Path, limit: int | None) -> list[dict[str, Any]]:
    if not path.is_file():
        fail(f"No such file: {path}")
    items = heldout_items((example for _, example in iter_examples(path)), limit)
    if not items:
        fail(f"{path} has no example with an answer to compare against (a chat reply, or a completion).")
    return items


def _upload_items(client: OpenAI, path: Path, items: list[dict[str, Any]]) -> str:
    with tempfile.TemporaryDirectory() as folder:
        staged = Path(folder) / f"{path.stem}.eval-items.jsonl"
        staged.write_text("".join(json.dumps({"item": item}, ensure_ascii=False) + "\n" for item in items))
        file, _ = upload_file(client, staged, "evals", reuse=False)
    return file.id


def _follow(client: OpenAI, eval_id: str, runs: list[Any], total: int) -> list[Any]:
    """Poll the runs until each has ended, one progress bar per model; Ctrl-C cancels them."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err_console) as bar:
            tasks = [bar.add_task(run.model, total=total) for run in runs]
            while True:
                runs = [client.evals.runs.retrieve(run.id, eval_id=eval_id) for run in runs]
                for task, run in zip(tasks, runs, strict=True):
                    bar.update(task, completed=run.result_counts.total)
                if all(run.status in RUN_ENDED for run in runs):
                    return runs
                time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        for run in runs:
            if run.status not in RUN_ENDED:
                client.evals.runs.cancel(run.id, eval_id=eval_id)
        fail("Interrupted: the runs were canceled.", code=130)


def _answers_table(items: list[dict[str, Any]], runs: list[Any], outputs: list[list[Any]]) -> Table:
    table = Table("#", "prompt", "expected", show_lines=False)
    for run in runs:
        table.add_column(f"{run.model}")
        table.add_column("pass")
    by_run = [{o.datasource_item_id: o for o in run_outputs} for run_outputs in outputs]
    for index, item in enumerate(items):
        cells = [str(index + 1), _short(_prompt_text(item)), _short(item["expected"])]
        for found in by_run:
            output = found.get(index)
            if output is None:
                cells += ["-", "-"]
            elif output.sample.error is not None:
                cells += [f"error: {output.sample.error.message}", "✗"]
            else:
                cells += [_short(output.sample.output[0].content), "✓" if output.status == "pass" else "✗"]
        table.add_row(*cells, end_section=False)
    return table


def _scores_table(runs: list[Any], scores: list[list[CriterionScore]]) -> Table:
    table = Table("grader", *(run.model for run in runs))
    for index, criterion in enumerate(scores[0]):
        row = [criterion.name]
        for run_scores in scores:
            score = run_scores[index]
            row.append(f"{score.pass_rate:.0%} passed ({score.passed}/{score.graded}), mean {score.mean_score:.2f}")
        table.add_row(*row)
    return table


def evaluate(
    models: Annotated[list[str], typer.Argument(help="The models to compare, e.g. a base model and its fine-tune.")],
    file: Annotated[Path, typer.Option("--file", "-f", help="A local JSONL file of held-out examples.")],
    grader: Annotated[
        list[str] | None,
        typer.Option("--grader", "-g", help=f"Repeat for several: {', '.join(GRADER_NAMES)}."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="Only the first N examples.")] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", min=0.0, max=1.0, help="Pass mark of the similarity graders.")
    ] = DEFAULT_THRESHOLD,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", min=1, help="Answer length limit (default: fits the longest answer).")
    ] = None,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, max=2.0)] = 0.0,
    seed: Annotated[int, typer.Option("--seed")] = 42,
    as_json: AsJson = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Answer a file's held-out prompts with each MODEL and compare them: a table of answers, then scores."""
    with api_errors():
        criteria = comparison_criteria(grader or DEFAULT_GRADERS, threshold)
        items = _items(file, limit)
        client = make_openai_client(base_url, api_key)
        file_id = _upload_items(client, file, items)
        evaluation = client.evals.create(
            name=f"tunehouse eval {file.name}: {' vs '.join(models)}",
            data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
            testing_criteria=criteria,  # type: ignore[arg-type]  # checked dicts, not the SDK's TypedDicts
            metadata={"source": "tunehouse eval", "file": file.name[:512]},
        )
        sampling = {
            "temperature": temperature,
            "max_completion_tokens": max_tokens or answer_tokens(items),
            "seed": seed,
        }
        runs = []
        for model in models:
            source: Any = {  # the SDK's TypedDicts do not narrow a union this deep; the server checks it
                "type": "completions",
                "model": model,
                "source": {"type": "file_id", "id": file_id},
                "input_messages": INPUT_MESSAGES,
                "sampling_params": sampling,
            }
            runs.append(client.evals.runs.create(evaluation.id, name=model, data_source=source))
        err_console.print(f"Eval {evaluation.id}: {len(items)} examples, {len(models)} models", markup=False)
        runs = _follow(client, evaluation.id, runs, len(items))
        outputs = [list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, limit=100)) for run in runs]
    stored = [criterion.model_dump() for criterion in evaluation.testing_criteria]  # with their ids
    scores = [criterion_scores(stored, ([r.model_dump() for r in o.results] for o in found)) for found in outputs]
    failed = [run for run in runs if run.status != "completed"]
    if as_json:
        summary = {
            "eval_id": evaluation.id,
            "runs": [
                {
                    "id": run.id,
                    "model": run.model,
                    "status": run.status,
                    "report_url": run.report_url,
                    "result_counts": run.result_counts.model_dump(),
                    "scores": {s.name: {"pass_rate": s.pass_rate, "mean_score": s.mean_score} for s in run_scores},
                    "answers": [o.sample.output[0].content if o.sample.output else None for o in run_outputs],
                }
                for run, run_scores, run_outputs in zip(runs, scores, outputs, strict=True)
            ],
        }
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        console.print(_answers_table(items, runs, outputs))
        console.print(_scores_table(runs, scores))
        for run in runs:
            console.print(f"{run.model}: {run.status} · {run.report_url}", markup=False)
    if failed:
        fail(
            "; ".join(
                f"run {run.id} ({run.model}) {run.status}: {run.error.message if run.error else ''}" for run in failed
            )
        )
