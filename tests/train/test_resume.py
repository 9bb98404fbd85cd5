"""Exact resume (PITFALLS 1): a run stopped after a checkpoint and resumed ends with the same loss."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch
from openai import OpenAI

from tests.conftest import TINY_ID, Server, make_home
from tests.support import chat_rows, upload_rows, wait_for_job
from tunehouse.train.recipe import TRAINER_STATE, Trainer, latest_checkpoint

from .conftest import QuietReporter


class Interrupted(Exception):
    pass


def test_checkpoint_holds_optimizer_scheduler_rng_and_data_position(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(n_epochs=2, batch_size=2, checkpoint_interval=4)
    trainer.run()
    assert trainer.reporter.checkpoints == [4, 6, 8, 12]  # every 4 steps and each epoch's end (6 steps)
    saved = torch.load(latest_checkpoint(trainer.config.checkpoint_dir) / TRAINER_STATE, weights_only=False)
    assert {"optimizer", "scheduler", "rng", "state"} <= set(saved)
    assert saved["state"]["step"] == 12 and len(saved["state"]["history"]) == 12


def test_resuming_after_an_interruption_gives_the_uninterrupted_run(
    make_trainer: Callable[..., Trainer], tmp_path: Path
) -> None:
    options = {"n_epochs": 2, "batch_size": 2, "checkpoint_interval": 4, "learning_rate": 5e-3}
    uninterrupted = make_trainer(checkpoint_dir=tmp_path / "a", **options).run()

    interrupted = make_trainer(checkpoint_dir=tmp_path / "b", **options)
    real_metrics = interrupted.reporter.metrics

    def stop_at_step_7(step: int, total: int, data: dict) -> None:
        real_metrics(step, total, data)
        if step == 7:  # mid-epoch 2, three steps after the checkpoint at step 4 (and epoch 1's at 6)
            raise Interrupted

    interrupted.reporter.metrics = stop_at_step_7  # type: ignore[method-assign]  # a kill at step 7
    with pytest.raises(Interrupted):
        interrupted.run()
    checkpoint = latest_checkpoint(tmp_path / "b")
    assert checkpoint is not None and checkpoint.name == "step-6"

    resumed_trainer = make_trainer(checkpoint_dir=tmp_path / "b", resume_from=checkpoint, **options)
    assert isinstance(resumed_trainer.reporter, QuietReporter)
    resumed = resumed_trainer.run()
    assert [s["step"] for s in resumed_trainer.reporter.steps] == [7, 8, 9, 10, 11, 12]
    assert resumed.final_train_loss == uninterrupted.final_train_loss
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in uninterrupted.history]
    assert resumed.trained_tokens == uninterrupted.trained_tokens


def test_a_pause_file_stops_the_run_at_the_next_step_with_a_checkpoint_and_resume_is_exact(
    make_trainer: Callable[..., Trainer], tmp_path: Path
) -> None:
    options = {"n_epochs": 2, "batch_size": 2, "learning_rate": 5e-3}
    uninterrupted = make_trainer(checkpoint_dir=tmp_path / "a", **options).run()

    pause_file = tmp_path / "pause"
    paused_trainer = make_trainer(
        checkpoint_dir=tmp_path / "b", output_dir=tmp_path / "out-b", pause_file=pause_file, **options
    )
    real_metrics = paused_trainer.reporter.metrics

    def ask_for_a_pause_at_step_4(step: int, total: int, data: dict) -> None:
        real_metrics(step, total, data)
        if step == 4:  # mid-epoch 1: no checkpoint is due here
            pause_file.touch()

    paused_trainer.reporter.metrics = ask_for_a_pause_at_step_4  # type: ignore[method-assign]  # the worker's request
    paused = paused_trainer.run()
    assert paused.paused and paused.steps == 4
    assert not (tmp_path / "out-b").exists()  # a paused run saves no model
    checkpoint = latest_checkpoint(tmp_path / "b")
    assert checkpoint is not None and checkpoint.name == "step-4"

    pause_file.unlink()
    resumed = make_trainer(
        checkpoint_dir=tmp_path / "b", resume_from=checkpoint, pause_file=pause_file, **options
    ).run()
    assert not resumed.paused
    assert resumed.final_train_loss == uninterrupted.final_train_loss
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in uninterrupted.history]


def _final_train_loss(client: OpenAI, job_id: str) -> tuple[float, list[int]]:
    events = list(client.fine_tuning.jobs.list_events(job_id, limit=100))
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    return next(e.data["train_loss"] for e in events if e.type == "metrics"), steps


def test_sigkilled_server_resumes_the_job_to_the_uninterrupted_final_loss(
    tmp_path: Path, shipped_model_dir: Path, tiny_model_dir: Path
) -> None:
    home = make_home(tmp_path / "home", shipped_model_dir)
    first = Server(home)
    assert first.cli("models", "add", TINY_ID, str(tiny_model_dir)).returncode == 0
    first.start()
    client = first.client()
    request = {
        "model": TINY_ID,
        "training_file": upload_rows(client, tmp_path, chat_rows(30)),
        "seed": 99,
        "hyperparameters": {"n_epochs": 3, "batch_size": 1},
        "extra_body": {"training": {"checkpoint_interval": 10}},
    }
    job = client.fine_tuning.jobs.create(**request)
    deadline = time.time() + 300
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
        assert time.time() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    # Kill everything at once, like a power cut: the server and its trainer child (own session).
    assert first.process is not None
    processes = [psutil.Process(first.process.pid), *psutil.Process(first.process.pid).children(recursive=True)]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=10)
    checkpoint = latest_checkpoint(home / "jobs" / job.id / "checkpoints")
    assert checkpoint is not None and int(checkpoint.name.removeprefix("step-")) < 90  # it died mid-run

    second = Server(home).start()
    try:
        client = second.client()
        done = wait_for_job(client, job.id)
        assert done.status == "succeeded", done.error
        resumed_loss, steps = _final_train_loss(client, job.id)
        assert sorted(steps) == list(range(1, 91))  # every step reported once, none twice
        checkpoint_steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=100)]
        assert len(checkpoint_steps) == len(set(checkpoint_steps))
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert any("resuming from its checkpoint" in m for m in messages)

        again = client.fine_tuning.jobs.create(**request)
        assert wait_for_job(client, again.id).status == "succeeded"
        uninterrupted_loss, _ = _final_train_loss(client, again.id)
        assert resumed_loss == pytest.approx(uninterrupted_loss, rel=1e-6, abs=1e-7)
    finally:
        second.stop()
