"""Entry point of the trainer child process: `python -m tunehouse.jobs.run JOB_ID`.

Reads the job from the store, resolves `auto` hyperparameters, trains, and reports everything —
events, metrics, checkpoints, the result file, the fine-tuned model, the final status — back
through the store. Any failure is recorded on the job with a message for the user.

Under `accelerate launch` every process runs this module; each trains its share, and only the main
process reports and records anything.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from tunehouse.config import settings
from tunehouse.data.reader import iter_examples
from tunehouse.errors import TrainingDiverged, TunehouseError
from tunehouse.eval.classification import ClassificationSettings
from tunehouse.jobs.classification import ClassificationReporter, job_classes, job_settings, with_metrics
from tunehouse.jobs.launch import exit_with_worker, pause_file
from tunehouse.jobs.records import (
    ACTIVE_STATES,
    add_checkpoint,
    add_event,
    all_events,
    get_job,
    list_checkpoints,
    update_job,
)
from tunehouse.jobs.service import fail_job, fine_tuned_model_name
from tunehouse.jobs.sharing import fetch_latest_checkpoint, share_checkpoint, share_model
from tunehouse.jobs.tracking import attach_trackers
from tunehouse.models.catalog import base_of, delete_model, get_model, register_trained_model, weights_dir
from tunehouse.store.files import create_file, file_path, get_file
from tunehouse.store.projects import DEFAULT_PROJECT_ID, enter_project
from tunehouse.store.schema import JobRow
from tunehouse.train.config import SFTConfig
from tunehouse.train.distributed import SingleProcess, from_environment
from tunehouse.train.dpo import DPOConfig, train_dpo
from tunehouse.train.hyperparams import (
    FULL_BASE_LEARNING_RATE,
    LORA_BASE_LEARNING_RATE,
    ResolvedHyperparameters,
    resolve_hyperparameters,
)
from tunehouse.train.options import config_values
from tunehouse.train.recipe import TrainResult, latest_checkpoint
from tunehouse.train.reporting import Reporter, SilentReporter
from tunehouse.train.sft import train_sft

RESULT_COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
HEARTBEAT_SECONDS = 2.0


class StoreReporter:
    """Writes the trainer's reports as job events, checkpoints, heartbeat and estimated finish."""

    def __init__(self, job: JobRow, model_name: str) -> None:
        self.job = job
        self.model_name = model_name
        self._last_heartbeat = 0.0
        # A resumed job repeats the steps after its last checkpoint with the same numbers; their
        # metrics events (and any checkpoint) are already in the store and are not added twice.
        self._reported_steps = {e.data["step"] for e in all_events(job.id) if e.type == "metrics" and e.data}
        self._checkpoint_steps = {c.step_number for c in list_checkpoints(job.id, None, 10_000).items}

    def message(self, text: str, level: str = "info") -> None:
        add_event(self.job.id, text, level=level)

    def metrics(self, step: int, total_steps: int, data: dict[str, Any]) -> None:
        if not math.isfinite(data["train_loss"]):
            raise TrainingDiverged(
                f"Training diverged at step {step}/{total_steps}: the loss became {data['train_loss']}. "
                "Lower learning_rate_multiplier, or check the training data."
            )
        if step in self._reported_steps:
            return
        text = f"Step {step}/{total_steps}: training loss={data['train_loss']:.2f}"
        if "valid_loss" in data:
            text += f", validation loss={data['valid_loss']:.2f}"
        if "full_valid_loss" in data:
            text += f", full validation loss={data['full_valid_loss']:.2f}"
        add_event(self.job.id, text, type="metrics", data={"step": step, "total_steps": total_steps, **data})

    def checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None:
        if step in self._checkpoint_steps:
            return
        self._checkpoint_steps.add(step)
        share_checkpoint(self.job.id, path)  # before it is recorded: a recorded one can be resumed anywhere
        name = f"{self.model_name}:ckpt-step-{step}"
        base = get_model(self.job.model).id  # the model itself when the job named it by an alias
        register_trained_model(
            name, kind="checkpoint", path=path, base_model=base, adapter=_is_adapter(path), job_id=self.job.id
        )
        add_checkpoint(self.job.id, step, name, str(path), metrics)
        add_event(self.job.id, f"Checkpoint created at step {step}: {name}")

    def progress(self, step: int, total_steps: int, seconds_per_step: float) -> None:
        now = time.time()
        if now - self._last_heartbeat < HEARTBEAT_SECONDS and step != total_steps:
            return
        self._last_heartbeat = now
        remaining = (total_steps - step) * seconds_per_step
        update_job(self.job.id, only_if_status=ACTIVE_STATES, heartbeat_at=now, estimated_finish=int(now + remaining))


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").exists()


def result_csv(
    history: list[dict[str, Any]], classification: tuple[ClassificationSettings, list[str]] | None = None
) -> bytes:
    """OpenAI's result file: one row per step; validation columns blank where not measured. A job
    with classification metrics (its settings and classes) has the legacy file's `classification/*`
    columns too, filled on the rows that scored the validation set."""
    extra = classification[0].columns() if classification else []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS + ["full_valid_loss", "full_valid_mean_token_accuracy"] + extra)
    for row in history:
        if classification:
            row = with_metrics(*classification, row)
        writer.writerow(
            [
                row["step"],
                row["train_loss"],
                row["train_mean_token_accuracy"],
                row.get("valid_loss", ""),
                row.get("valid_mean_token_accuracy", ""),
                row.get("full_valid_loss", ""),
                row.get("full_valid_mean_token_accuracy", ""),
                *["" if row.get(column) is None else row[column] for column in extra],
            ]
        )
    return out.getvalue().encode()


def _read_examples(file_id: str) -> list[dict[str, Any]]:
    return [example for _, example in iter_examples(file_path(get_file(file_id)))]


def build_config(job: JobRow, n_examples: int) -> tuple[SFTConfig, ResolvedHyperparameters]:
    """Map the job (its resolved hyperparameters and training options) onto the trainer's config."""
    method_type = job.method.get("type", "supervised")
    requested = job.method[method_type]["hyperparameters"]
    resolved = resolve_hyperparameters(requested, n_examples, method_type)
    options = config_values(job.training_options or {})
    start = get_model(job.model)
    base = base_of(start)
    base_dir = start.path if (start.kind != "base" and not start.adapter) else weights_dir(base)
    base_rate = LORA_BASE_LEARNING_RATE if options["use_lora"] else FULL_BASE_LEARNING_RATE
    home = settings()
    config_type = DPOConfig if method_type == "dpo" else SFTConfig
    config = config_type(
        base_model_dir=Path(base_dir),
        output_dir=home.models_dir / "ft" / job.id,
        checkpoint_dir=home.jobs_dir / job.id / "checkpoints",
        n_epochs=resolved.n_epochs,
        batch_size=resolved.batch_size,
        learning_rate=base_rate * resolved.learning_rate_multiplier,
        seed=job.seed,
        init_adapter_dir=start.path if start.adapter else None,
        **options,
    )
    if isinstance(config, DPOConfig) and resolved.beta is not None:
        config.beta = resolved.beta
    fetch_latest_checkpoint(job.id, config.checkpoint_dir)  # written by another worker, if it got further
    config.resume_from = latest_checkpoint(config.checkpoint_dir)
    config.pause_file = pause_file(job.id)  # the worker writes it when the job is paused
    return config, resolved


def record_resolved_hyperparameters(job: JobRow, resolved: ResolvedHyperparameters) -> None:
    """Write the `auto` values the job resolved to back onto it, where the API shows them."""
    method_type = job.method.get("type", "supervised")
    method = dict(job.method)
    method[method_type] = {**method[method_type], "hyperparameters": resolved.as_dict()}
    update_job(job.id, hyperparameters={k: v for k, v in resolved.as_dict().items() if k != "beta"}, method=method)


def _train(
    config: SFTConfig,
    train_examples: list[dict[str, Any]],
    valid_examples: list[dict[str, Any]] | None,
    reporter: Reporter,
    processes: SingleProcess,
) -> TrainResult:
    """The job's method: DPO for a DPO config, else supervised fine-tuning."""
    if isinstance(config, DPOConfig):
        return train_dpo(config, train_examples, valid_examples, reporter, processes)
    return train_sft(config, train_examples, valid_examples, reporter, processes)


def run_job(job_id: str, processes: SingleProcess) -> None:
    job = get_job(job_id)
    enter_project(job.project_id or DEFAULT_PROJECT_ID)  # what it reads and makes is the job's project's
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_examples = _read_examples(job.training_file)
    valid_examples = _read_examples(job.validation_file) if job.validation_file else None
    config, resolved = build_config(job, len(train_examples))
    classification = job_settings(job)
    classes: list[str] = []
    if classification is not None:  # checked when the files were validated; the classes again here
        classes, classification = job_classes(classification, train_examples, valid_examples or [])
        config.classification_classes = classes
    if not processes.is_main:  # trains its share of every step; the main process records the job
        _train(config, train_examples, valid_examples, SilentReporter(), processes)
        return
    record_resolved_hyperparameters(job, resolved)
    if config.resume_from is None:
        add_event(job_id, "Fine-tuning job started")
    else:
        add_event(job_id, f"Fine-tuning job resuming from its checkpoint {config.resume_from.name}")
    model_name = fine_tuned_model_name(job)
    store_reporter = StoreReporter(job, model_name)
    if config.resume_from is not None:  # killed after writing the checkpoint, before recording it
        step = int(config.resume_from.name.removeprefix("step-"))
        store_reporter.checkpoint(step, config.resume_from, {"step": step})
    reporter = attach_trackers(store_reporter, job, config)  # + W&B / MLflow, if asked
    trainer_reporter: Reporter = reporter
    if classification is not None:  # the trainer's class scores become metrics for all of them
        trainer_reporter = ClassificationReporter(reporter, classification, classes)
    result = _train(config, train_examples, valid_examples, trainer_reporter, processes)
    if result.paused:  # stopped at a step boundary with a checkpoint written; `resume` continues it
        if update_job(job_id, only_if_status={"pausing"}, status="paused", estimated_finish=None):
            add_event(job_id, f"Job paused at step {result.steps} with a checkpoint; resume it to continue from there.")
        return
    result_file = result_csv(result.history, (classification, classes) if classification else None)
    results = create_file(f"{job.id}_results.csv", "fine-tune-results", [result_file], internal=True)
    reporter.finish(result_file, config.output_dir, model_name)
    share_model(job.id, config.output_dir)
    register_trained_model(
        model_name,
        kind="fine-tuned",
        path=config.output_dir,
        base_model=get_model(job.model).id,
        adapter=config.use_lora,
        job_id=job.id,
    )
    finished = update_job(
        job_id,
        only_if_status=ACTIVE_STATES,  # a pause asked for during the last step comes too late
        status="succeeded",
        fine_tuned_model=model_name,
        finished_at=int(time.time()),
        estimated_finish=None,
        trained_tokens=result.trained_tokens,
        result_files=[results.id],
    )
    if not finished:  # cancelled while saving: the model must not outlive its job
        delete_model(model_name)
        shutil.rmtree(config.output_dir, ignore_errors=True)
        return
    add_event(
        job_id,
        f"Trained {result.trained_tokens:,} tokens in {result.wall_seconds:.0f} s "
        f"({result.tokens_per_second:.0f} tokens/s, {'bf16' if result.bf16 else 'fp32'}).",
    )
    add_event(job_id, f"New fine-tuned model created: {model_name}")
    add_event(job_id, "The job has successfully completed")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    exit_with_worker()
    job_id = argv[1]
    processes = SingleProcess()
    try:
        processes = from_environment()
        run_job(job_id, processes)
    except TunehouseError as exc:
        fail_job(job_id, exc.code or "training_failed", exc.message, exc.param)
        return 1
    except (MemoryError, torch.OutOfMemoryError):
        traceback.print_exc()
        fail_job(
            job_id,
            "out_of_memory",
            "Training ran out of memory. Lower batch_size or "
            "training.max_length, or use LoRA instead of full fine-tuning.",
        )
        return 1
    except Exception as exc:
        traceback.print_exc()
        fail_job(job_id, "training_failed", f"Training failed: {type(exc).__name__}: {exc}")
        return 1
    finally:
        processes.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
