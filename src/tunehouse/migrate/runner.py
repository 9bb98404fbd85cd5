"""A migration from start to finish: plan every source job, then take each as far as it can go.

Per job the steps are those of `state.STAGES`: copy its files, record the source model's answers
(the golden set), re-create the job here, wait while this store's worker trains it, alias the
source's `ft:` ids to the new model, and compare the answers. Each step is recorded as it is done,
so a second run skips what is done and resumes what is not; an interrupted one (Ctrl-C) loses at
most the step it was in. A job that fine-tunes another migrated job's model waits for that one to
be trained here first. A failure stops only its own job, said in one line that names it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from tunehouse.errors import TunehouseError
from tunehouse.eval.graders import engine_caller
from tunehouse.eval.sampler import EngineSampler
from tunehouse.migrate import GOLDEN_SIZE, state
from tunehouse.migrate.compare import compare_answers
from tunehouse.migrate.copy import (
    Training,
    alias_models,
    copied,
    copy_files,
    create_copy_job,
    follow,
    record_outcome,
)
from tunehouse.migrate.golden import record_golden
from tunehouse.migrate.plan import BaseModel, SourceJob, map_base_model, parse_model_map
from tunehouse.migrate.source import Source
from tunehouse.serve.engine import Engine
from tunehouse.store.schema import MigrationRow

POLL_SECONDS = 1.0
NO_WORKER_HINT_SECONDS = 60.0


@dataclass(frozen=True)
class Options:
    base_url: str
    api_key: str
    job_ids: list[str] = field(default_factory=list)
    """Source jobs to migrate; none: every job that succeeded there."""
    model_map: list[str] = field(default_factory=list)
    """`SOURCE-MODEL=MODEL-HERE` pairs for base models not served here under the source's names."""
    files_dir: Path | None = None
    """Where the originals of files the source will not hand out are, by filename."""
    golden_size: int = GOLDEN_SIZE
    """Prompts in each job's golden set."""


class Observer(Protocol):
    """What a migration tells as it goes (the CLI prints it)."""

    def step(self, job_id: str, message: str) -> None: ...

    def problem(self, job_id: str, message: str) -> None: ...

    def training(self, jobs: list[Training]) -> None:
        """Called every poll while jobs train here, with where each stands."""

    def answering(self, job_id: str, what: str, done: int, total: int) -> None:
        """Called after each golden prompt answered, by the source model or the new one."""


@dataclass
class Planned:
    job: SourceJob
    wire: dict[str, Any]  # the job as the source reported it
    row: MigrationRow | None
    failed: bool = False  # a step failed in this run: the job goes no further until the next


class Migration:
    """One run of `tunehouse migrate` against one source."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.source = Source(options.base_url, options.api_key, options.files_dir)
        self.model_map = parse_model_map(options.model_map)
        self.jobs: list[Planned] = []
        self.problems: list[tuple[str, str]] = []
        for wire in self.source.jobs(options.job_ids):
            try:
                job = SourceJob.from_wire(wire)
            except TunehouseError as exc:
                self.problems.append((wire["id"], exc.message))
                continue
            self.jobs.append(Planned(job, wire, state.find(self.source.url, job.id)))
        self._parents = {p.job.fine_tuned_model: p.job.id for p in self.jobs}
        for planned in self.jobs:
            if not state.reached(planned.row, "job_created"):
                try:
                    self.base_model(planned)
                except TunehouseError as exc:
                    self.problems.append((planned.job.id, exc.message))

    def base_model(self, planned: Planned) -> BaseModel:
        return map_base_model(planned.job, self.model_map, self._parents)

    # --- the dry run -----------------------------------------------------------------------------
    def describe(self) -> list[tuple[str, list[str]]]:
        """What a run would do, per job, without doing any of it."""
        return [(p.job.id, self._would(p)) for p in self.jobs]

    def _would(self, planned: Planned) -> list[str]:
        job, row = planned.job, planned.row
        if state.reached(row, "compared"):
            return [f"already migrated: {job.fine_tuned_model} → {row.fine_tuned_model if row else ''}"]
        lines = []
        if not state.reached(row, "files_copied"):
            for role, file_id in (("training file", job.training_file), ("validation file", job.validation_file)):
                if file_id is None or (row is not None and file_id in row.files):
                    continue
                earlier = state.copied_file(self.source.url, file_id)
                if earlier is not None:
                    lines.append(f"reuse the copy {earlier['id']} of the {role} {file_id}")
                else:
                    info = self.source.file_info(file_id, job.id, role)
                    size = f"{info.bytes:,} bytes" if info.bytes is not None else "size unknown"
                    lines.append(f"copy the {role} {file_id} ({info.filename}, {size})")
        if not state.reached(row, "golden_recorded"):
            origin = "its validation file" if job.validation_file else "its training file's last examples"
            lines.append(
                f"ask {job.fine_tuned_model} for its answers to up to {self.options.golden_size} prompts of {origin}"
            )
        if not state.reached(row, "job_created"):
            base = self.base_model(planned)
            lines.append(f"create a job on '{base.name or job.model}' ({base.how}): {job.settings_text()}")
        elif not state.reached(row, "trained"):
            lines.append(f"wait for the job {row.job_id if row else ''} to train here")
        if not state.reached(row, "aliased"):
            lines.append(f"alias {job.fine_tuned_model} (and its checkpoints) to the new model")
        lines.append("compare the new model's answers with the source's")
        if job.has_integrations:
            lines.append("not carry its integrations (their credentials stay with the source)")
        return lines

    # --- the run ---------------------------------------------------------------------------------
    def run(self, observer: Observer, *, wait: bool = True) -> None:
        """Take every job as far as it goes: with `wait`, until each is migrated (or failed)."""
        engine: Engine | None = None
        try:
            while True:
                for planned in self.jobs:
                    self._guarded(planned, observer, lambda p: self._prepare(p, observer))
                if not wait:
                    return
                self._await_training(observer)
                for planned in self.jobs:
                    if state.reached(planned.row, "trained") and not state.reached(planned.row, "compared"):
                        engine = engine or Engine()  # loaded once, only when there is something to answer
                        self._guarded(planned, observer, partial(self._finish, observer=observer, engine=engine))
                if not any(self._ready_child(p) for p in self.jobs):
                    return
        finally:
            if engine is not None:
                engine.close()

    def rows(self) -> list[MigrationRow]:
        """The records of this run's jobs, as they stand now."""
        return state.migrations(self.source.url, [p.job.id for p in self.jobs])

    def _guarded(self, planned: Planned, observer: Observer, step: Callable[[Planned], None]) -> None:
        if planned.failed:
            return
        try:
            step(planned)
        except TunehouseError as exc:
            planned.failed = True
            if planned.row is not None:
                planned.row = state.record(planned.row, error=exc.message)
            observer.problem(planned.job.id, exc.message)

    def _prepare(self, planned: Planned, observer: Observer) -> None:
        """Files, golden set and the job here, for a job whose base model is known here."""
        job = planned.job
        if planned.row is not None and state.reached(planned.row, "compared"):
            observer.step(job.id, f"already migrated: {job.fine_tuned_model} → {planned.row.fine_tuned_model}")
            return
        if state.reached(planned.row, "job_created"):
            return
        base = self.base_model(planned)
        if base.name is None:
            observer.step(job.id, f"waits for {base.parent_job} to be migrated: it fine-tunes that job's model")
            return
        say: Callable[[str], None] = lambda message: observer.step(job.id, message)  # noqa: E731
        row = planned.row = state.start(self.source.url, planned.wire)
        if not state.reached(row, "files_copied"):
            row = planned.row = copy_files(self.source, row, job, say)
        if not state.reached(row, "golden_recorded"):
            golden = record_golden(
                self.source,
                job_id=job.id,
                model=job.fine_tuned_model,
                training_file=copied(row, job.training_file) or "",
                validation_file=copied(row, job.validation_file),
                size=self.options.golden_size,
                progress=lambda done, total: observer.answering(job.id, "source", done, total),
            )
            row = planned.row = state.advance(row, "golden_recorded", golden=golden)
            say(f"golden set: {len(golden['items'])} answers of {job.fine_tuned_model}, {golden['origin']}")
            if golden["skipped"]:
                observer.problem(job.id, f"no golden set: {golden['skipped']}")
        if job.has_integrations:
            say("its integrations are not carried over (their credentials stay with the source)")
        planned.row = create_copy_job(row, job, base.name, say)

    def _await_training(self, observer: Observer) -> None:
        """Follow the jobs created here until each has finished; record how each ended."""
        following = {
            p.job.id: Training(p.job.id, p.row.job_id or "", "queued")
            for p in self.jobs
            if not p.failed and p.row is not None and p.row.stage == "job_created"
        }
        started, hinted = time.monotonic(), False
        while following:
            now = {job_id: follow(training) for job_id, training in following.items()}
            observer.training(list(now.values()))
            following = {}
            for job_id, training in now.items():
                if not training.finished:
                    following[job_id] = training
                    continue
                planned = next(p for p in self.jobs if p.job.id == job_id)
                assert planned.row is not None
                planned.row = record_outcome(planned.row)
                if planned.row.stage == "trained":
                    observer.step(job_id, f"trained here: {planned.row.fine_tuned_model}")
                else:
                    planned.failed = True
                    observer.problem(job_id, planned.row.error or "the job here did not succeed")
            waiting = all(t.status in {"validating_files", "queued"} for t in following.values())
            if following and waiting and not hinted and time.monotonic() - started > NO_WORKER_HINT_SECONDS:
                hinted = True
                observer.step(
                    "",
                    "the jobs are still queued: is `tunehouse serve` or `tunehouse worker` running on this store "
                    "(the same TUNEHOUSE_HOME)? Ctrl-C stops waiting; the same command resumes.",
                )
            if following:
                time.sleep(POLL_SECONDS)

    def _finish(self, planned: Planned, *, observer: Observer, engine: Engine) -> None:
        """Alias the source's ids to the model trained here, then compare the answers."""
        job = planned.job
        say: Callable[[str], None] = lambda message: observer.step(job.id, message)  # noqa: E731
        row = planned.row
        assert row is not None
        if not state.reached(row, "aliased"):
            row = planned.row = alias_models(self.source, row, job, say)
        golden = row.golden or {"items": [], "max_tokens": 1}
        comparison = compare_answers(
            golden,
            job.fine_tuned_model,
            EngineSampler(engine),
            engine_caller(engine),
            progress=lambda done, total: observer.answering(job.id, "here", done, total),
        )
        planned.row = state.advance(row, "compared", comparison=comparison)
        if comparison["n"]:
            say(
                f"compared on {comparison['n']} prompts: {comparison['exact_match_rate']:.0%} the same answer, "
                f"{comparison['mean_similarity']:.0%} similar"
            )

    def _ready_child(self, planned: Planned) -> bool:
        """A job that waited for its parent, whose parent is now trained here (so another round helps)."""
        if planned.failed or state.reached(planned.row, "job_created"):
            return False
        try:
            return self.base_model(planned).name is not None and planned.job.model in self._parents
        except TunehouseError:
            return False
