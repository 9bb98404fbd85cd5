"""The steps that make things here: copy a job's files, re-create the job, follow its training, and
alias the source's model ids to the models it made.

Each step records what it made on the migration as soon as it is made, and looks for it before
making it again: a file another job from the same source already brought over is reused, and a job
created just before an interruption (found by its `migrated_from` metadata) is adopted, not doubled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunehouse.jobs.records import TERMINAL_STATES, events_after, get_job, list_checkpoints, list_jobs
from tunehouse.jobs.service import create_job
from tunehouse.migrate import state
from tunehouse.migrate.plan import MIGRATED_FROM, SourceJob, job_request
from tunehouse.migrate.source import Source
from tunehouse.models.catalog import alias_model
from tunehouse.store.files import create_file
from tunehouse.store.schema import MigrationRow

Say = Callable[[str], None]


def copy_files(source: Source, row: MigrationRow, job: SourceJob, say: Say) -> MigrationRow:
    """Bring the job's training and validation files here (purpose `fine-tune`, same name and bytes)."""
    for role, file_id in (("training file", job.training_file), ("validation file", job.validation_file)):
        if file_id is None or file_id in row.files:
            continue
        copy = state.copied_file(source.url, file_id)
        if copy is not None:
            say(f"{role} {file_id}: reusing its copy {copy['id']}")
        else:
            info = source.file_info(file_id, job.id, role)
            content = source.file_bytes(info, job.id, role)
            made = create_file(info.filename, "fine-tune", [content])
            copy = {"id": made.id, "filename": made.filename, "bytes": made.bytes}
            say(f"{role} {file_id} ({info.filename}, {made.bytes:,} bytes) → {made.id}")
        row = state.record(row, files={**row.files, file_id: copy})
    return state.advance(row, "files_copied")


def copied(row: MigrationRow, source_file_id: str | None) -> str | None:
    """The id here of a source file the migration copied."""
    return None if source_file_id is None else str(row.files[source_file_id]["id"])


def create_copy_job(row: MigrationRow, job: SourceJob, model: str, say: Say) -> MigrationRow:
    """Re-create `job` here on `model`, with its copied files and its settings."""
    request = job_request(job, model, copied(row, job.training_file) or "", copied(row, job.validation_file))
    adopted = [
        j
        for j in list_jobs(None, 100, {MIGRATED_FROM: job.id}).items
        if j.training_file == request.training_file and j.status not in {"failed", "cancelled"}
    ]
    if adopted:
        say(f"found the job {adopted[0].id} an interrupted run created")
        return state.advance(row, "job_created", job_id=adopted[0].id)
    created = create_job(request)
    say(f"created {created.id} on {model}: {job.settings_text()}")
    return state.advance(row, "job_created", job_id=created.id)


@dataclass(frozen=True)
class Training:
    """Where a job re-created here stands, for the progress bar."""

    source_job_id: str
    job_id: str
    status: str
    step: int = 0
    total_steps: int | None = None
    last_event: int = 0  # the newest event read, so the next look reads only newer ones

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATES


def follow(training: Training) -> Training:
    """The job's state now: its status and the last step its metrics reported."""
    job = get_job(training.job_id)
    step, total, last = training.step, training.total_steps, training.last_event
    for event in events_after(training.job_id, training.last_event):
        last = event.seq
        if event.type == "metrics" and event.data:
            step, total = int(event.data.get("step", step)), event.data.get("total_steps", total)
    return Training(training.source_job_id, training.job_id, job.status, step, total, last)


def record_outcome(row: MigrationRow) -> MigrationRow:
    """After the job here finished: `trained` with its model, or back to before the job with its error,
    so the next run creates it again."""
    job = get_job(row.job_id or "")
    if job.status == "succeeded" and job.fine_tuned_model:
        return state.advance(row, "trained", fine_tuned_model=job.fine_tuned_model)
    reason = (job.error or {}).get("message") or job.status
    return state.advance(
        row,
        "golden_recorded",
        error=f"the job here, {job.id}, {job.status}: {reason}. The next run creates it again.",
    )


def alias_models(source: Source, row: MigrationRow, job: SourceJob, say: Say) -> MigrationRow:
    """Make the source's `ft:` model id (and each checkpoint's, where the step matches one here) stand
    for the model trained here, so code calling the old ids runs unchanged."""
    new_model = row.fine_tuned_model or ""
    alias_model(job.fine_tuned_model, new_model, source="migration")
    names = [job.fine_tuned_model]
    say(f"{job.fine_tuned_model} → {new_model}")
    here = {c.step_number: c.fine_tuned_model_checkpoint for c in list_checkpoints(row.job_id or "", None, 100).items}
    for step, name in sorted(source.checkpoints(job.id).items()):
        if step in here and name not in names:
            alias_model(name, here[step], source="migration")
            names.append(name)
    if len(names) > 1:
        say(f"and its {len(names) - 1} checkpoints, by step")
    return state.advance(row, "aliased", aliases=names)
