"""`tunehouse migrate`: carry fine-tuning jobs, their files and settings over from any server that speaks
OpenAI's fine-tuning API (OpenAI itself, another tunehouse) into this store, alias the source's `ft:`
ids to the new models, and compare their answers.

Works on the local store, like `models add`: files and jobs are created here, and this store's worker
(`tunehouse serve` or `tunehouse worker` on the same TUNEHOUSE_HOME) trains the jobs. Prints each step,
a progress bar while jobs train, and writes a report (Markdown and JSON). Exits 1 when a job could not
be migrated (each said in one line), 130 when interrupted; the same command resumes either.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from tunehouse.cli.client import console, err_console, fail
from tunehouse.errors import TunehouseError
from tunehouse.migrate import GOLDEN_SIZE

if TYPE_CHECKING:  # the migration's modules load torch: imported when the command runs
    from tunehouse.migrate.copy import Training
    from tunehouse.migrate.runner import Migration

OPENAI_BASE_URL = "https://api.openai.com/v1"


class ConsoleObserver:
    """Prints a migration's steps, and one progress bar per job while answers are asked or jobs train."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.problems = 0
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def _print(self, text: str) -> None:
        (self._progress.console if self._progress else self.out).print(text, highlight=False)

    def step(self, job_id: str, message: str) -> None:
        self._print(f"[bold]{escape(job_id)}[/bold]: {escape(message)}" if job_id else escape(message))

    def problem(self, job_id: str, message: str) -> None:
        self.problems += 1
        prefix = "" if job_id in message else f"{job_id}: "
        self._print(f"[red]Error:[/red] {escape(prefix + message)}")

    def _bar(self, key: str, description: str, completed: int, total: int | None) -> None:
        if not self.out.is_terminal:  # piped into a file: the steps' lines say it all
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.out,
            )
            self._progress.start()
        if key not in self._tasks:
            self._tasks[key] = self._progress.add_task(description, total=total)
        self._progress.update(self._tasks[key], description=description, completed=completed, total=total)

    def training(self, jobs: list[Training]) -> None:
        for job in jobs:
            state = job.status.replace("_", " ")
            self._bar(f"train {job.job_id}", f"{job.source_job_id}: {state} here", job.step, job.total_steps)

    def answering(self, job_id: str, what: str, done: int, total: int) -> None:
        whose = "the source model answers" if what == "source" else "the new model answers"
        self._bar(f"{what} {job_id}", f"{job_id}: {whose}", done, total)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def migrate(
    from_base_url: Annotated[
        str, typer.Option("--from-base-url", help="The source's OpenAI-compatible /v1 URL.")
    ] = OPENAI_BASE_URL,
    from_api_key: Annotated[
        str | None,
        typer.Option("--from-api-key", envvar="OPENAI_API_KEY", help="The source's API key.", show_default=False),
    ] = None,
    job: Annotated[
        list[str] | None,
        typer.Option("--job", help="A source job to migrate (repeat it); default: every job that succeeded."),
    ] = None,
    map_model: Annotated[
        list[str] | None,
        typer.Option(
            "--map-model",
            help="SOURCE-MODEL=MODEL-HERE for a base model not served here under the source's name (repeat it).",
        ),
    ] = None,
    files_dir: Annotated[
        Path | None,
        typer.Option(
            "--files-dir",
            help="A folder with the original training and validation files, for a source that does not hand "
            "them out (OpenAI); found by filename.",
        ),
    ] = None,
    golden: Annotated[
        int, typer.Option("--golden", min=1, help="Prompts per job whose answers are compared.")
    ] = GOLDEN_SIZE,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be done, and do none of it.")] = False,
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="Wait for the jobs to train here, then alias and compare them."),
    ] = True,
    report: Annotated[
        Path, typer.Option("--report", help="The report to write (Markdown; the JSON goes beside it).")
    ] = Path("migration-report.md"),
) -> None:
    """Carry fine-tuning jobs, files and settings over from OpenAI (or another tunehouse) into this store."""
    from tunehouse.config import settings
    from tunehouse.migrate.report import write_report
    from tunehouse.migrate.runner import Migration, Options

    if not from_api_key:
        fail("Pass the source's key with --from-api-key (or set OPENAI_API_KEY).")
    options = Options(
        base_url=from_base_url,
        api_key=from_api_key,
        job_ids=job or [],
        model_map=map_model or [],
        files_dir=files_dir,
        golden_size=golden,
    )
    try:
        migration = Migration(options)
    except TunehouseError as exc:
        fail(exc.message)
    for job_id, message in migration.problems:
        err_console.print(f"[red]Error:[/red] {escape(message if job_id in message else f'{job_id}: {message}')}")
    if migration.problems:
        fail("Nothing was migrated: fix the above (or leave those jobs out with --job) and run again.")
    if not migration.jobs:
        console.print(f"No fine-tuning job that succeeded on {escape(migration.source.url)}: nothing to migrate.")
        return
    if dry_run:
        _print_plan(migration)
        return
    count = f"{len(migration.jobs)} job{'s' if len(migration.jobs) > 1 else ''}"
    console.print(f"Migrating {count} from {escape(migration.source.url)} into the store at {settings().home}")
    quiet_model_loading()
    observer = ConsoleObserver(console)
    try:
        migration.run(observer, wait=wait)
    except KeyboardInterrupt:
        observer.close()
        err_console.print(
            "Interrupted. Every step done is recorded, and jobs created here keep training: run the same "
            "command again to resume."
        )
        raise typer.Exit(130) from None
    except TunehouseError as exc:
        observer.close()
        fail(exc.message)
    observer.close()
    markdown, as_json = write_report(migration.source.url, migration.rows(), report)
    console.print(f"Report: {markdown} (and {as_json})")
    training = [row.source_job_id for row in migration.rows() if row.stage == "job_created"]
    if not wait and training:
        console.print(
            f"{len(training)} {'jobs are' if len(training) > 1 else 'job is'} training here; run the same command "
            "again when they finish to alias and compare them."
        )
    if observer.problems:
        raise typer.Exit(1)


def quiet_model_loading() -> None:
    """The new models load in this process: keep transformers' loading bars and notices off the terminal."""
    import warnings

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def _print_plan(migration: Migration) -> None:
    console.print(f"Dry run: nothing is changed. From {escape(migration.source.url)}, a run would:")
    try:
        plans = migration.describe()
    except TunehouseError as exc:
        fail(exc.message)
    for job_id, lines in plans:
        console.print(f"[bold]{escape(job_id)}[/bold]")
        for line in lines:
            console.print(f"  - {escape(line)}")
