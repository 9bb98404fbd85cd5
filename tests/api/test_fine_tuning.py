"""Fine-tuning jobs end to end through the openai SDK (seed 002's calls), on a tiny random Llama."""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY_ID, Server
from tests.support import add_broken_model, chat_rows, upload_rows, wait_for_job

SUPERVISED_2_EPOCHS = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}


def all_events(client: OpenAI, job_id: str) -> list:
    return list(client.fine_tuning.jobs.list_events(job_id, limit=100))  # iterating pages through all


def test_job_lifecycle_model_checkpoints_results_and_delete(client: OpenAI, tmp_path: Path) -> None:
    train = upload_rows(client, tmp_path, chat_rows(12), "train.jsonl")
    valid = upload_rows(client, tmp_path, chat_rows(4, topic="shade"), "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model=TINY_ID,
        training_file=train,
        validation_file=valid,
        suffix="colours",
        seed=11,
        metadata={"team": "docs"},
        method=SUPERVISED_2_EPOCHS,
    )
    assert job.id.startswith("ftjob-")
    assert job.status == "validating_files"
    assert job.hyperparameters.n_epochs == 2
    assert job.metadata == {"team": "docs"}

    done = wait_for_job(client, job.id)
    assert done.status == "succeeded", done.error
    assert re.fullmatch(rf"ft:{TINY_ID}:tunehouse:colours:[A-Za-z0-9]{{8}}", done.fine_tuned_model)
    assert done.trained_tokens > 0
    assert done.finished_at >= done.created_at
    assert done.hyperparameters.batch_size == 1  # auto, resolved from 12 examples
    assert done.method.supervised.hyperparameters.n_epochs == 2

    events = all_events(client, job.id)
    assert events[-1].message == f"Created fine-tuning job: {job.id}"  # newest first
    training = [e for e in events if "eval_id" not in (e.data or {})]  # the base-vs-fine-tuned eval's follow
    assert training[0].message == "The job has successfully completed"
    assert f"New fine-tuned model created: {done.fine_tuned_model}" in [e.message for e in events]
    metrics = [e for e in events if e.type == "metrics"]
    assert len(metrics) == 24  # 12 examples × 2 epochs at batch 1
    last = metrics[0].data
    assert last["step"] == 24 and last["total_steps"] == 24
    assert {"train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"} <= set(last)
    assert "full_valid_loss" in last  # measured on the whole validation set at each epoch's end
    assert re.fullmatch(r"Step 24/24: training loss=\d+\.\d\d, validation loss=.*", metrics[0].message)

    page = client.fine_tuning.jobs.list_events(job.id, limit=3)
    older = client.fine_tuning.jobs.list_events(job.id, limit=3, after=page.data[-1].id)
    assert [e.id for e in page.data + older.data] == [e.id for e in events[:6]]

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [24, 12]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-24"
    assert checkpoints[1].metrics.train_loss is not None

    [result_id] = done.result_files
    result_file = client.files.retrieve(result_id)
    assert result_file.purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(client.files.content(result_id).text)))
    assert list(rows[0])[:5] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert [int(r["step"]) for r in rows] == list(range(1, 25))

    for model in (done.fine_tuned_model, checkpoints[1].fine_tuned_model_checkpoint):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "What is the colour of item 3?"}], max_tokens=5
        )
        assert reply.model == model and reply.choices[0].message.content is not None

    assert done.fine_tuned_model in [m.id for m in client.models.list()]
    assert client.models.retrieve(done.fine_tuned_model).owned_by == "tunehouse"
    assert client.models.delete(done.fine_tuned_model).deleted
    assert done.fine_tuned_model not in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])


def test_auto_hyperparameters_are_resolved_and_written_back(client: OpenAI, tmp_path: Path) -> None:
    train = upload_rows(client, tmp_path, chat_rows(20))
    job = client.fine_tuning.jobs.create(model=TINY_ID, training_file=train)
    assert job.hyperparameters.n_epochs == "auto"
    done = wait_for_job(client, job.id)
    assert done.status == "succeeded", done.error
    # OpenAI's rule: 3 epochs unless 3 × N < 100, then min(25, 100 // N) → 5 for 20 examples.
    assert done.hyperparameters.n_epochs == 5
    assert done.hyperparameters.batch_size == 1
    assert done.hyperparameters.learning_rate_multiplier == 1.0


def test_same_seed_gives_the_same_loss_curve(client: OpenAI, tmp_path: Path) -> None:
    train = upload_rows(client, tmp_path, chat_rows(12))
    curves = []
    for _ in range(2):
        job = client.fine_tuning.jobs.create(
            model=TINY_ID, training_file=train, seed=1234, hyperparameters={"n_epochs": 1}
        )
        assert wait_for_job(client, job.id).status == "succeeded"
        events = all_events(client, job.id)
        curves.append([e.data["train_loss"] for e in events if e.type == "metrics"])
    assert curves[0] == curves[1]
    assert len(curves[0]) == 12


def test_legacy_prompt_completion_job(client: OpenAI, tmp_path: Path) -> None:
    rows = [{"prompt": f"Item {i} colour ->", "completion": f" {['red', 'blue'][i % 2]}\n"} for i in range(10)]
    job = client.fine_tuning.jobs.create(
        model=TINY_ID, training_file=upload_rows(client, tmp_path, rows), hyperparameters={"n_epochs": 1}
    )
    done = wait_for_job(client, job.id)
    assert done.status == "succeeded", done.error
    reply = client.completions.create(model=done.fine_tuned_model, prompt="Item 3 colour ->", max_tokens=3, stop=["\n"])
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_bad_training_file_fails_the_job_naming_the_line(client: OpenAI, tmp_path: Path) -> None:
    rows = chat_rows(12)
    rows[2]["messages"][1]["role"] = "robot"
    job = client.fine_tuning.jobs.create(model=TINY_ID, training_file=upload_rows(client, tmp_path, rows))
    done = wait_for_job(client, job.id)
    assert done.status == "failed"
    assert done.error.param == "training_file"
    assert done.error.code == "invalid_training_file"
    assert "line 3" in done.error.message and "robot" in done.error.message
    assert done.fine_tuned_model is None
    assert any(e.level == "error" for e in all_events(client, job.id))


def test_too_few_examples_fails_the_job(client: OpenAI, tmp_path: Path) -> None:
    job = client.fine_tuning.jobs.create(model=TINY_ID, training_file=upload_rows(client, tmp_path, chat_rows(3)))
    done = wait_for_job(client, job.id)
    assert done.status == "failed"
    assert "10" in done.error.message


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"model": "no-such-base"}, openai.NotFoundError, "model"),
        ({"training_file": "file-missing"}, openai.NotFoundError, "training_file"),
        ({"validation_file": "file-missing"}, openai.NotFoundError, "validation_file"),
        ({"hyperparameters": {"n_epochs": 0}}, openai.BadRequestError, "method.supervised.hyperparameters.n_epochs"),
        (
            {"hyperparameters": {"batch_size": "big"}},
            openai.BadRequestError,
            "method.supervised.hyperparameters.batch_size",
        ),
        (
            {"hyperparameters": {"learning_rate_multiplier": -1}},
            openai.BadRequestError,
            "method.supervised.hyperparameters.learning_rate_multiplier",
        ),
        ({"method": {"type": "reinforcement"}}, openai.BadRequestError, "method.type"),
        ({"suffix": "x" * 65}, openai.BadRequestError, "suffix"),
        ({"seed": -1}, openai.BadRequestError, "seed"),
        ({"extra_body": {"training": {"share_prefix": "yes"}}}, openai.BadRequestError, "training.share_prefix"),
    ],
)
def test_invalid_job_requests_are_rejected_naming_the_field(
    client: OpenAI, tmp_path: Path, kwargs: dict, error: type, param: str
) -> None:
    request = {"model": TINY_ID, "training_file": upload_rows(client, tmp_path, chat_rows(10)), **kwargs}
    with pytest.raises(error) as err:
        client.fine_tuning.jobs.create(**request)
    assert err.value.param == param


def test_training_file_must_have_fine_tune_purpose(client: OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    path.write_text('{"messages": []}\n')
    with open(path, "rb") as f:
        batch_file = client.files.create(file=f, purpose="batch").id
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=TINY_ID, training_file=batch_file)
    assert err.value.param == "training_file"


def test_cancel_stops_training_quickly_and_api_stays_responsive(client: OpenAI, tmp_path: Path) -> None:
    train = upload_rows(client, tmp_path, chat_rows(12))
    job = client.fine_tuning.jobs.create(model=TINY_ID, training_file=train, hyperparameters={"n_epochs": 50})
    running = wait_for_job(client, job.id, until={"running"})
    while not any(e.type == "metrics" for e in all_events(client, job.id)):
        time.sleep(0.2)
    started = time.time()
    client.models.list()
    assert time.time() - started < 2  # the trainer runs in its own process
    cancelled = client.fine_tuning.jobs.cancel(running.id)
    assert cancelled.status == "cancelled"
    time.sleep(4)
    steps_after = len([e for e in all_events(client, job.id) if e.type == "metrics"])
    time.sleep(2)
    assert len([e for e in all_events(client, job.id) if e.type == "metrics"]) == steps_after  # it stopped
    final = client.fine_tuning.jobs.retrieve(job.id)
    assert final.status == "cancelled" and final.fine_tuned_model is None
    assert "Job was cancelled" in [e.message for e in all_events(client, job.id)]
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)


def test_list_jobs_pages_and_filters_by_metadata(client: OpenAI, tmp_path: Path) -> None:
    train = upload_rows(client, tmp_path, chat_rows(10))
    ids = [
        client.fine_tuning.jobs.create(
            model=TINY_ID,
            training_file=train,
            metadata={"batch": "listing", "i": str(i)},
            hyperparameters={"n_epochs": 1},
        ).id
        for i in range(3)
    ]
    for job_id in ids:
        wait_for_job(client, job_id)
    first = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first.data] == [ids[2], ids[1]] and first.has_more
    second = client.fine_tuning.jobs.list(limit=2, after=ids[1])
    assert second.data[0].id == ids[0]
    filtered = client.fine_tuning.jobs.list(metadata={"i": "1"})
    assert [j.id for j in filtered.data] == [ids[1]]


def test_a_trainer_crash_fails_only_that_job(server: Server, client: OpenAI, tmp_path: Path) -> None:
    add_broken_model(server, tmp_path, "broken-model")
    job = client.fine_tuning.jobs.create(
        model="broken-model", training_file=upload_rows(client, tmp_path, chat_rows(10))
    )
    done = wait_for_job(client, job.id)
    assert done.status == "failed"
    assert done.error.code == "training_failed"
    assert client.models.retrieve(TINY_ID).id == TINY_ID  # the server is fine


def test_unknown_job_is_404(client: OpenAI) -> None:
    for call in (client.fine_tuning.jobs.retrieve, client.fine_tuning.jobs.cancel, client.fine_tuning.jobs.list_events):
        with pytest.raises(openai.NotFoundError):
            call("ftjob-nope")


def test_full_fine_tuning_job_serves_its_own_weights(client: OpenAI, tmp_path: Path) -> None:
    job = client.fine_tuning.jobs.create(
        model=TINY_ID,
        training_file=upload_rows(client, tmp_path, chat_rows(10)),
        hyperparameters={"n_epochs": 1},
        extra_body={"training": {"adapter": "full"}},
    )
    done = wait_for_job(client, job.id)
    assert done.status == "succeeded", done.error
    reply = client.chat.completions.create(
        model=done.fine_tuned_model,
        messages=[{"role": "user", "content": "What is the colour of item 1?"}],
        max_tokens=4,
    )
    assert reply.choices[0].message.content is not None
    events = [e.message for e in all_events(client, job.id)]
    assert any("full fine-tuning" in m for m in events)


@pytest.fixture(scope="module")
def ten_examples(client: OpenAI, tmp_path_factory: pytest.TempPathFactory) -> str:
    return upload_rows(client, tmp_path_factory.mktemp("options"), chat_rows(10))


@pytest.mark.parametrize(
    ("training", "param", "says"),
    [
        ({"lora_r": -4}, "training.lora_r", "from 1 to 1024"),
        ({"lora_r": 10**9}, "training.lora_r", "from 1 to 1024"),
        ({"lora_r": True}, "training.lora_r", "from 1 to 1024"),
        ({"lora_alpha": "x"}, "training.lora_alpha", "an integer"),
        ({"max_length": -1}, "training.max_length", "from 16 to"),
        ({"processes": 1000}, "training.processes", "from 1 to 64"),
        ({"checkpoint_interval": 0}, "training.checkpoint_interval", "at least 1"),
        ({"adapter": "qlora"}, "training.adapter", '"lora" or "full"'),
        ({"packing": None}, "training.packing", "true or false"),
        ({"lora_dropout": 0.1}, "training", "Unknown training options: lora_dropout"),
    ],
)
def test_training_options_outside_their_range_are_a_400_naming_the_option(
    client: OpenAI, ten_examples: str, training: dict, param: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=TINY_ID, training_file=ten_examples, extra_body={"training": training})
    assert err.value.param == param
    assert says in err.value.body["message"]


def test_valid_training_options_reach_the_trainer(client: OpenAI, ten_examples: str) -> None:
    options = {"lora_r": 4, "lora_alpha": 8, "max_length": 64, "checkpoint_interval": 4, "packing": False}
    job = client.fine_tuning.jobs.create(
        model=TINY_ID,
        training_file=ten_examples,
        hyperparameters={"n_epochs": 1},
        extra_body={"training": {**options, "bf16": None, "processes": 1}},
    )
    done = wait_for_job(client, job.id)
    assert done.status == "succeeded", done.error
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data] == [10, 8, 4]


def post_raw(client: OpenAI, path: str, body: str) -> openai.BadRequestError:
    """POST a JSON body the SDK would refuse to encode (NaN and Infinity literals); returns the 400."""
    with pytest.raises(openai.BadRequestError) as err:
        client.post(
            path, content=body.encode(), cast_to=object, options={"headers": {"Content-Type": "application/json"}}
        )
    return err.value


LR = "method.supervised.hyperparameters.learning_rate_multiplier"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ('"hyperparameters": {"learning_rate_multiplier": NaN}', LR),
        ('"hyperparameters": {"learning_rate_multiplier": Infinity}', LR),
        ('"hyperparameters": {"learning_rate_multiplier": -Infinity}', LR),
        ('"hyperparameters": {"learning_rate_multiplier": 1e308}', LR),
        ('"hyperparameters": {"n_epochs": Infinity}', "method.supervised.hyperparameters.n_epochs"),
        ('"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": NaN}}}', "method.dpo.hyperparameters.beta"),
        ('"method": {"type": "supervised", "supervised": {"hyperparameters": {}, "x": NaN}}', "method.supervised.x"),
        ('"method": {"type": "supervised", "supervised": 5}', "method.supervised"),
        (
            '"integrations": [{"type": "wandb", "wandb": {"project": "p", "tags": [NaN]}}]',
            "integrations[0].wandb.tags[0]",
        ),
        ('"training": {"max_length": NaN}', "training.max_length"),
        ('"seed": NaN', "seed"),
    ],
)
def test_non_finite_and_absurd_numbers_are_a_400_naming_the_field(
    client: OpenAI, ten_examples: str, fields: str, param: str
) -> None:
    error = post_raw(
        client, "/fine_tuning/jobs", f'{{"model": "{TINY_ID}", "training_file": "{ten_examples}", {fields}}}'
    )
    assert error.param == param
    assert error.body["type"] == "invalid_request_error"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e308"])
def test_the_legacy_api_refuses_non_finite_and_absurd_multipliers(
    client: OpenAI, ten_examples: str, value: str
) -> None:
    body = f'{{"model": "{TINY_ID}", "training_file": "{ten_examples}", "learning_rate_multiplier": {value}}}'
    error = post_raw(client, "/fine-tunes", body)
    assert error.param is not None and error.param.endswith("learning_rate_multiplier")
