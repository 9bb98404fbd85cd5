"""`tunehouse jobs …`: create, list, inspect, cancel, pause, resume, follow and plot fine-tuning jobs on a server."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from openai import OpenAI
from rich.table import Table

from tunehouse.cli.client import (
    DEFAULT_BASE_URL,
    ApiKey,
    AsJson,
    BaseUrl,
    api_errors,
    console,
    err_console,
    fail,
    make_client,
    print_json,
    when,
)
from tunehouse.cli.files import upload_file
from tunehouse.cli.follow import all_events, epoch_at, follow_job, format_event, n_epochs_of

jobs_app = typer.Typer(help="Create, follow and inspect fine-tuning jobs on a tunehouse server.", no_args_is_help=True)

JobId = Annotated[str, typer.Argument(help="The job id, ftjob-…")]


def _number(value: str | None, name: str) -> Any:
    """Hyperparameter flag: "auto", an int or a float."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        fail(f"--{name} must be 'auto' or a number, not {value!r}.")


def resolve_file(client: OpenAI, value: str, label: str) -> str:
    """A file id as is; a local path uploaded with purpose fine-tune (reusing an identical upload)."""
    path = Path(value).expanduser()
    if path.is_file():
        file, reused = upload_file(client, path, "fine-tune", reuse=True)
        err_console.print(f"{'Reusing' if reused else 'Uploaded'} {label} {path.name}: {file.id}", markup=False)
        return file.id
    if value.startswith("file-"):
        return value
    fail(f"{label} {value!r} is neither a file id (file-…) nor a local file.")


def _key_values(pairs: list[str], flag: str) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"{flag} takes KEY=VALUE, not {pair!r}.")
        result[key] = value
    return result


def _finish(job: Any) -> None:
    """Report the outcome of a followed job and exit with it: 0 succeeded, 1 failed, 2 cancelled."""
    if job.status == "succeeded":
        console.print(f"Job complete! Status: succeeded. Fine-tuned model: {job.fine_tuned_model}", markup=False)
        console.print(f"Try it: tunehouse chat {job.fine_tuned_model}", markup=False)
        raise typer.Exit(0)
    if job.status == "failed":
        message = job.error.message if job.error else "no error recorded"
        fail(f"Job {job.id} failed: {message}", code=1)
    fail(f"Job {job.id} was {job.status}.", code=2)


def _follow_and_exit(client: OpenAI, job_id: str, interval: float) -> None:
    try:
        job = follow_job(client, job_id, console, interval=interval)
    except KeyboardInterrupt:
        err_console.print(
            f"\nStopped following; the job keeps running.\n  Resume:  tunehouse jobs follow {job_id}\n"
            f"  Cancel:  tunehouse jobs cancel {job_id}",
            markup=False,
        )
        raise typer.Exit(130) from None
    _finish(job)


@jobs_app.command("create")
def create(
    model: Annotated[str, typer.Option("--model", "-m", help="Base or fine-tuned model to start from.")],
    training_file: Annotated[str, typer.Option("--training-file", "-t", help="File id or local .jsonl path.")],
    validation_file: Annotated[
        str | None, typer.Option("--validation-file", "-v", help="File id or local .jsonl path.")
    ] = None,
    suffix: Annotated[str | None, typer.Option("--suffix", "-s", help="Goes into the model name.")] = None,
    method: Annotated[str, typer.Option("--method", help="supervised or dpo.")] = "supervised",
    n_epochs: Annotated[str | None, typer.Option("--n-epochs", help="'auto' or a number.")] = None,
    batch_size: Annotated[str | None, typer.Option("--batch-size", help="'auto' or a number.")] = None,
    learning_rate_multiplier: Annotated[
        str | None, typer.Option("--learning-rate-multiplier", help="'auto' or a number.")
    ] = None,
    beta: Annotated[str | None, typer.Option("--beta", help="DPO only: 'auto' or a number.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for a reproducible run.")] = None,
    metadata: Annotated[list[str], typer.Option("--metadata", help="KEY=VALUE, repeatable.")] = [],  # noqa: B006
    wandb_project: Annotated[str | None, typer.Option("--wandb-project", help="Log the run to W&B.")] = None,
    wandb_entity: Annotated[str | None, typer.Option("--wandb-entity")] = None,
    wandb_name: Annotated[str | None, typer.Option("--wandb-name", help="Run name (default: job id).")] = None,
    wandb_tag: Annotated[list[str], typer.Option("--wandb-tag", help="Repeatable.")] = [],  # noqa: B006
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow the job until it ends.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between polls when following.")] = 1.0,
    as_json: AsJson = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Create a fine-tuning job; local files are uploaded first."""
    hyperparameters = {
        name: _number(value, flag)
        for name, value, flag in (
            ("n_epochs", n_epochs, "n-epochs"),
            ("batch_size", batch_size, "batch-size"),
            ("learning_rate_multiplier", learning_rate_multiplier, "learning-rate-multiplier"),
            ("beta", beta, "beta"),
        )
        if value is not None
    }
    body: dict[str, Any] = {
        "model": model,
        "method": {"type": method, method: {"hyperparameters": hyperparameters}},
    }
    if suffix:
        body["suffix"] = suffix
    if seed is not None:
        body["seed"] = seed
    if metadata:
        body["metadata"] = _key_values(metadata, "--metadata")
    if wandb_project:
        wandb: dict[str, Any] = {"project": wandb_project}
        wandb.update({k: v for k, v in (("entity", wandb_entity), ("name", wandb_name)) if v})
        if wandb_tag:
            wandb["tags"] = wandb_tag
        body["integrations"] = [{"type": "wandb", "wandb": wandb}]
    with api_errors():
        client = make_client(base_url, api_key)
        body["training_file"] = resolve_file(client, training_file, "training file")
        if validation_file:
            body["validation_file"] = resolve_file(client, validation_file, "validation file")
        job = client.fine_tuning.jobs.create(**body)
        if as_json:
            print_json(job)
        else:
            console.print(f"Created fine-tuning job: {job.id}", markup=False)
        if follow:
            _follow_and_exit(client, job.id, interval)


@jobs_app.command("list")
def list_jobs(
    limit: Annotated[int, typer.Option("--limit", "-l", help="At most this many, newest first.")] = 20,
    as_json: AsJson = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """List fine-tuning jobs, newest first."""
    with api_errors():
        jobs = make_client(base_url, api_key).fine_tuning.jobs.list(limit=limit).data[:limit]
    if as_json:
        print_json([j.model_dump(mode="json") for j in jobs])
        return
    table = Table("id", "status", "model", "fine_tuned_model", "created")
    table.columns[0].overflow = table.columns[3].overflow = "fold"
    for job in jobs:
        table.add_row(job.id, job.status, job.model, job.fine_tuned_model or "-", when(job.created_at))
    console.print(table)


@jobs_app.command("get")
def get(job_id: JobId, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """Print a job as JSON."""
    with api_errors():
        print_json(make_client(base_url, api_key).fine_tuning.jobs.retrieve(job_id))


@jobs_app.command("cancel")
def cancel(job_id: JobId, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """Cancel a job that has not finished."""
    with api_errors():
        job = make_client(base_url, api_key).fine_tuning.jobs.cancel(job_id)
    console.print(f"Job {job.id}: {job.status}", markup=False)


@jobs_app.command("pause")
def pause(job_id: JobId, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """Pause a job: a running one stops at its next step after a checkpoint; a queued one waits."""
    with api_errors():
        job = make_client(base_url, api_key).fine_tuning.jobs.pause(job_id)
    console.print(f"Job {job.id}: {job.status}", markup=False)


@jobs_app.command("resume")
def resume(job_id: JobId, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """Resume a paused job from the checkpoint its pause wrote."""
    with api_errors():
        job = make_client(base_url, api_key).fine_tuning.jobs.resume(job_id)
    console.print(f"Job {job.id}: {job.status}", markup=False)


@jobs_app.command("events")
def events(
    job_id: JobId,
    limit: Annotated[int, typer.Option("--limit", "-l", help="The latest this many events.")] = 20,
    every: Annotated[bool, typer.Option("--all", help="Every event, not only the latest.")] = False,
    as_json: AsJson = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Print a job's events, oldest first."""
    with api_errors():
        client = make_client(base_url, api_key)
        if every:
            found = all_events(client, job_id)
        else:
            found = client.fine_tuning.jobs.list_events(job_id, limit=limit).data[::-1]
    if as_json:
        print_json([e.model_dump(mode="json") for e in found])
        return
    for event in found:
        console.print(format_event(event), markup=False)


@jobs_app.command("follow")
def follow(
    job_id: JobId,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between polls.")] = 1.0,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Follow a job: messages and a live progress bar (step/total, epoch, loss, ETA).

    Exits with the job's outcome: 0 succeeded, 1 failed, 2 cancelled.
    """
    with api_errors():
        _follow_and_exit(make_client(base_url, api_key), job_id, interval)


@jobs_app.command("plot")
def plot(
    job_id: JobId,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the PNG.")] = Path("loss.png"),
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Plot train and validation loss and token accuracy per step into a PNG."""
    from tunehouse.cli.plot import plot_curves

    with api_errors():
        client = make_client(base_url, api_key)
        job = client.fine_tuning.jobs.retrieve(job_id)
        metrics = [dict(e.data) for e in all_events(client, job_id) if e.type == "metrics" and e.data]
    if not metrics:
        fail(f"Job {job_id} has no metrics yet (status: {job.status}).")
    try:
        steps = plot_curves(metrics, output, f"{job.id} — {job.model} ({job.status})")
    except RuntimeError as exc:
        fail(str(exc))
    last = metrics[-1] if metrics[-1].get("step", 0) >= metrics[0].get("step", 0) else metrics[0]
    epoch = epoch_at(int(last.get("step", 0)), int(last.get("total_steps", 0)), n_epochs_of(job))
    console.print(f"Wrote {output} ({steps} steps{f', epoch {epoch}' if epoch else ''}).", markup=False)


@jobs_app.command("results")
def results(job_id: JobId, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """Print the job's result file (CSV: one row per step)."""
    with api_errors():
        client = make_client(base_url, api_key)
        job = client.fine_tuning.jobs.retrieve(job_id)
        if not job.result_files:
            fail(f"Job {job_id} has no result file yet (status: {job.status}).")
        text = client.files.content(job.result_files[0]).text
    rows = list(csv.reader(io.StringIO(text)))
    csv.writer(sys.stdout, lineterminator="\n").writerows(rows)
