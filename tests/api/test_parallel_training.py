"""Jobs trained by several processes (`training.processes`), through the openai SDK.

On this CPU-only machine two processes train with DDP over gloo, started by `accelerate launch`
exactly as on a multi-GPU machine; fp32, so the numbers can be compared with one process.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
from openai import OpenAI

from tests.conftest import TINY_ID, Server
from tests.support import add_broken_model, chat_rows, upload_rows, wait_for_job


def metrics_by_step(client: OpenAI, job_id: str) -> dict[int, dict]:
    events = client.fine_tuning.jobs.list_events(job_id, limit=100)
    return {e.data["step"]: e.data for e in events if e.type == "metrics"}


def trainer_processes(job_id: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if job_id in (process.info["cmdline"] or []):
            found.append(process)
    return found


def gone_within(job_id: str, seconds: float) -> bool:
    deadline = time.time() + seconds
    while trainer_processes(job_id) and time.time() < deadline:
        time.sleep(0.2)
    return trainer_processes(job_id) == []


def test_two_process_job_trains_like_one_process(client: OpenAI, tmp_path: Path) -> None:
    train = upload_rows(client, tmp_path, chat_rows(12), "train.jsonl")
    valid = upload_rows(client, tmp_path, chat_rows(5, topic="shade"), "valid.jsonl")
    jobs = {
        processes: client.fine_tuning.jobs.create(
            model=TINY_ID,
            training_file=train,
            validation_file=valid,
            seed=5,
            hyperparameters={"n_epochs": 2, "batch_size": 3},
            extra_body={"training": {"processes": processes, "bf16": False, "checkpoint_interval": 2}},
        )
        for processes in (2, 1)
    }
    done = {processes: wait_for_job(client, job.id) for processes, job in jobs.items()}
    assert all(d.status == "succeeded" for d in done.values()), [d.error for d in done.values()]

    two, one = metrics_by_step(client, jobs[2].id), metrics_by_step(client, jobs[1].id)
    assert sorted(two) == sorted(one) == list(range(1, 9))
    for step in one:
        for key in ("train_loss", "train_mean_token_accuracy", "valid_loss", "full_valid_loss"):
            if key in one[step]:
                assert two[step][key] == pytest.approx(one[step][key], rel=1e-4), (step, key)
    assert done[2].trained_tokens == done[1].trained_tokens

    messages = [e.message for e in client.fine_tuning.jobs.list_events(jobs[2].id, limit=100)]
    assert any("2 processes (DDP)" in m for m in messages)
    assert messages.count("Fine-tuning job started") == 1  # only the main process reports

    checkpoints = client.fine_tuning.jobs.checkpoints.list(jobs[2].id).data
    assert [c.step_number for c in checkpoints] == [8, 6, 4, 2]
    for model in (done[2].fine_tuned_model, checkpoints[-1].fine_tuned_model_checkpoint):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "What is the colour of item 3?"}], max_tokens=4
        )
        assert reply.choices[0].message.content is not None


def test_cancel_stops_every_trainer_process(client: OpenAI, tmp_path: Path) -> None:
    job = client.fine_tuning.jobs.create(
        model=TINY_ID,
        training_file=upload_rows(client, tmp_path, chat_rows(12)),
        hyperparameters={"n_epochs": 50},
        extra_body={"training": {"processes": 2}},
    )
    wait_for_job(client, job.id, until={"running"})
    while not metrics_by_step(client, job.id):
        time.sleep(0.2)
    assert len(trainer_processes(job.id)) == 3  # the launcher and two trainer processes
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert gone_within(job.id, 10)
    assert client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None


def test_a_crash_in_the_trainer_processes_fails_the_job(server: Server, client: OpenAI, tmp_path: Path) -> None:
    add_broken_model(server, tmp_path, "broken-model-2p")
    job = client.fine_tuning.jobs.create(
        model="broken-model-2p",
        training_file=upload_rows(client, tmp_path, chat_rows(10)),
        extra_body={"training": {"processes": 2}},
    )
    done = wait_for_job(client, job.id, timeout=120)
    assert done.status == "failed" and done.error.code == "training_failed"
    assert gone_within(job.id, 30)  # the launcher stops the other process and exits


def test_processes_must_be_a_positive_count(client: OpenAI, tmp_path: Path) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model=TINY_ID,
            training_file=upload_rows(client, tmp_path, chat_rows(10)),
            extra_body={"training": {"processes": 0}},
        )
    assert err.value.param == "training.processes"
