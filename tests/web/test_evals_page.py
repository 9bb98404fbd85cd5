"""The dashboard's eval pages in headless Chromium: a job's base-vs-fine-tuned eval, reached from the
job page and from a run's `report_url`, shows every prompt, expected answer, both answers and the
scores, each checked against the API. Fixtures and skips as in `test_dashboard.py`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from playwright.sync_api import Page

from tests.conftest import TINY_ID, Server
from tests.support import chat_rows, upload_rows, wait_for_job
from tests.web.test_dashboard import SCREENSHOTS, browser, origin, page, web_client, web_server  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")
VALID_ROWS = chat_rows(3, topic="tint")


@pytest.fixture(scope="module")
def evaluated_job(web_client: OpenAI, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str, list[Any]]:  # noqa: F811
    """A succeeded job, its eval's id and the eval's two runs, ended."""
    tmp = tmp_path_factory.mktemp("web-eval")
    train = upload_rows(web_client, tmp, chat_rows(10), "train.jsonl")
    valid = upload_rows(web_client, tmp, VALID_ROWS, "valid.jsonl")
    job = web_client.fine_tuning.jobs.create(
        model=TINY_ID, training_file=train, validation_file=valid, hyperparameters={"n_epochs": 1}
    )
    done = wait_for_job(web_client, job.id)
    assert done.status == "succeeded", done.error
    deadline = time.time() + 180
    while time.time() < deadline:
        eval_id = (web_client.fine_tuning.jobs.retrieve(job.id).metadata or {}).get("eval_id")
        runs = web_client.evals.runs.list(eval_id).data if eval_id else []
        if len(runs) == 2 and all(r.status == "completed" for r in runs):
            return done, eval_id, runs
        time.sleep(0.5)
    raise AssertionError("the job's eval did not complete")


def outputs_of(client: OpenAI, eval_id: str, run_id: str) -> list[Any]:
    return list(client.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=100))


def test_the_job_page_links_its_eval_which_shows_both_models_side_by_side(
    web_server: Server,  # noqa: F811
    web_client: OpenAI,  # noqa: F811
    evaluated_job: tuple[Any, str, list[Any]],
    page: Page,  # noqa: F811
) -> None:
    job, eval_id, runs = evaluated_job
    page.goto(f"{origin(web_server)}/#/jobs/{job.id}")
    page.wait_for_selector("#job-eval", timeout=30_000)
    page.click("#job-eval")
    page.wait_for_selector("#view[data-loaded='true'] #eval-items tr[data-item='2']", timeout=30_000)
    assert job.id in page.inner_text("#eval-header")
    assert page.locator("#eval-header tr[data-run] .status.completed").count() == 2

    outputs = [outputs_of(web_client, eval_id, run.id) for run in runs]
    headers = page.locator("#eval-items th").all_inner_texts()
    assert headers == ["#", "PROMPT", "EXPECTED", TINY_ID.upper(), "PASS", job.fine_tuned_model.upper(), "PASS"]
    for index, row in enumerate(VALID_ROWS):
        cells = page.locator(f"#eval-items tr[data-item='{index}'] td").all_inner_texts()
        assert cells[1] == row["messages"][1]["content"] and cells[2] == row["messages"][2]["content"]
        for column, run_outputs in ((3, outputs[0]), (5, outputs[1])):
            output = run_outputs[index]
            answer = output.sample.output[0].content
            assert cells[column].strip() == (answer.strip() or f"(blank{f': {json.dumps(answer)}' if answer else ''})")
            assert cells[column + 1] == ("✓" if output.status == "pass" else "✗")

    for criterion in ("Exact match", "Similarity (fuzzy_match)"):
        shown = page.locator(f"#eval-scores tr[data-criterion='{criterion}'] td").all_inner_texts()
        for text, run_outputs in zip(shown[1:], outputs, strict=True):
            results = [r for o in run_outputs for r in o.results if r.name.startswith(criterion)]
            passed = sum(r.passed for r in results)
            mean = sum(r.score for r in results) / len(results)
            assert f"passed ({passed}/3) · mean {mean:.2f}" in text
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "eval-page.png"), full_page=True)


def test_a_runs_report_url_opens_it_first_and_the_list_names_the_job(
    web_server: Server,  # noqa: F811
    evaluated_job: tuple[Any, str, list[Any]],
    page: Page,  # noqa: F811
) -> None:
    job, eval_id, runs = evaluated_job
    tuned = runs[1]
    assert tuned.report_url == f"{origin(web_server)}/#/evals/{eval_id}/runs/{tuned.id}"
    page.goto(tuned.report_url)
    page.wait_for_selector("#view[data-loaded='true'] #eval-items tr[data-item='0']", timeout=30_000)
    assert page.get_attribute("#eval-header tr[data-run]", "data-run") == tuned.id  # the chosen run first
    assert page.locator("#eval-items th").all_inner_texts()[3] == job.fine_tuned_model.upper()

    page.goto(f"{origin(web_server)}/#/evals")
    page.wait_for_selector(f"tr[data-eval='{eval_id}']", timeout=30_000)
    row = page.inner_text(f"tr[data-eval='{eval_id}']")
    assert job.id in row and "Exact match" in row


def test_a_classifier_jobs_eval_shows_both_models_classification_metrics(
    web_server: Server,  # noqa: F811
    web_client: OpenAI,  # noqa: F811
    page: Page,  # noqa: F811
    tmp_path: Path,
) -> None:
    rows = [
        {"prompt": f"Review {i}: {'fine' if i % 2 else 'poor'} ->", "completion": [" good", " bad"][i % 2]}
        for i in range(12)
    ]
    job = web_client.fine_tuning.jobs.create(
        model=TINY_ID,
        training_file=upload_rows(web_client, tmp_path, rows[:10], "train.jsonl"),
        validation_file=upload_rows(web_client, tmp_path, rows[8:], "valid.jsonl"),
        hyperparameters={"n_epochs": 1},
        extra_body={
            "compute_classification_metrics": True,
            "classification_n_classes": 2,
            "classification_positive_class": " good",
        },
    )
    assert wait_for_job(web_client, job.id).status == "succeeded"
    deadline = time.time() + 180
    runs: list[Any] = []
    while time.time() < deadline:
        eval_id = (web_client.fine_tuning.jobs.retrieve(job.id).metadata or {}).get("eval_id")
        runs = web_client.evals.runs.list(eval_id).data if eval_id else []
        if len(runs) == 2 and all("classification/accuracy" in (r.metadata or {}) for r in runs):
            break
        time.sleep(0.5)
    assert runs and all("classification/accuracy" in (r.metadata or {}) for r in runs), runs
    page.goto(runs[0].report_url)
    page.wait_for_selector("#view[data-loaded='true'] tr[data-metric='classification/accuracy']", timeout=30_000)
    for metric in ("classification/accuracy", "classification/f1.0"):
        shown = page.locator(f"tr[data-metric='{metric}'] td").all_inner_texts()
        assert shown == [metric, *(f"{float(r.metadata[metric]):.3f}" for r in runs)]
