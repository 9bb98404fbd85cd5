"""The Evals API through the official SDK: evals, runs the worker executes, their output items.

Every expected count is worked out by hand from items and graders the test controls: jsonl runs
carry their samples, and a completions run's answers are checked against the same model's answers
through `/v1/chat/completions` with the same messages and sampling.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.api.test_schemas import assert_schema
from tests.conftest import TINY_ID, Server, make_home, running_server
from tests.support import write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")  # not here
QA_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
EXACT = {
    "type": "string_check",
    "name": "Exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
FUZZY = {
    "type": "text_similarity",
    "name": "Fuzzy",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
    "pass_threshold": 0.8,
}
DIFFERENT = {**EXACT, "name": "Different", "operation": "ne"}


def make_eval(client: OpenAI, criteria: list[dict[str, Any]] | None = None, **extra: Any) -> Any:
    return client.evals.create(
        name=extra.pop("name", "capitals"),
        data_source_config={"type": "custom", "item_schema": QA_SCHEMA, "include_sample_schema": True},
        testing_criteria=criteria or [EXACT, FUZZY],  # type: ignore[list-item]
        **extra,
    )


def wait_for_run(client: OpenAI, eval_id: str, run_id: str, timeout: float = 240) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in ("completed", "failed", "canceled"):
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} still {run.status} after {timeout}s")


def output_items(client: OpenAI, eval_id: str, run_id: str, **params: Any) -> list[Any]:
    return list(client.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=100, **params))


def by_criterion(run: Any) -> dict[str, tuple[int, int]]:
    """{criterion name: (passed, failed)}; the criterion's id is `{name}-{uuid}`."""
    return {r.testing_criteria.rsplit("-", 5)[0]: (r.passed, r.failed) for r in run.per_testing_criteria_results}


CAPITALS = [
    ("Capital of France?", "Paris", "Paris"),  # exact: pass, fuzzy 1.0: pass
    ("Capital of Italy?", "Rome", "Rome."),  # exact: fail, fuzzy 2*4/9 = 0.89: pass
    ("Capital of Spain?", "Madrid", "Lisbon"),  # exact: fail, fuzzy low: fail
]


def test_a_jsonl_run_grades_the_samples_it_was_given(server: Server, client: OpenAI) -> None:
    evaluation = make_eval(client, metadata={"team": "geo"})
    assert evaluation.id.startswith("eval_") and evaluation.object == "eval"
    assert evaluation.data_source_config.schema_["properties"]["item"] == QA_SCHEMA
    assert "sample" in evaluation.data_source_config.schema_["properties"]
    assert [c.name for c in evaluation.testing_criteria] == ["Exact", "Fuzzy"]
    assert evaluation.testing_criteria[1].pass_threshold == 0.8
    content = [
        {"item": {"question": q, "answer": a}, "sample": {"output_text": out, "model": "someone"}}
        for q, a, out in CAPITALS
    ]
    run = client.evals.runs.create(
        evaluation.id,
        name="given",
        data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}},
    )
    assert run.status == "queued" and run.id.startswith("evalrun_")
    assert run.report_url == f"{server.base_url.removesuffix('/v1')}/#/evals/{evaluation.id}/runs/{run.id}"

    run = wait_for_run(client, evaluation.id, run.id)
    assert run.status == "completed", run.error
    assert run.result_counts.model_dump() == {"total": 3, "errored": 0, "failed": 2, "passed": 1}
    assert by_criterion(run) == {"Exact": (1, 2), "Fuzzy": (2, 1)}
    assert run.per_model_usage == []  # nothing was sampled

    items = output_items(client, evaluation.id, run.id)
    assert [i.datasource_item_id for i in items] == [0, 1, 2]
    assert [i.status for i in items] == ["pass", "fail", "fail"]
    assert items[1].datasource_item == {"question": "Capital of Italy?", "answer": "Rome"}
    assert items[1].sample.output[0].content == "Rome." and items[1].sample.model == "someone"
    exact, fuzzy = items[1].results
    assert (exact.passed, exact.score) == (False, 0.0)
    assert fuzzy.passed and fuzzy.score == pytest.approx(8 / 9)
    assert [i.id for i in output_items(client, evaluation.id, run.id, status="pass")] == [items[0].id]
    one = client.evals.runs.output_items.retrieve(items[2].id, eval_id=evaluation.id, run_id=run.id)
    assert one.sample.output[0].content == "Lisbon" and not one.results[1].passed


def test_a_completions_run_samples_the_served_model_as_chat_would(client: OpenAI) -> None:
    evaluation = make_eval(client, [EXACT, DIFFERENT])
    questions = [("Capital of France?", "Paris"), ("Capital of Peru?", "Lima")]
    template = [
        {"role": "system", "content": "Answer with the city only."},
        {"role": "user", "content": {"type": "input_text", "text": "Q: {{item.question}}"}},
    ]
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "completions",
            "model": TINY_ID,
            "source": {
                "type": "file_content",
                "content": [{"item": {"question": q, "answer": a}} for q, a in questions],
            },
            "input_messages": {"type": "template", "template": template},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 6, "seed": 7},
        },
    )
    assert run.model == TINY_ID and run.name == TINY_ID
    run = wait_for_run(client, evaluation.id, run.id)
    assert run.status == "completed", run.error

    items = output_items(client, evaluation.id, run.id)
    prompt_tokens = completion_tokens = 0
    for item, (question, _) in zip(items, questions, strict=True):
        messages = [
            {"role": "system", "content": "Answer with the city only."},
            {"role": "user", "content": f"Q: {question}"},
        ]
        chat = client.chat.completions.create(model=TINY_ID, messages=messages, temperature=0, max_tokens=6, seed=7)  # type: ignore[arg-type]
        answer = chat.choices[0].message.content
        assert [m.model_dump() for m in item.sample.input] == messages
        assert item.sample.output[0].content == answer and item.sample.model == TINY_ID
        assert item.sample.usage.prompt_tokens == chat.usage.prompt_tokens  # type: ignore[union-attr]
        assert item.sample.usage.completion_tokens == chat.usage.completion_tokens  # type: ignore[union-attr]
        assert (item.sample.temperature, item.sample.max_completion_tokens, item.sample.seed) == (0, 6, 7)
        expected_exact = answer == item.datasource_item["answer"]
        assert [r.passed for r in item.results] == [expected_exact, not expected_exact]
        prompt_tokens += chat.usage.prompt_tokens  # type: ignore[union-attr]
        completion_tokens += chat.usage.completion_tokens  # type: ignore[union-attr]
    (usage,) = run.per_model_usage
    assert (usage.run_model_name, usage.invocation_count) == (TINY_ID, 2)
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens, completion_tokens)
    assert usage.total_tokens == prompt_tokens + completion_tokens
    exact_passes = sum(i.results[0].passed for i in items)
    assert run.result_counts.model_dump() == {
        "total": 2,
        "errored": 0,
        "failed": 2 - exact_passes,
        "passed": exact_passes,
    }


def test_a_run_reads_an_uploaded_jsonl_file_of_items_or_plain_lines(client: OpenAI, tmp_path: Path) -> None:
    evaluation = make_eval(client, [EXACT])
    wrapped = write_jsonl(
        tmp_path / "wrapped.jsonl",
        [{"item": {"question": q, "answer": a}, "sample": {"output_text": out}} for q, a, out in CAPITALS],
    )
    with open(wrapped, "rb") as f:
        file_id = client.files.create(file=f, purpose="evals").id
    run = client.evals.runs.create(
        evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": file_id}}
    )
    run = wait_for_run(client, evaluation.id, run.id)
    assert run.result_counts.model_dump() == {"total": 3, "errored": 0, "failed": 2, "passed": 1}

    # a plain line is the item itself; with no sample the output text is empty
    plain = write_jsonl(
        tmp_path / "plain.jsonl", [{"question": "Empty?", "answer": ""}, {"question": "x", "answer": "y"}]
    )
    with open(plain, "rb") as f:
        file_id = client.files.create(file=f, purpose="fine-tune").id
    run = client.evals.runs.create(
        evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": file_id}}
    )
    run = wait_for_run(client, evaluation.id, run.id)
    assert run.result_counts.model_dump() == {"total": 2, "errored": 0, "failed": 1, "passed": 1}


def test_an_item_the_model_cannot_answer_is_errored_not_the_run(client: OpenAI) -> None:
    evaluation = make_eval(client, [EXACT])
    content = [{"item": {"question": "fine", "answer": "a"}}, {"item": {"question": "x " * 5000, "answer": "b"}}]
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "completions",
            "model": TINY_ID,
            "source": {"type": "file_content", "content": content},
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
            "sampling_params": {"max_completion_tokens": 2},
        },
    )
    run = wait_for_run(client, evaluation.id, run.id)
    assert run.status == "completed"
    assert run.result_counts.errored == 1 and run.result_counts.total == 2
    long = output_items(client, evaluation.id, run.id)[1]
    assert long.status == "fail" and long.results == []
    assert long.sample.error.code == "context_length_exceeded" and "maximum context length" in long.sample.error.message


def test_evals_list_page_update_and_delete(client: OpenAI) -> None:
    made = [make_eval(client, name=f"page-{n}").id for n in range(3)]
    newest = client.evals.list(order="desc", limit=2)
    assert [e.id for e in newest.data] == made[:0:-1] and newest.has_more
    rest = client.evals.list(order="desc", limit=2, after=newest.data[-1].id)
    assert rest.data[0].id == made[0]

    updated = client.evals.update(made[0], name="renamed", metadata={"k": "v"})
    assert (updated.name, updated.metadata) == ("renamed", {"k": "v"})
    assert client.evals.list(order="desc", order_by="updated_at", limit=1).data[0].id == made[0]
    assert client.evals.retrieve(made[0]).name == "renamed"

    deleted = client.evals.delete(made[1])
    assert (deleted.deleted, deleted.eval_id, deleted.object) == (True, made[1], "eval.deleted")
    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve(made[1])


def test_runs_list_delete_and_cancel(server: Server, client: OpenAI) -> None:
    evaluation = make_eval(client, [EXACT])
    content = [{"item": {"question": f"Count to {n}", "answer": str(n)}} for n in range(40)]
    slow = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "completions",
            "model": TINY_ID,
            "source": {"type": "file_content", "content": content},
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
            "sampling_params": {"max_completion_tokens": 48},
        },
    )
    deadline = time.time() + 120
    while not output_items(client, evaluation.id, slow.id) and time.time() < deadline:
        time.sleep(0.2)
    canceled = client.evals.runs.cancel(slow.id, eval_id=evaluation.id)
    assert canceled.status == "canceled"
    time.sleep(2)  # the item being generated when it was cancelled is not written
    kept = output_items(client, evaluation.id, slow.id)
    assert 1 <= len(kept) < 40
    assert client.evals.runs.retrieve(slow.id, eval_id=evaluation.id).result_counts.total == len(kept)
    with pytest.raises(openai.ConflictError):
        client.evals.runs.cancel(slow.id, eval_id=evaluation.id)
    # OpenAI's reference cancels at POST /evals/{eval_id}/runs/{run_id}, the SDK at …/cancel: both are served
    again = httpx.post(
        f"{server.base_url}/evals/{evaluation.id}/runs/{slow.id}", headers={"Authorization": "Bearer sk-local"}
    )
    assert again.status_code == 409 and "already canceled" in again.json()["error"]["message"]

    given = client.evals.runs.create(
        evaluation.id,
        data_source={"type": "jsonl", "source": {"type": "file_content", "content": content[:1]}},
        metadata={"kind": "given"},
    )
    listed = client.evals.runs.list(evaluation.id)
    assert [r.id for r in listed.data] == [slow.id, given.id]  # oldest first, OpenAI's default
    assert [r.id for r in client.evals.runs.list(evaluation.id, status="canceled").data] == [slow.id]
    removed = client.evals.runs.delete(given.id, eval_id=evaluation.id)
    assert (removed.deleted, removed.run_id) == (True, given.id)
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.retrieve(given.id, eval_id=evaluation.id)


def test_unknown_ids_are_404_naming_them(client: OpenAI) -> None:
    evaluation = make_eval(client, [EXACT])
    other = make_eval(client, [EXACT])
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "jsonl",
            "source": {"type": "file_content", "content": [{"item": {"question": "q", "answer": "a"}}]},
        },
    )
    cases = [
        (lambda: client.evals.retrieve("eval_missing"), "eval_id"),
        (lambda: client.evals.delete("eval_missing"), "eval_id"),
        (lambda: client.evals.runs.list("eval_missing"), "eval_id"),
        (lambda: client.evals.runs.retrieve("evalrun_missing", eval_id=evaluation.id), "run_id"),
        (lambda: client.evals.runs.retrieve(run.id, eval_id=other.id), "run_id"),  # a run of another eval
        (
            lambda: client.evals.runs.output_items.retrieve("outputitem_x", eval_id=evaluation.id, run_id=run.id),
            "output_item_id",
        ),
    ]
    for call, param in cases:
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.body["param"] == param  # type: ignore[index]


INVALID_EVALS = [
    ({"data_source_config": {"type": "logs"}}, "data_source_config.type", "not supported"),
    ({"data_source_config": {"type": "stored_completions"}}, "data_source_config.type", "not supported"),
    (
        {"data_source_config": {"type": "custom", "item_schema": {"type": 5}}},
        "data_source_config.item_schema",
        "not a valid JSON schema",
    ),
    ({"testing_criteria": []}, "testing_criteria", "non-empty"),
    (
        {"testing_criteria": [{k: v for k, v in FUZZY.items() if k != "pass_threshold"}]},
        "testing_criteria[0].pass_threshold",
        "Missing",
    ),
    ({"testing_criteria": [EXACT, {**EXACT, "operation": "sort of"}]}, "testing_criteria[1].operation", "eq"),
    ({"testing_criteria": [{**EXACT, "reference": "{{answer}}"}]}, "testing_criteria[0].reference", "item"),
    ({"testing_criteria": [{**EXACT, "pass_threshold": 0.5}]}, "testing_criteria[0].pass_threshold", "does not apply"),
    ({"metadata": {"k": 5}}, "metadata", "values strings"),
]


@pytest.mark.parametrize(("change", "param", "words"), INVALID_EVALS)
def test_invalid_evals_are_a_400_naming_the_field(
    server: Server, change: dict[str, Any], param: str, words: str
) -> None:
    body = {
        "data_source_config": {"type": "custom", "item_schema": QA_SCHEMA},
        "testing_criteria": [EXACT],
        **change,
    }
    response = httpx.post(f"{server.base_url}/evals", json=body, headers={"Authorization": "Bearer sk-local"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


GOOD_ITEM = {"item": {"question": "q", "answer": "a"}}
COMPLETIONS = {
    "type": "completions",
    "model": TINY_ID,
    "source": {"type": "file_content", "content": [GOOD_ITEM]},
    "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
}
INVALID_RUNS = [
    ({"type": "responses", "source": {"type": "responses"}}, 400, "data_source.type", "not supported"),
    ({"type": "jsonl"}, 400, "data_source.source", "Missing"),
    (
        {"type": "jsonl", "source": {"type": "file_content", "content": [GOOD_ITEM, {"item": {"question": "q"}}]}},
        400,
        "data_source.source",
        "content[1].item does not match the eval's item_schema: 'answer' is a required property",
    ),
    ({"type": "jsonl", "source": {"type": "file_id", "id": "file-nope"}}, 404, "data_source.source.id", "file-nope"),
    ({"type": "jsonl", "source": {"type": "stored_completions"}}, 400, "data_source.source.type", "not supported"),
    ({**COMPLETIONS, "model": "no-such-model"}, 404, "data_source.model", "no-such-model"),
    (
        {**COMPLETIONS, "sampling_params": {"tools": [{"type": "function"}]}},
        400,
        "data_source.sampling_params.tools",
        "not supported",
    ),
    ({**COMPLETIONS, "sampling_params": {"temperature": 3}}, 400, "data_source.sampling_params.temperature", "0 to 2"),
    (
        {**COMPLETIONS, "input_messages": {"type": "template", "template": [{"role": "robot", "content": "hi"}]}},
        400,
        "data_source.input_messages.template[0].role",
        "robot",
    ),
    (
        {
            **COMPLETIONS,
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{sample.output_text}}"}]},
        },
        400,
        "data_source.input_messages.template[0].content",
        "item",
    ),
    (
        {**COMPLETIONS, "input_messages": {"type": "item_reference", "item_reference": "question"}},
        400,
        "data_source.input_messages.item_reference",
        "item.",
    ),
]


@pytest.mark.parametrize(("data_source", "status", "param", "words"), INVALID_RUNS)
def test_invalid_runs_are_refused_naming_the_field(
    server: Server, client: OpenAI, data_source: dict[str, Any], status: int, param: str, words: str
) -> None:
    evaluation = make_eval(client, [EXACT])
    response = httpx.post(
        f"{server.base_url}/evals/{evaluation.id}/runs",
        json={"data_source": data_source},
        headers={"Authorization": "Bearer sk-local"},
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_objects_match_openais_schemas(server: Server, client: OpenAI) -> None:
    evaluation = make_eval(client)
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "jsonl",
            "source": {
                "type": "file_content",
                "content": [{"item": {"question": "q", "answer": "a"}, "sample": {"output_text": "a"}}],
            },
        },
    )
    wait_for_run(client, evaluation.id, run.id)
    http = httpx.Client(base_url=server.base_url, headers={"Authorization": "Bearer sk-local"})
    assert_schema(http.get(f"/evals/{evaluation.id}").json(), "Eval")
    assert_schema(http.get("/evals").json(), "EvalList")
    wire_run = http.get(f"/evals/{evaluation.id}/runs/{run.id}").json()
    # OpenAI answers `error: null` (and `model: null` for a run that samples no model), as its own
    # examples show, though its schema types both as required objects/strings.
    assert wire_run["error"] is None and wire_run["model"] is None
    assert_schema({**wire_run, "error": {"code": "", "message": ""}, "model": ""}, "EvalRun")
    item = http.get(f"/evals/{evaluation.id}/runs/{run.id}/output_items").json()["data"][0]
    assert item["sample"]["error"] is None
    assert_schema(
        {
            **item,
            "sample": {
                **item["sample"],
                "error": {"code": "", "message": ""},
                "temperature": 1.0,
                "max_completion_tokens": 1,
                "top_p": 1.0,
                "seed": 0,
            },
        },
        "EvalRunOutputItem",
    )


def test_a_run_in_progress_when_the_server_dies_finishes_after_restart(
    tmp_path: Path, shipped_model_dir: Path, tiny_model_dir: Path
) -> None:
    home = make_home(tmp_path / "home", shipped_model_dir)
    content = [{"item": {"question": f"Say {n}", "answer": str(n)}} for n in range(12)]
    with running_server(home, tiny_model_dir) as first:
        client = first.client()
        evaluation = make_eval(client, [EXACT])
        run = client.evals.runs.create(
            evaluation.id,
            data_source={
                "type": "completions",
                "model": TINY_ID,
                "source": {"type": "file_content", "content": content},
                "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
                "sampling_params": {"max_completion_tokens": 40, "temperature": 0},
            },
        )
        deadline = time.time() + 120
        while len(output_items(client, evaluation.id, run.id)) < 3 and time.time() < deadline:
            time.sleep(0.1)
        assert first.process is not None
        first.process.kill()  # no shutdown at all: the run is left in_progress
        first.process.wait()
    second = Server(home).start()
    try:
        client = second.client()
        done = output_items(client, evaluation.id, run.id)
        assert 3 <= len(done) < 12
        finished = wait_for_run(client, evaluation.id, run.id)
        assert finished.status == "completed"
        items = output_items(client, evaluation.id, run.id)
        assert sorted(i.datasource_item_id for i in items) == list(range(12))  # each item once
        assert {i.id for i in done} <= {i.id for i in items}  # what was written before is kept
        assert finished.result_counts.total == 12
        assert finished.per_model_usage[0].invocation_count == 12  # counted with each written item, once
    finally:
        second.stop()
