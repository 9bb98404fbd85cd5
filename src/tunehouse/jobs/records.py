"""Reading and writing job rows, events and checkpoints. Every process (API, worker, trainer child)
goes through these, so the store is the one place a job's state lives (PITFALLS 8)."""

from __future__ import annotations

import time
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from tunehouse.errors import NotFound
from tunehouse.ids import new_id
from tunehouse.jobs.email import job_emails
from tunehouse.store.db import session
from tunehouse.store.outbox import JOB_EVENTS, queue_event
from tunehouse.store.pages import Page, page_newest_first
from tunehouse.store.projects import visible
from tunehouse.store.schema import CheckpointRow, EventRow, JobRow

TERMINAL_STATES = {"succeeded", "failed", "cancelled"}
ACTIVE_STATES = {"running", "pausing"}
"""States in which a trainer runs for the job (`pausing`: until its next step boundary)."""


def get_job(job_id: str) -> JobRow:
    with session() as s:
        row = s.scalar(select(JobRow).where(JobRow.id == job_id, visible(JobRow.project_id)))
    if row is None:
        raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return row


def list_jobs(after: str | None, limit: int, metadata: dict[str, str] | None) -> Page[JobRow]:
    query = select(JobRow).where(visible(JobRow.project_id))
    page = page_newest_first(query, JobRow, after, limit if metadata is None else 10_000_000)
    if metadata is None:
        return page
    matching = [j for j in page.items if all((j.job_metadata or {}).get(k) == v for k, v in metadata.items())]
    return Page(items=matching[:limit], has_more=len(matching) > limit)


def update_job(job_id: str, *, only_if_status: set[str] | None = None, **values: Any) -> bool:
    """Set fields on a job; with `only_if_status`, only while it is in one of those states.

    The conditional form is how processes race safely: a cancel and a finishing trainer cannot both
    win, whichever commits first decides, and the other sees `False`. Moving a job to an end state
    also queues its webhook events and emails in the same transaction (`store/outbox.py`), so an
    end never goes untold and a change that rolls back tells nothing.
    """
    statement = update(JobRow).where(JobRow.id == job_id)
    if only_if_status is not None:
        statement = statement.where(JobRow.status.in_(only_if_status))
    with session() as s:
        changed = cast(CursorResult[Any], s.execute(statement.values(**values))).rowcount > 0
        if changed and values.get("status") in JOB_EVENTS:
            job = s.scalars(select(JobRow).where(JobRow.id == job_id)).one()
            queue_event(s, JOB_EVENTS[job.status], job_id, job_emails(s, job), project_id=job.project_id)
    return changed


def add_event(
    job_id: str, message: str, *, level: str = "info", type: str = "message", data: dict[str, Any] | None = None
) -> EventRow:
    row = EventRow(
        id=new_id("ftevent-"),
        job_id=job_id,
        created_at=int(time.time()),
        level=level,
        message=message,
        type=type,
        data=data,
    )
    with session() as s:
        s.add(row)
    return row


def list_events(job_id: str, after: str | None, limit: int) -> Page[EventRow]:
    get_job(job_id)
    return page_newest_first(select(EventRow).where(EventRow.job_id == job_id), EventRow, after, limit)


def all_events(job_id: str) -> list[EventRow]:
    """Every event of a job, oldest first."""
    return events_after(job_id, 0)


def events_after(job_id: str, seq: int) -> list[EventRow]:
    """A job's events written after the one numbered `seq`, oldest first: what a follower has not seen."""
    with session() as s:
        query = select(EventRow).where(EventRow.job_id == job_id, EventRow.seq > seq).order_by(EventRow.seq)
        return list(s.scalars(query).all())


def add_checkpoint(job_id: str, step: int, model_name: str, path: str, metrics: dict[str, Any]) -> CheckpointRow:
    row = CheckpointRow(
        id=new_id("ftckpt_"),
        job_id=job_id,
        created_at=int(time.time()),
        step_number=step,
        metrics=metrics,
        fine_tuned_model_checkpoint=model_name,
        path=path,
    )
    with session() as s:
        s.add(row)
    return row


def list_checkpoints(job_id: str, after: str | None, limit: int) -> Page[CheckpointRow]:
    get_job(job_id)
    query = select(CheckpointRow).where(CheckpointRow.job_id == job_id)
    return page_newest_first(query, CheckpointRow, after, limit)
