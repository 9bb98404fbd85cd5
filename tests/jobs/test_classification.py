"""Classification metrics of real jobs, asked for the way seed 003 asks (`openai api fine_tunes.create …
--compute_classification_metrics --classification_n_classes 2 --classification_positive_class`; raw
HTTP, as the 0.x SDK cannot be installed beside the current one) and through `/fine_tuning/jobs` with
`extra_body`. Every figure in the result file is recomputed here with scikit-learn from the class
probabilities the job's metrics events carry.

One server for the module, logging every job to a local MLflow store as a deployment would.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import BadRequestError, OpenAI
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    fbeta_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from tests.api.test_aliases import openai_0x, run_0x  # noqa: F401  # the 0.28 SDK's venv, a fixture
from tests.conftest import TINY_ID, Server, make_home, running_server
from tests.support import upload_rows, wait_for_job, write_jsonl

POSITIVE = ["great", "lovely", "superb", "wonderful", "brilliant"]
NEGATIVE = ["awful", "dreadful", "terrible", "horrible", "boring"]
BINARY_COLUMNS = [
    "classification/accuracy",
    "classification/precision",
    "classification/recall",
    "classification/auroc",
    "classification/auprc",
    "classification/f1.0",
]


def reviews(n: int, lead: str) -> list[dict[str, Any]]:
    """Sentiment examples whose label follows its keyword directly: a two-layer random model learns
    that within a few epochs (behind a separator, attention must carry the word over: many more)."""
    return [
        {
            "prompt": f"{lead}: {(POSITIVE if i % 2 == 0 else NEGATIVE)[(i // 2) % 5]}",
            "completion": " positive" if i % 2 == 0 else " negative",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tracked_server(
    tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path, tiny_model_dir: Path
) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("classification")
    env = {"TUNEHOUSE_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    with running_server(make_home(root / "home", shipped_model_dir), tiny_model_dir, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(tracked_server: Server) -> OpenAI:
    return tracked_server.client()


@pytest.fixture(scope="module")
def http(tracked_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=tracked_server.base_url, headers={"Authorization": "Bearer sk-local"}, timeout=600
    ) as http:
        yield http


def follow_legacy(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """`openai api fine_tunes.create …`: create, follow the events until the job ends, re-fetch it."""
    created = http.post("/fine-tunes", json=body)
    assert created.status_code == 200, created.text
    fine_tune_id = created.json()["id"]
    with http.stream("GET", f"/fine-tunes/{fine_tune_id}/events", params={"stream": "true"}) as stream:
        assert [line for line in stream.iter_lines() if line.startswith("data: ")][-1] == "data: [DONE]"
    done = http.get(f"/fine-tunes/{fine_tune_id}").json()
    assert done["status"] == "succeeded", done["events"][-1]
    return done


def result_rows(client: OpenAI, file_id: str) -> tuple[list[str], list[dict[str, str]]]:
    """`openai api fine_tunes.results -i ID`: the result file's header and rows."""
    reader = csv.DictReader(io.StringIO(client.files.content(file_id).text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def scored_steps(client: OpenAI, job_id: str) -> dict[int, dict[str, Any]]:
    """The metrics events that carry the validation set's class probabilities, by step."""
    events = client.fine_tuning.jobs.list_events(job_id, limit=1000).data
    data = [e.data for e in events if e.type == "metrics" and isinstance(e.data, dict)]
    return {d["step"]: d for d in data if "classification_predictions" in d}


def sklearn_binary(predictions: dict[str, Any], positive: str, betas: list[float]) -> dict[str, float]:
    """The binary columns, computed here from the probabilities alone (threshold 0.5)."""
    index = predictions["classes"].index(positive)
    truth = [int(label == index) for label in predictions["labels"]]
    scores = [p[index] for p in predictions["probabilities"]]
    predicted = [int(s >= 0.5) for s in scores]
    values = {
        "classification/accuracy": accuracy_score(truth, predicted),
        "classification/precision": precision_score(truth, predicted, zero_division=0),
        "classification/recall": recall_score(truth, predicted, zero_division=0),
        "classification/auroc": roc_auc_score(truth, scores),
        "classification/auprc": average_precision_score(truth, scores),
    }
    for beta in betas:
        values[f"classification/f{float(beta)}"] = fbeta_score(truth, predicted, beta=beta, zero_division=0)
    return values


def assert_rows_match(rows: list[dict[str, str]], steps: dict[int, dict[str, Any]], expected: Any) -> None:
    """Scored rows hold `expected(predictions)`; every other row's classification cells are empty."""
    for row in rows:
        cells = {k: v for k, v in row.items() if k.startswith("classification/")}
        step = int(row["step"])
        if step not in steps:
            assert set(cells.values()) == {""}, row
            continue
        want = expected(steps[step]["classification_predictions"])
        assert {k: float(v) for k, v in cells.items()} == pytest.approx(want), step
        assert {k: steps[step][k] for k in want} == pytest.approx(want), step  # the event's own metrics


def test_seed_003_binary_classifier_through_the_legacy_api(
    http: httpx.Client, client: OpenAI, tracked_server: Server, tmp_path: Path
) -> None:
    training_file = upload_rows(client, tmp_path, reviews(20, "Review"), "train.jsonl")
    validation_file = upload_rows(client, tmp_path, reviews(10, "Critic"), "valid.jsonl")
    done = follow_legacy(
        http,
        {  # what the 0.x CLI sends for seed 003's command (its flags; n_epochs and the rest to train fast)
            "training_file": training_file,
            "validation_file": validation_file,
            "model": TINY_ID,
            "n_epochs": 4,
            "batch_size": 2,
            "learning_rate_multiplier": 25,
            "compute_classification_metrics": True,
            "classification_n_classes": 2,
            "classification_positive_class": "positive",  # seed 003's spelling for " positive"
        },
    )
    assert done["hyperparams"]["compute_classification_metrics"] is True
    assert done["hyperparams"]["classification_n_classes"] == 2

    header, rows = result_rows(client, done["result_files"][0]["id"])
    assert header[-6:] == BINARY_COLUMNS
    steps = scored_steps(client, done["id"])
    assert sorted(steps) == [10, 20, 30, 40]  # the end of each epoch
    assert_rows_match(rows, steps, lambda p: sklearn_binary(p, " positive", [1.0]))

    # the model learned the task: it ranks the positive reviews above the negative ones (chance: 0.5)
    assert float(rows[-1]["classification/auroc"]) >= 0.9
    summaries = [e["message"] for e in done["events"] if "classification on the validation set" in e["message"]]
    assert len(summaries) == 4 and "auroc=" in summaries[-1]

    from mlflow.tracking import MlflowClient

    mlflow = MlflowClient(tracking_uri=tracked_server.env["TUNEHOUSE_MLFLOW_TRACKING_URI"])
    experiment = mlflow.get_experiment_by_name("tunehouse")
    [run] = mlflow.search_runs([experiment.experiment_id], f"tags.`tunehouse.job_id` = '{done['id']}'")
    logged = {m.step: m.value for m in mlflow.get_metric_history(run.info.run_id, "classification/auroc")}
    assert logged == pytest.approx({step: data["classification/auroc"] for step, data in steps.items()})


def test_seed_003_command_with_the_0x_cli_prints_the_binary_columns(
    openai_0x: Path,  # noqa: F811  # the fixture imported above
    tracked_server: Server,
    client: OpenAI,
    tmp_path: Path,
) -> None:
    write_jsonl(tmp_path / "sentiment_train.jsonl", reviews(10, "Review"))
    write_jsonl(tmp_path / "sentiment_valid.jsonl", reviews(6, "Critic"))
    cli = [str(openai_0x.parent / "openai"), "api"]
    created = run_0x(
        openai_0x,
        tracked_server,
        [*cli, "fine_tunes.create", "-t", "sentiment_train.jsonl", "-v", "sentiment_valid.jsonl", "-m", TINY_ID]
        + ["--compute_classification_metrics", "--classification_n_classes", "2"]
        + ["--classification_positive_class", " positive", "--n_epochs", "1"],
        tmp_path,
    )
    assert created.returncode == 0, created.stderr + created.stdout
    assert "classification on the validation set: accuracy=" in created.stdout  # what `follow` printed
    job_id = created.stdout.split("Created fine-tune: ")[1].split()[0]
    results = run_0x(openai_0x, tracked_server, [*cli, "fine_tunes.results", "-i", job_id], tmp_path)
    assert results.returncode == 0, results.stderr
    reader = csv.DictReader(io.StringIO(results.stdout.strip()))
    assert list(reader.fieldnames or [])[-6:] == BINARY_COLUMNS
    steps = scored_steps(client, job_id)
    assert sorted(steps) == [10]  # one epoch of batch 1 (auto: 0.2 % of 10 examples, at least 1)
    assert_rows_match(list(reader), steps, lambda p: sklearn_binary(p, " positive", [1.0]))


def test_multiclass_job_reports_accuracy_and_weighted_f1(http: httpx.Client, client: OpenAI, tmp_path: Path) -> None:
    words = {
        " red": ["cherry", "ruby", "tomato"],
        " green": ["grass", "leaf", "frog"],
        " blue": ["sky", "ocean", "denim"],
    }
    rows_of = [{"prompt": f"Colour of {w}", "completion": c} for c, ws in words.items() for w in ws]
    training_file = upload_rows(client, tmp_path, rows_of + rows_of[::-1], "colours.jsonl")
    validation_file = upload_rows(
        client, tmp_path, [{**r, "prompt": r["prompt"].replace("Colour", "Color")} for r in rows_of], "valid.jsonl"
    )
    done = follow_legacy(
        http,
        {
            "training_file": training_file,
            "validation_file": validation_file,
            "model": TINY_ID,
            "n_epochs": 2,
            "batch_size": 6,
            "compute_classification_metrics": True,
            "classification_n_classes": 3,
        },
    )
    header, rows = result_rows(client, done["result_files"][0]["id"])
    assert header[-2:] == ["classification/accuracy", "classification/weighted_f1_score"]
    assert not [column for column in header if column.startswith("classification/")][:-2]
    steps = scored_steps(client, done["id"])
    assert sorted(steps) == [3, 6]

    def expected(predictions: dict[str, Any]) -> dict[str, float]:
        predicted = [max(range(3), key=p.__getitem__) for p in predictions["probabilities"]]
        return {
            "classification/accuracy": accuracy_score(predictions["labels"], predicted),
            "classification/weighted_f1_score": f1_score(predictions["labels"], predicted, average="weighted"),
        }

    assert steps[3]["classification_predictions"]["classes"] == [" blue", " green", " red"]
    assert_rows_match(rows, steps, expected)


def test_chat_classifier_through_fine_tuning_jobs_with_extra_body(client: OpenAI, tmp_path: Path) -> None:
    def chats(n: int, lead: str) -> list[dict[str, Any]]:
        return [
            {
                "messages": [
                    {"role": "system", "content": "Label the review."},
                    {"role": "user", "content": row["prompt"]},
                    {"role": "assistant", "content": row["completion"].strip()},
                ]
            }
            for row in reviews(n, lead)
        ]

    job = client.fine_tuning.jobs.create(
        model=TINY_ID,
        training_file=upload_rows(client, tmp_path, chats(10, "Review"), "train.jsonl"),
        validation_file=upload_rows(client, tmp_path, chats(6, "Critic"), "valid.jsonl"),
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5}}},
        extra_body={
            "compute_classification_metrics": True,
            "classification_n_classes": 2,
            "classification_positive_class": "positive",
            "classification_betas": [0.5, 2],
        },
    )
    done = wait_for_job(client, job.id)
    assert done.status == "succeeded", done.error
    header, rows = result_rows(client, done.result_files[0])
    assert header[-7:] == [*BINARY_COLUMNS[:5], "classification/f0.5", "classification/f2.0"]
    steps = scored_steps(client, job.id)
    assert sorted(steps) == [2]
    assert steps[2]["classification_predictions"]["classes"] == ["negative", "positive"]
    assert steps[2]["classification_predictions"]["labels"] == [1, 0, 1, 0, 1, 0]
    assert_rows_match(rows, steps, lambda p: sklearn_binary(p, "positive", [0.5, 2.0]))
    [checkpoint] = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoint.metrics.model_extra is not None
    assert checkpoint.metrics.model_extra["classification/accuracy"] == steps[2]["classification/accuracy"]


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    return dict(json.loads(response.text)["error"])


def test_requests_that_cannot_compute_the_metrics_are_refused_naming_the_field(
    http: httpx.Client, client: OpenAI, tmp_path: Path
) -> None:
    training_file = upload_rows(client, tmp_path, reviews(10, "Review"), "train.jsonl")
    validation_file = upload_rows(client, tmp_path, reviews(4, "Critic"), "valid.jsonl")
    legacy = {"training_file": training_file, "model": TINY_ID, "compute_classification_metrics": True}

    error = error_of(http.post("/fine-tunes", json={**legacy, "classification_n_classes": 2}))
    assert error["param"] == "validation_file"
    assert "compute_classification_metrics needs a validation_file" in error["message"]
    with pytest.raises(BadRequestError) as refused:
        client.fine_tuning.jobs.create(
            model=TINY_ID,
            training_file=training_file,
            extra_body={"compute_classification_metrics": True, "classification_n_classes": 2},
        )
    assert refused.value.param == "validation_file"

    legacy["validation_file"] = validation_file
    error = error_of(http.post("/fine-tunes", json={**legacy, "classification_n_classes": 2}))
    assert error["param"] == "classification_positive_class"
    assert error_of(http.post("/fine-tunes", json=legacy))["param"] == "classification_n_classes"
    multiclass = {**legacy, "classification_n_classes": 3}
    assert error_of(http.post("/fine-tunes", json={**multiclass, "classification_betas": [2]}))["param"] == (
        "classification_betas"
    )
    binary = {**legacy, "classification_n_classes": 2, "classification_positive_class": " positive"}
    assert error_of(http.post("/fine-tunes", json={**binary, "classification_betas": [0]}))["param"] == (
        "classification_betas"
    )
    with pytest.raises(BadRequestError) as refused:
        client.fine_tuning.jobs.create(
            model=TINY_ID,
            training_file=training_file,
            validation_file=validation_file,
            method={"type": "dpo"},
            extra_body={"compute_classification_metrics": True, "classification_n_classes": 2},
        )
    assert refused.value.param == "compute_classification_metrics"
    twice = {**legacy, "classification_n_classes": 2, "classification_positive_class": " positive"}
    created = http.post("/fine-tunes", json={**twice, "classification_betas": [1, 1.0, 2]})
    assert created.json()["hyperparams"]["classification_betas"] == [1.0, 2.0]  # one column each
    http.post(f"/fine-tunes/{created.json()['id']}/cancel")
    # the 0.x CLI sends the flag false when it is not given: the other fields are then ignored
    plain = http.post("/fine-tunes", json={**legacy, "compute_classification_metrics": False, "n_epochs": 1})
    assert plain.status_code == 200 and "compute_classification_metrics" not in plain.json()["hyperparams"]
    http.post(f"/fine-tunes/{plain.json()['id']}/cancel")


def test_classes_that_disagree_with_the_files_fail_the_job_while_validating(
    http: httpx.Client, client: OpenAI, tmp_path: Path
) -> None:
    training_file = upload_rows(client, tmp_path, reviews(10, "Review"), "train.jsonl")
    validation_file = upload_rows(client, tmp_path, reviews(4, "Critic"), "valid.jsonl")
    base = {"training_file": training_file, "validation_file": validation_file, "model": TINY_ID}

    three = http.post(
        "/fine-tunes", json={**base, "compute_classification_metrics": True, "classification_n_classes": 3}
    )
    failed = wait_for_job(client, three.json()["id"])
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.param == "classification_n_classes"
    assert "2 distinct labels (' negative', ' positive')" in failed.error.message

    unknown = http.post(
        "/fine-tunes",
        json={
            **base,
            "compute_classification_metrics": True,
            "classification_n_classes": 2,
            "classification_positive_class": "neutral",
        },
    )
    failed = wait_for_job(client, unknown.json()["id"])
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.param == "classification_positive_class"
    assert "' negative', ' positive'" in failed.error.message
