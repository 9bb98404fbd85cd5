"""Training scenarios computed the same way in one process and in each of `accelerate launch`'s.

`python -m accelerate.commands.launch ... -m tests.train.parallel_scenarios MODEL_DIR OUT_DIR` has
every process write what it computed to `OUT_DIR/rank-R.pt`; the test computes the same in its own
(single) process and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from tests.train.conftest import QuietReporter, varied_chat_rows
from tunehouse.train.classify import ValidationClassifier
from tunehouse.train.config import SFTConfig
from tunehouse.train.dpo import DPOConfig, dpo_trainer
from tunehouse.train.recipe import Trainer
from tunehouse.train.sft import sft_trainer


def preference_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"What colour is item {i}?" + " Be brief." * (i % 3)}]},
            "preferred_output": [{"role": "assistant", "content": f"Item {i} is red."}],
            "non_preferred_output": [{"role": "assistant", "content": f"I do not know about item {i}." * (1 + i % 2)}],
        }
        for i in range(n)
    ]


STEPS: dict[str, dict[str, Any]] = {
    # Five examples over two processes (3 and 2), in passes of about one example: uneven pass counts.
    "lora": {"indices": [0, 3, 4, 7, 9], "pass_tokens": 64},
    # One example: the second process has none and still joins the gradient all-reduce.
    "one_example": {"indices": [5]},
    "full": {"indices": [1, 2, 6, 8, 10], "use_lora": False},
    "dpo": {"indices": [0, 1, 2], "dpo": True},
}


def make_trainer(model_dir: Path, out_dir: Path, dpo: bool = False, **overrides: Any) -> Trainer:
    values: dict[str, Any] = {
        "base_model_dir": model_dir,
        "output_dir": out_dir / "out",
        "checkpoint_dir": out_dir / "checkpoints",
        "n_epochs": 1,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "seed": 7,
        "bf16": False,
        **overrides,
    }
    if dpo:
        trainer: Trainer = dpo_trainer(DPOConfig(**values), QuietReporter())
        trainer.setup(preference_rows(12), preference_rows(4))
    else:
        trainer = sft_trainer(SFTConfig(**values), QuietReporter())
        trainer.setup(varied_chat_rows(12), varied_chat_rows(5))
    return trainer


def one_step(model_dir: Path, out_dir: Path, indices: list[int], **overrides: Any) -> dict[str, Any]:
    """The metrics and gradients of one step's accumulation (no optimizer step)."""
    trainer = make_trainer(model_dir, out_dir, **overrides)
    trainer.forward.train()
    metrics = trainer.accumulate_gradients(indices)
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return {"metrics": metrics, "grads": grads}


def training_runs(model_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Two epochs with validation and checkpoints, then a resume from the first epoch's checkpoint."""
    options = {"n_epochs": 2, "batch_size": 3, "checkpoint_interval": 4, "learning_rate": 5e-3}
    whole = make_trainer(model_dir, out_dir, **options).run()
    checkpoint = out_dir / "checkpoints" / "step-4"
    resumed_trainer = make_trainer(model_dir, out_dir, resume_from=checkpoint, **options)
    resumed = resumed_trainer.run()
    return {
        "history": whole.history,
        "resumed_history": resumed.history,
        "resumed_steps": [s["step"] for s in resumed_trainer.reporter.steps],
        "checkpoint_files": sorted(p.name for p in checkpoint.iterdir()),
    }


def paused_run(model_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The run of `training_runs` paused at step 3, where only the main process is asked to pause
    (each process has its own pause file), then resumed from the pause's checkpoint."""
    options = {"n_epochs": 2, "batch_size": 3, "checkpoint_interval": 4, "learning_rate": 5e-3}
    trainer = make_trainer(model_dir, out_dir, **options)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.config.pause_file = pause_file = out_dir / f"pause-{trainer.processes.rank}"
    report = trainer.reporter.metrics

    def pause_the_main_process_at_step_3(step: int, total: int, data: dict[str, Any]) -> None:
        report(step, total, data)
        if step == 3 and trainer.processes.is_main:
            pause_file.touch()

    trainer.reporter.metrics = pause_the_main_process_at_step_3  # type: ignore[method-assign]
    paused = trainer.run()
    resumed = make_trainer(model_dir, out_dir, resume_from=out_dir / "checkpoints" / "step-3", **options).run()
    return {"paused": paused.paused, "paused_at": paused.steps, "resumed_history": resumed.history}


def classification_scores(model_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Five examples scored as a classifier (3 and 2 over two processes), a query per pass: by one
    next-token distribution (one-token labels), and over every token of each label."""
    trainer = make_trainer(model_dir, out_dir, pass_tokens=16)

    def score(labels: list[str]) -> dict[str, Any]:
        rows = [{"prompt": f"Review {i}", "completion": labels[i % len(labels)]} for i in range(5)]
        return ValidationClassifier(trainer.tokenizer, sorted(labels), rows, 2048, QuietReporter()).score(trainer)

    return {"one_token": score([" no", " yes"]), "several_tokens": score([" no", " yes", " very good"])}


def compute(model_dir: Path, out_dir: Path) -> dict[str, Any]:
    results = {name: one_step(model_dir, out_dir / name, **step) for name, step in STEPS.items()}
    results["runs"] = training_runs(model_dir, out_dir / "runs")
    results["paused"] = paused_run(model_dir, out_dir / "paused")
    results["classify"] = classification_scores(model_dir, out_dir / "classify")
    return results


if __name__ == "__main__":
    from tunehouse.train.distributed import from_environment

    processes = from_environment()
    model_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    results = compute(model_dir, out_dir)
    results["world_size"] = processes.world_size
    torch.save(results, out_dir / f"rank-{processes.rank}.pt")
    processes.close()
