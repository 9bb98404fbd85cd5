"""A migration's record per source job (keyed by the source's URL and its job id): the last step done
and what each step made here, written as soon as the step is done, so an interrupted run resumes
where it stopped and a second run skips what is done."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from tunehouse.errors import NotFound
from tunehouse.store.db import session
from tunehouse.store.files import get_file
from tunehouse.store.schema import MigrationRow

STAGES = ("planned", "files_copied", "golden_recorded", "job_created", "trained", "aliased", "compared")
"""The steps of one job's migration, in order; a record's `stage` is the last one done."""


def reached(row: MigrationRow | None, stage: str) -> bool:
    """Whether the migration has done `stage` (and every step before it)."""
    return row is not None and STAGES.index(row.stage) >= STAGES.index(stage)


def find(source_url: str, source_job_id: str) -> MigrationRow | None:
    with session() as s:
        return s.scalar(
            select(MigrationRow).where(
                MigrationRow.source_url == source_url, MigrationRow.source_job_id == source_job_id
            )
        )


def start(source_url: str, source_job: dict[str, Any]) -> MigrationRow:
    """The record of `source_job`'s migration, made now if it has none; its source job is refreshed."""
    now = int(time.time())
    with session() as s:
        row = s.scalar(
            select(MigrationRow).where(
                MigrationRow.source_url == source_url, MigrationRow.source_job_id == source_job["id"]
            )
        )
        if row is None:
            row = MigrationRow(
                source_url=source_url,
                source_job_id=source_job["id"],
                created_at=now,
                updated_at=now,
                stage="planned",
                source_job=source_job,
                files={},
                aliases=[],
            )
            s.add(row)
        else:
            row.source_job = source_job
            row.updated_at = now
    return row


def advance(row: MigrationRow, stage: str, **values: Any) -> MigrationRow:
    """Record that step `stage` is done (or, going back, that it must be done again), with what it
    made here; a failure recorded earlier is cleared unless `values` carries a new `error`."""
    return record(row, **({"stage": stage, "error": None} | values))


def record(row: MigrationRow, **values: Any) -> MigrationRow:
    """Record `values` on the migration (a file copied, why it stopped short), its stage unchanged."""
    with session() as s:
        stored = s.get(MigrationRow, row.seq)
        if stored is None:
            raise NotFound(f"The migration record of {row.source_job_id} is gone from the store.")
        for name, value in values.items():
            setattr(stored, name, value)
        stored.updated_at = int(time.time())
    return stored


def copied_file(source_url: str, source_file_id: str) -> dict[str, Any] | None:
    """This source file's copy here (`id`, `filename`, `bytes`), made by any migration from the same
    source, while it exists."""
    with session() as s:
        rows = s.scalars(select(MigrationRow).where(MigrationRow.source_url == source_url)).all()
    for row in rows:
        copy = (row.files or {}).get(source_file_id)
        if copy is None:
            continue
        try:
            get_file(copy["id"])
        except NotFound:
            continue
        return dict(copy)
    return None


def migrations(source_url: str, source_job_ids: list[str]) -> list[MigrationRow]:
    """The records of these source jobs' migrations, in the order given (jobs without one left out)."""
    with session() as s:
        rows = s.scalars(
            select(MigrationRow).where(
                MigrationRow.source_url == source_url, MigrationRow.source_job_id.in_(source_job_ids)
            )
        ).all()
    order = {job_id: index for index, job_id in enumerate(source_job_ids)}
    return sorted(rows, key=lambda row: order[row.source_job_id])
