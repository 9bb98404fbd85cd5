"""A job with a validation file gets, when it succeeds, an eval comparing its base and fine-tuned
models on the validation prompts, linked from the job; every figure is recomputed here by hand."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from rapidfuzz import fuzz

from tests.api.test_evals import EXACT, make_eval, output_items, wait_for_run
from tests.conftest import TINY_ID, Server, make_home
from tests.support import chat_rows, upload_rows, wait_for_job

pytestmark = pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")


def linked_eval(client: OpenAI, job_id: str, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        eval_id = (client.fine_tuning.jobs.retrieve(job_id).metadata or {}).get("eval_id")
        if eval_id:
            return eval_id
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} got no eval")


def summary_event(client: OpenAI, job_id: str, eval_id: str, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        found = [e.message for e in events if e.message.startswith(f"Evaluation {eval_id} compares")]
        if found:
            return found[0]
        time.sleep(0.3)
    raise AssertionError("no comparison event")


def rates(items: list[Any]) -> tuple[float, float, float]:
    """(exact-match pass rate, fuzzy pass rate, fuzzy mean score), recomputed from the answers."""
    answers = [(i.sample.output[0].content, i.datasource_item["expected"]) for i in items]
    exact = [float(a == e) for a, e in answers]
    fuzzy = [fuzz.ratio(a, e) / 100 for a, e in answers]
    n = len(answers)
    return sum(exact) / n, sum(f >= 0.8 for f in fuzzy) / n, sum(fuzzy) / n


def test_a_succeeded_job_compares_its_base_and_fine_tuned_model(client: OpenAI, tmp_path: Path) -> None:
    train = upload_rows(client, tmp_path, chat_rows(12), "train.jsonl")
    valid_rows = chat_rows(4, topic="hue")
    valid = upload_rows(client, tmp_path, valid_rows, "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model=TINY_ID, training_file=train, validation_file=valid, hyperparameters={"n_epochs": 2}, metadata={"a": "b"}
    )
    done = wait_for_job(client, job.id)
    assert done.status == "succeeded", done.error
    eval_id = linked_eval(client, job.id)
    assert client.fine_tuning.jobs.retrieve(job.id).metadata == {"a": "b", "eval_id": eval_id}

    evaluation = client.evals.retrieve(eval_id)
    assert evaluation.metadata == {"fine_tuning_job_id": job.id}
    assert [c.name for c in evaluation.testing_criteria] == ["Exact match", "Similarity (fuzzy_match)"]
    base, tuned = client.evals.runs.list(eval_id).data
    assert (base.model, tuned.model) == (TINY_ID, done.fine_tuned_model)
    assert (base.metadata, tuned.metadata) == ({"role": "base"}, {"role": "fine-tuned"})

    runs = [wait_for_run(client, eval_id, run.id) for run in (base, tuned)]
    figures = []
    for run in runs:
        assert run.status == "completed", run.error
        items = output_items(client, eval_id, run.id)
        assert [i.datasource_item["expected"] for i in items] == [r["messages"][-1]["content"] for r in valid_rows]
        assert [m.content for m in items[0].sample.input] == [m["content"] for m in valid_rows[0]["messages"][:-1]]
        assert items[0].sample.temperature == 0
        exact_rate, fuzzy_rate, fuzzy_mean = rates(items)
        assert run.result_counts.total == 4 and run.result_counts.errored == 0
        assert [(r.passed, r.failed) for r in run.per_testing_criteria_results] == [
            (round(exact_rate * 4), 4 - round(exact_rate * 4)),
            (round(fuzzy_rate * 4), 4 - round(fuzzy_rate * 4)),
        ]
        figures.append((exact_rate, fuzzy_rate, fuzzy_mean))
    (b_exact, b_fuzzy, b_mean), (t_exact, t_fuzzy, t_mean) = figures
    message = summary_event(client, job.id, eval_id)
    assert message == (
        f"Evaluation {eval_id} compares base and fine-tuned on 4 validation examples: "
        f"Exact match {b_exact:.0%} → {t_exact:.0%} passed (mean score {b_exact:.2f} → {t_exact:.2f}); "
        f"Similarity (fuzzy_match) {b_fuzzy:.0%} → {t_fuzzy:.0%} passed (mean score {b_mean:.2f} → {t_mean:.2f})."
    )


def test_a_legacy_job_is_evaluated_on_its_raw_prompts(client: OpenAI, tmp_path: Path) -> None:
    rows = [{"prompt": f"Item {i} colour ->", "completion": f" {['red', 'blue'][i % 2]}"} for i in range(10)]
    train = upload_rows(client, tmp_path, rows, "train.jsonl")
    valid = upload_rows(client, tmp_path, rows[:3], "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model=TINY_ID, training_file=train, validation_file=valid, hyperparameters={"n_epochs": 1}
    )
    assert wait_for_job(client, job.id).status == "succeeded"
    eval_id = linked_eval(client, job.id)
    tuned = client.evals.runs.list(eval_id).data[1]
    tuned = wait_for_run(client, eval_id, tuned.id)
    items = output_items(client, eval_id, tuned.id)
    assert [i.datasource_item for i in items] == [{"input": r["prompt"], "expected": r["completion"]} for r in rows[:3]]
    for item in items:
        # the raw prompt, as /v1/completions continues it: no chat template around it
        reply = client.completions.create(
            model=tuned.model,
            prompt=item.datasource_item["input"],
            temperature=0,
            max_tokens=item.sample.max_completion_tokens,
            seed=item.sample.seed,
        )
        assert item.sample.output[0].content == reply.choices[0].text
        assert item.sample.usage.prompt_tokens == reply.usage.prompt_tokens  # type: ignore[union-attr]


def test_a_classifier_job_compares_the_classification_metrics_of_both_models(client: OpenAI, tmp_path: Path) -> None:
    labels = [" positive", " negative"]
    rows = [
        {"prompt": f"Review {i}: {'great' if i % 2 == 0 else 'awful'} ->", "completion": labels[i % 2]}
        for i in range(12)
    ]
    train = upload_rows(client, tmp_path, rows[:10], "train.jsonl")
    valid = upload_rows(client, tmp_path, rows[8:], "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model=TINY_ID,
        training_file=train,
        validation_file=valid,
        hyperparameters={"n_epochs": 1},
        extra_body={
            "compute_classification_metrics": True,
            "classification_n_classes": 2,
            "classification_positive_class": "positive",
        },
    )
    assert wait_for_job(client, job.id).status == "succeeded"
    eval_id = linked_eval(client, job.id)
    message = summary_event(client, job.id, eval_id)
    accuracies = []
    for run in client.evals.runs.list(eval_id).data:
        items = output_items(client, eval_id, run.id)
        truth = [i.datasource_item["expected"] == " positive" for i in items]
        # an answer is its class when it is one (up to surrounding spaces); anything else is wrong
        predicted = [
            (i.sample.output[0].content.strip() == "positive")
            if i.sample.output[0].content.strip() in ("positive", "negative")
            else not t
            for i, t in zip(items, truth, strict=True)
        ]
        accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(items)
        assert run.metadata["classification/accuracy"] == f"{accuracy:.4f}"
        assert "classification/f1.0" in run.metadata and "classification/auroc" not in run.metadata
        accuracies.append(accuracy)
    assert f"classification/accuracy {accuracies[0]:.2f} → {accuracies[1]:.2f}" in message


def test_a_worker_without_the_api_runs_eval_runs_on_an_engine_of_its_own(
    tmp_path: Path, shipped_model_dir: Path, tiny_model_dir: Path
) -> None:
    home = make_home(tmp_path / "home", shipped_model_dir)
    api = Server(home)
    assert api.cli("models", "add", TINY_ID, str(tiny_model_dir)).returncode == 0
    command = [sys.executable, "-m", "tunehouse.cli.main"]
    with open(api.log, "ab") as log:
        api.process = subprocess.Popen(
            [*command, "serve", "--port", str(api.port), "--no-worker"], env=api.env, stdout=log, stderr=log
        )
        worker = subprocess.Popen([*command, "worker"], env=api.env, stdout=log, stderr=log)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{api.port}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        client = api.client()
        evaluation = make_eval(client, [EXACT])
        run = client.evals.runs.create(
            evaluation.id,
            data_source={
                "type": "completions",
                "model": TINY_ID,
                "source": {"type": "file_content", "content": [{"item": {"question": "Hi", "answer": "x"}}]},
                "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
                "sampling_params": {"max_completion_tokens": 3},
            },
        )
        finished = wait_for_run(client, evaluation.id, run.id)
        assert finished.status == "completed" and finished.per_model_usage[0].invocation_count == 1
    finally:
        worker.terminate()
        api.stop()
        worker.wait(timeout=30)
