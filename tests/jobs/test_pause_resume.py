"""Pausing and resuming jobs through the SDK: `running → pausing → paused → queued → running`, the
pause written as a checkpoint, and the resumed job ending exactly where an uninterrupted one does."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY_ID, Server
from tests.support import chat_rows, upload_rows, wait_for_job


def _wait_for_step(client: OpenAI, job_id: str, timeout: float = 300) -> None:
    """Until the job has reported a training step (so its trainer is in the step loop)."""
    deadline = time.time() + timeout
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job_id, limit=5)):
        assert time.time() < deadline, f"job {job_id} reported no step"
        time.sleep(0.05)


def _result_rows(client: OpenAI, job_id: str) -> list[dict[str, str]]:
    job = client.fine_tuning.jobs.retrieve(job_id)
    [result_id] = job.result_files
    return list(csv.DictReader(io.StringIO(client.files.content(result_id).text)))


def _messages(client: OpenAI, job_id: str) -> list[str]:
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=1000)][::-1]


def test_a_paused_and_resumed_job_ends_with_the_uninterrupted_loss(
    server: Server, client: OpenAI, tmp_path: Path
) -> None:
    request = {
        "model": TINY_ID,
        "training_file": upload_rows(client, tmp_path, chat_rows(15)),
        "seed": 4242,
        "hyperparameters": {"n_epochs": 2, "batch_size": 1},  # 30 steps; checkpoints at each epoch's end
    }
    job = client.fine_tuning.jobs.create(**request)
    _wait_for_step(client, job.id)

    pausing = client.fine_tuning.jobs.pause(job.id)
    assert pausing.status == "pausing"
    with pytest.raises(openai.ConflictError, match="stops at its next step"):
        client.fine_tuning.jobs.pause(job.id)
    with pytest.raises(openai.ConflictError, match="resume it once it is paused"):
        client.fine_tuning.jobs.resume(job.id)

    paused = wait_for_job(client, job.id, until={"paused", "succeeded", "failed", "cancelled"})
    assert paused.status == "paused", paused.error
    trainer_file = server.home / "jobs" / job.id / "trainer.pid"
    deadline = time.time() + 30
    while trainer_file.exists():  # the trainer exits right after recording the pause
        assert time.time() < deadline, "the paused job's trainer is still running"
        time.sleep(0.1)
    [pause_message] = [m for m in _messages(client, job.id) if m.startswith("Job paused at step")]
    paused_step = int(pause_message.split()[4])
    assert 1 <= paused_step < 30
    checkpoints = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=100)]
    assert paused_step in checkpoints  # the pause wrote one where it stopped
    time.sleep(1.5)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"  # it stays put until resumed
    with pytest.raises(openai.ConflictError, match="already paused"):
        client.fine_tuning.jobs.pause(job.id)

    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued"
    done = wait_for_job(client, job.id)
    assert done.status == "succeeded", done.error
    with pytest.raises(openai.ConflictError, match="only a paused job can be resumed"):
        client.fine_tuning.jobs.resume(job.id)
    with pytest.raises(openai.ConflictError, match="only a queued or running job can be paused"):
        client.fine_tuning.jobs.pause(job.id)

    messages = _messages(client, job.id)
    for said in (
        "Job pausing",
        "Job paused at step",
        "Job resumed",
        f"resuming from its checkpoint step-{paused_step}",
    ):
        assert any(said in m for m in messages), said
    steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=1000) if e.type == "metrics"]
    assert sorted(steps) == list(range(1, 31))  # every step reported once

    again = client.fine_tuning.jobs.create(**request)
    assert wait_for_job(client, again.id).status == "succeeded"
    resumed_rows, uninterrupted_rows = _result_rows(client, job.id), _result_rows(client, again.id)
    assert [r["step"] for r in resumed_rows] == [r["step"] for r in uninterrupted_rows]
    assert float(resumed_rows[-1]["train_loss"]) == pytest.approx(float(uninterrupted_rows[-1]["train_loss"]), abs=1e-5)
    assert [float(r["train_loss"]) for r in resumed_rows] == pytest.approx(
        [float(r["train_loss"]) for r in uninterrupted_rows], abs=1e-5
    )
    assert done.trained_tokens == client.fine_tuning.jobs.retrieve(again.id).trained_tokens


def test_queued_jobs_pause_at_once_and_cancel_works_while_paused_or_pausing(
    server: Server, client: OpenAI, tmp_path: Path
) -> None:
    training_file = upload_rows(client, tmp_path, chat_rows(40))
    # 2,000 steps: long enough that the job is still running when the test pauses it at the end
    long_file = upload_rows(client, tmp_path, chat_rows(200), name="long.jsonl")
    running = client.fine_tuning.jobs.create(
        model=TINY_ID, training_file=long_file, hyperparameters={"n_epochs": 10, "batch_size": 1}
    )
    _wait_for_step(client, running.id)  # the one worker is busy with it: the next job waits
    waiting = client.fine_tuning.jobs.create(model=TINY_ID, training_file=training_file)
    wait_for_job(client, waiting.id, until={"queued"})

    assert client.fine_tuning.jobs.pause(waiting.id).status == "paused"
    resumed = server.cli("jobs", "resume", waiting.id, "--base-url", server.base_url)  # the CLI does the same
    assert resumed.returncode == 0 and resumed.stdout.strip() == f"Job {waiting.id}: queued", resumed.stderr
    paused = server.cli("jobs", "pause", waiting.id, "--base-url", server.base_url)
    assert paused.returncode == 0 and paused.stdout.strip() == f"Job {waiting.id}: paused", paused.stderr
    refused = server.cli("jobs", "pause", waiting.id, "--base-url", server.base_url)
    assert refused.returncode == 1 and "it is already paused" in refused.stderr and "Traceback" not in refused.stderr
    cancelled = client.fine_tuning.jobs.cancel(waiting.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.ConflictError, match="only a paused job can be resumed"):
        client.fine_tuning.jobs.resume(waiting.id)
    assert any("Job paused before it started" in m for m in _messages(client, waiting.id))

    assert client.fine_tuning.jobs.pause(running.id).status == "pausing"
    assert client.fine_tuning.jobs.cancel(running.id).status == "cancelled"
    time.sleep(2)  # the trainer is stopped; nothing moves the job out of `cancelled`
    assert client.fine_tuning.jobs.retrieve(running.id).status == "cancelled"

    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.pause("ftjob-nonexistent")
    with pytest.raises(openai.ConflictError, match="has status 'cancelled'"):
        client.fine_tuning.jobs.pause(running.id)
