"""Two trainer processes (DDP over gloo, started by `accelerate launch`) compute what one does.

The scenarios live in `parallel_scenarios.py`: each process of the launch writes its results, and
this test computes the same ones in its own single process.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import REPO
from tests.train.parallel_scenarios import STEPS, compute
from tunehouse.jobs.launch import launch_command, launch_environment


@pytest.fixture(scope="module")
def two_processes(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("two-processes")
    command = launch_command(2, "tests.train.parallel_scenarios", str(tiny_model_dir), str(out_dir))
    done = subprocess.run(command, cwd=REPO, env=launch_environment(2), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out_dir / f"rank-{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.fixture(scope="module")
def one_process(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compute(tiny_model_dir, tmp_path_factory.mktemp("one-process"))


@pytest.mark.parametrize("scenario", list(STEPS))
def test_two_processes_accumulate_the_one_process_gradient(
    scenario: str, two_processes: list[dict[str, Any]], one_process: dict[str, Any]
) -> None:
    assert [r["world_size"] for r in two_processes] == [2, 2]
    want = one_process[scenario]
    for rank in two_processes:
        got = rank[scenario]
        assert got["metrics"] == pytest.approx(want["metrics"], rel=1e-6)
        assert got["grads"].keys() == want["grads"].keys()
        for name, grad in want["grads"].items():
            # Float summation order differs (other passes, 1 thread per process): ~1e-6 of the scale.
            scale = float(grad.abs().max())
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
    assert any(g.abs().sum() > 0 for g in want["grads"].values())


def test_two_processes_train_validate_checkpoint_and_resume_like_one(
    two_processes: list[dict[str, Any]], one_process: dict[str, Any]
) -> None:
    want = one_process["runs"]
    for rank in two_processes:
        got = rank["runs"]
        assert [h["step"] for h in got["history"]] == list(range(1, 9))
        for got_step, want_step in zip(got["history"], want["history"], strict=True):
            assert got_step == pytest.approx(want_step, rel=1e-4)  # train and validation metrics
        assert got["resumed_steps"] == [5, 6, 7, 8]
        assert [h["train_loss"] for h in got["resumed_history"]] == [h["train_loss"] for h in got["history"]]
    assert "trainer_state.pt" in two_processes[0]["runs"]["checkpoint_files"]


def test_two_processes_pause_together_when_only_the_main_one_is_asked_and_resume_exactly(
    two_processes: list[dict[str, Any]], one_process: dict[str, Any]
) -> None:
    for rank in two_processes:
        got = rank["paused"]
        assert got["paused"] and got["paused_at"] == 3  # the other process stopped at the same step
        resumed, whole = got["resumed_history"], rank["runs"]["history"]
        assert [h["train_loss"] for h in resumed] == [h["train_loss"] for h in whole]
    assert one_process["paused"]["paused_at"] == 3


def test_two_processes_score_the_validation_set_as_a_classifier_like_one(
    two_processes: list[dict[str, Any]], one_process: dict[str, Any]
) -> None:
    for name, want in one_process["classify"].items():
        for rank in two_processes:
            got = rank["classify"][name]
            assert got["labels"] == want["labels"], name
            torch.testing.assert_close(
                torch.tensor(got["probabilities"]), torch.tensor(want["probabilities"]), rtol=0, atol=1e-6, msg=name
            )
