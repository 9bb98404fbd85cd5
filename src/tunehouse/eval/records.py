"""Reading and writing evals, eval runs and their output items. The API, the worker and the CLI's
server all go through these, so a run's progress lives in the store alone and survives a restart."""

from __future__ import annotations

import time
from typing import Any, cast

from sqlalchemy import CursorResult, Select, and_, delete, or_, select, update

from tunehouse.errors import NotFound
from tunehouse.store.db import session
from tunehouse.store.outbox import queue_eval_run_ended
from tunehouse.store.pages import Page, page_newest_first
from tunehouse.store.projects import owner, visible
from tunehouse.store.schema import EvalOutputItemRow, EvalRow, EvalRunRow

RUN_TERMINAL = {"completed", "failed", "canceled"}
RUN_ACTIVE = {"queued", "in_progress"}


def add_eval(row: EvalRow) -> EvalRow:
    row.project_id = owner()
    with session() as s:
        s.add(row)
    return row


def get_eval(eval_id: str) -> EvalRow:
    with session() as s:
        row = s.scalar(select(EvalRow).where(EvalRow.id == eval_id, visible(EvalRow.project_id)))
    if row is None:
        raise NotFound(f"No such eval: {eval_id}", param="eval_id")
    return row


def list_evals(after: str | None, limit: int, order: str, order_by: str) -> Page[EvalRow]:
    """Evals by creation (`seq`) or by last update, `after` continuing past that eval."""
    ascending = order == "asc"
    if order_by == "created_at":
        return page_newest_first(
            select(EvalRow).where(visible(EvalRow.project_id)), EvalRow, after, limit, ascending=ascending
        )
    query: Select[Any] = select(EvalRow).where(visible(EvalRow.project_id))
    with session() as s:
        if after:
            lookup = select(EvalRow.updated_at, EvalRow.seq).where(EvalRow.id == after, visible(EvalRow.project_id))
            cursor = s.execute(lookup).first()
            if cursor is None:
                raise NotFound(f"No such object for cursor 'after': {after}", param="after")
            stamp, seq = cursor
            if ascending:
                query = query.where(
                    or_(EvalRow.updated_at > stamp, and_(EvalRow.updated_at == stamp, EvalRow.seq > seq))
                )
            else:
                query = query.where(
                    or_(EvalRow.updated_at < stamp, and_(EvalRow.updated_at == stamp, EvalRow.seq < seq))
                )
        keys = (
            (EvalRow.updated_at.asc(), EvalRow.seq.asc())
            if ascending
            else (EvalRow.updated_at.desc(), EvalRow.seq.desc())
        )
        rows = list(s.scalars(query.order_by(*keys).limit(limit + 1)).all())
    return Page(items=rows[:limit], has_more=len(rows) > limit)


def update_eval(eval_id: str, **values: Any) -> EvalRow:
    get_eval(eval_id)
    with session() as s:
        s.execute(update(EvalRow).where(EvalRow.id == eval_id).values(updated_at=time.time(), **values))
    return get_eval(eval_id)


def delete_eval(eval_id: str) -> None:
    """The eval, its runs and their output items; a run in progress stops at its next item."""
    get_eval(eval_id)
    with session() as s:
        run_ids = select(EvalRunRow.id).where(EvalRunRow.eval_id == eval_id)
        s.execute(delete(EvalOutputItemRow).where(EvalOutputItemRow.run_id.in_(run_ids)))
        s.execute(delete(EvalRunRow).where(EvalRunRow.eval_id == eval_id))
        s.execute(delete(EvalRow).where(EvalRow.id == eval_id))


def add_run(row: EvalRunRow) -> EvalRunRow:
    with session() as s:
        s.add(row)
    return row


def get_run(eval_id: str, run_id: str) -> EvalRunRow:
    get_eval(eval_id)  # another project's eval, and so its runs, are not found
    with session() as s:
        row = s.scalar(select(EvalRunRow).where(EvalRunRow.id == run_id, EvalRunRow.eval_id == eval_id))
    if row is None:
        raise NotFound(f"No such eval run: {run_id}", param="run_id")
    return row


def find_run(run_id: str) -> EvalRunRow | None:
    with session() as s:
        return s.scalar(select(EvalRunRow).where(EvalRunRow.id == run_id))


def list_runs(eval_id: str, after: str | None, limit: int, order: str, status: str | None) -> Page[EvalRunRow]:
    get_eval(eval_id)
    query = select(EvalRunRow).where(EvalRunRow.eval_id == eval_id)
    if status:
        query = query.where(EvalRunRow.status == status)
    return page_newest_first(query, EvalRunRow, after, limit, ascending=order == "asc")


def runs_of(eval_id: str) -> list[EvalRunRow]:
    """Every run of an eval, oldest first."""
    with session() as s:
        return list(s.scalars(select(EvalRunRow).where(EvalRunRow.eval_id == eval_id).order_by(EvalRunRow.seq)))


def update_run(run_id: str, *, only_if_status: set[str] | None = None, **values: Any) -> bool:
    """Set fields on a run; with `only_if_status`, only while it is in one of those states (see
    `jobs.records.update_job`: how a cancel and the worker race safely). Ending a run queues its
    `eval.run.*` webhook events in the same transaction."""
    statement = update(EvalRunRow).where(EvalRunRow.id == run_id)
    if only_if_status is not None:
        statement = statement.where(EvalRunRow.status.in_(only_if_status))
    with session() as s:
        changed = cast(CursorResult[Any], s.execute(statement.values(**values))).rowcount > 0
        if changed and values.get("status") in RUN_TERMINAL:
            queue_eval_run_ended(s, run_id, values["status"])
    return changed


def delete_run(eval_id: str, run_id: str) -> None:
    get_run(eval_id, run_id)
    with session() as s:
        s.execute(delete(EvalOutputItemRow).where(EvalOutputItemRow.run_id == run_id))
        s.execute(delete(EvalRunRow).where(EvalRunRow.id == run_id))


def oldest_run(status: str) -> EvalRunRow | None:
    with session() as s:
        return s.scalar(select(EvalRunRow).where(EvalRunRow.status == status).order_by(EvalRunRow.seq).limit(1))


def runs_in(status: str) -> list[EvalRunRow]:
    with session() as s:
        return list(s.scalars(select(EvalRunRow).where(EvalRunRow.status == status).order_by(EvalRunRow.seq)))


def done_item_ids(run_id: str) -> set[int]:
    """The data source items of a run that already have an output item: a resumed run skips them."""
    with session() as s:
        query = select(EvalOutputItemRow.datasource_item_id).where(EvalOutputItemRow.run_id == run_id)
        return set(s.scalars(query).all())


def record_output_item(item: EvalOutputItemRow, run_values: dict[str, Any]) -> bool:
    """Write one output item and the run's new counters in one transaction, while the run is still in
    progress; False (nothing written) if it was cancelled or deleted meanwhile."""
    with session() as s:
        statement = (
            update(EvalRunRow)
            .where(EvalRunRow.id == item.run_id, EvalRunRow.status == "in_progress")
            .values(heartbeat_at=time.time(), **run_values)
        )
        if cast(CursorResult[Any], s.execute(statement)).rowcount == 0:
            return False
        s.add(item)
    return True


def get_output_item(eval_id: str, run_id: str, item_id: str) -> EvalOutputItemRow:
    get_run(eval_id, run_id)
    with session() as s:
        row = s.scalar(
            select(EvalOutputItemRow).where(EvalOutputItemRow.id == item_id, EvalOutputItemRow.run_id == run_id)
        )
    if row is None:
        raise NotFound(f"No such output item: {item_id}", param="output_item_id")
    return row


def list_output_items(
    eval_id: str, run_id: str, after: str | None, limit: int, order: str, status: str | None
) -> Page[EvalOutputItemRow]:
    get_run(eval_id, run_id)
    query = select(EvalOutputItemRow).where(EvalOutputItemRow.run_id == run_id)
    if status:
        query = query.where(EvalOutputItemRow.status == status)
    return page_newest_first(query, EvalOutputItemRow, after, limit, ascending=order == "asc")


def all_output_items(run_id: str) -> list[EvalOutputItemRow]:
    """Every output item of a run, in data source order."""
    with session() as s:
        query = select(EvalOutputItemRow).where(EvalOutputItemRow.run_id == run_id)
        return list(s.scalars(query.order_by(EvalOutputItemRow.datasource_item_id)).all())
